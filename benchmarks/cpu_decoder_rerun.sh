#!/usr/bin/env bash
# The decoder rows of docs/benchmarks.md after the heads-major attention change (and its
# profile). Idle machine, repository root: bash THIS OUT_DIR
set -uo pipefail
out=${1:-bench-out}; mkdir -p "$out"
DEC=(--config shapes:decoder --config.model.image_size=32 --config.data.image_size=32
     --config.model.model_channels=64 "--config.model.channel_mult=(1,2,3)"
     --config.model.num_res_blocks=2 "--config.model.attention_resolutions=(16,8)"
     --config.model.num_head_channels=32 --config.model.norm_groups=32 --config.model.text_width=64)
python benchmarks/profile_unet.py --stage decoder --batch 8 | tee "$out/profile_decoder.md"
unclip-jax bench "${DEC[@]}" --devices 1 --modes dp --iters 5 --sample-steps 10 --batch-size 8 --out "$out/decoder.json" | tee "$out/decoder.md"
unclip-jax bench --config shapes:prior --config.model.text_width=64 --devices 1 --modes dp --iters 5 --sample-steps 10 --batch-size 8 --out "$out/prior.json" | tee "$out/prior.md"
python benchmarks/bench_cli.py --counts 4 | tee "$out/cli.md"

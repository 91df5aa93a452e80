#!/usr/bin/env bash
# The CPU tables of docs/benchmarks.md ("CPU speed"): JAX vs PyTorch (diffusers) at equal
# configurations, the per-op-class profile, and the CLI's cold/warm wall times.
# Run on an idle machine from the repository root: bash benchmarks/cpu_vs_torch.sh OUT_DIR
set -euo pipefail
out=${1:-bench-out}
mkdir -p "$out"
DEC=(--config shapes:decoder --config.model.image_size=32 --config.data.image_size=32
     --config.model.model_channels=64 "--config.model.channel_mult=(1,2,3)"
     --config.model.num_res_blocks=2 "--config.model.attention_resolutions=(16,8)"
     --config.model.num_head_channels=32 --config.model.norm_groups=32 --config.model.text_width=64)
UP1=(--config shapes:upsampler1 --config.model.model_channels=64 --config.model.norm_groups=32)
PRIOR=(--config shapes:prior --config.model.text_width=64)
UP2=(--config shapes:upsampler2)
common=(--devices 1 --modes dp --iters 5 --sample-steps 10)
python benchmarks/profile_unet.py --stage decoder --batch 8 | tee "$out/profile_decoder.md"
UNCLIP_JAX_XLA_DEFAULTS=0 python benchmarks/profile_unet.py --stage decoder --batch 8 | tee "$out/profile_decoder_xla_defaults.md"
python benchmarks/profile_unet.py --stage upsampler1 --batch 8 | tee "$out/profile_upsampler1.md"
unclip-jax bench "${DEC[@]}" "${common[@]}" --batch-size 8 --out "$out/decoder.json" | tee "$out/decoder.md"
unclip-jax bench "${UP1[@]}" "${common[@]}" --batch-size 8 --out "$out/upsampler1.json" | tee "$out/upsampler1.md"
unclip-jax bench "${PRIOR[@]}" "${common[@]}" --batch-size 8 --out "$out/prior.json" | tee "$out/prior.md"
unclip-jax bench "${UP2[@]}" "${common[@]}" --batch-size 2 --out "$out/upsampler2.json" | tee "$out/upsampler2.md"
UNCLIP_JAX_XLA_DEFAULTS=0 unclip-jax bench "${DEC[@]}" "${common[@]}" --batch-size 8 --out "$out/decoder_xla_defaults.json" | tee "$out/decoder_xla_defaults.md"
python benchmarks/bench_cli.py --counts 1 4 16 | tee "$out/cli.md"

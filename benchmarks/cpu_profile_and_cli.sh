#!/usr/bin/env bash
# Per-op-class profiles of the UNet steps and the CLI's cold/warm wall times
# (docs/benchmarks.md, "CPU speed"). Idle machine, repository root: bash THIS OUT_DIR
set -uo pipefail
out=${1:-bench-out}
mkdir -p "$out"
python benchmarks/profile_unet.py --stage decoder --batch 8 | tee "$out/profile_decoder.md"
UNCLIP_JAX_XLA_DEFAULTS=0 python benchmarks/profile_unet.py --stage decoder --batch 8 | tee "$out/profile_decoder_xla_defaults.md"
python benchmarks/profile_unet.py --stage upsampler1 --batch 8 | tee "$out/profile_upsampler1.md"
python benchmarks/bench_cli.py --counts 1 4 16 | tee "$out/cli.md"

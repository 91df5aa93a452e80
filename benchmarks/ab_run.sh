#!/usr/bin/env bash
set -uo pipefail
out=${1:-bench-out}; mkdir -p "$out"
python benchmarks/ab_xla_flags.py --rounds 2 --iters 4 | tee "$out/ab_flags.md"

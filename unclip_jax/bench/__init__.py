"""`unclip-jax bench`: training-step and sampling benchmarks of the prior and the decoder in
three parallel modes (pmap / jit data-parallel / jit FSDP), and beside diffusers' PyTorch
unCLIP components on the same CPU.

    unclip-jax bench [--config shapes:decoder] [--config.model.width=512 ...]
                     [--devices 8] [--batch-size 16] [--iters 5] [--out results.json]

Without --config both shapes:prior and shapes:decoder run. On CPU, `--devices N`
simulates N devices (XLA_FLAGS=--xla_force_host_platform_device_count=N, set here before
JAX starts its backend); the simulated devices share the machine's cores, so on CPU the modes
differ in overheads and partitioning, not in speed-up. On GPUs/TPUs all local devices are used.

Modules: workload (what runs), modes (how it is placed), measure (timing, FLOPs, matmul
peak), torch_ref (the diffusers twin), benchmark (one stage end to end), report (table).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from unclip_jax.errors import UserError

DEFAULT_CONFIGS = ("shapes:prior", "shapes:decoder")


def set_device_count(n: int, dump_dir: str | None = None) -> None:
    """Ask XLA for `n` host (CPU) devices, and optionally an HLO dump, before JAX starts its
    backend. Raises UserError if the backend already started with another device count."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith(("--xla_force_host_platform_device_count", "--xla_dump_to"))]
    flags.append(f"--xla_force_host_platform_device_count={n}")
    if dump_dir:
        flags.append(f"--xla_dump_to={dump_dir}")
    os.environ["XLA_FLAGS"] = " ".join(flags)
    import jax
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized() and jax.default_backend() == "cpu" \
            and jax.device_count() != n:
        raise UserError(f"JAX already started with {jax.device_count()} CPU devices; run "
                        f"`unclip-jax bench --devices {n}` in a fresh process")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from unclip_jax.train.cli import add_config_overrides
    parser.add_argument("--config", action="append", default=None,
                        help="stage config FILE.py:ARG (repeatable; default: the shapes prior "
                             "and decoder)")
    parser.add_argument("--devices", type=int, default=8,
                        help="CPU: number of simulated devices (default 8); accelerators: "
                             "ignored, all local devices are used")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="global batch (default: the config's train.batch_size)")
    parser.add_argument("--modes", default="pmap,dp,fsdp",
                        help="comma-separated subset of pmap,dp,fsdp")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    parser.add_argument("--iters", type=int, default=5, help="timed calls (median reported)")
    parser.add_argument("--sample-steps", type=int, default=10,
                        help="DDIM steps of the short sampling loop")
    parser.add_argument("--peak-size", type=int, default=2048,
                        help="matrix size of the matmul that measures the peak FLOP/s")
    parser.add_argument("--no-torch", action="store_true",
                        help="skip the diffusers (PyTorch) comparison")
    parser.add_argument("--xla-dump", default=None, metavar="DIR",
                        help="also dump XLA HLO of every compiled program to DIR")
    parser.add_argument("--out", default=None, metavar="FILE.json", help="write results here")
    add_config_overrides(parser)


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise UserError(f"--{name}={value}: must be at least 1")


def load_configs(specs, overrides):
    from unclip_jax.train.cli import apply_overrides, load_config
    return [apply_overrides(load_config(s), overrides) for s in (specs or DEFAULT_CONFIGS)]


def run(args) -> int:
    for name in ("devices", "iters", "sample_steps", "peak_size"):
        _positive(name.replace("_", "-"), getattr(args, name))
    mode_names = [m.strip() for m in args.modes.split(",") if m.strip()]
    from unclip_jax.bench.modes import MODES
    bad = [m for m in mode_names if m not in MODES]
    if bad or not mode_names:
        raise UserError(f"--modes {args.modes!r}: choose a comma-separated subset of "
                        f"{','.join(MODES)}")
    configs = load_configs(args.config, args.config_overrides)
    set_device_count(args.devices, args.xla_dump)

    import jax

    from unclip_jax.bench import report
    from unclip_jax.bench.measure import matmul_peak
    from unclip_jax.bench.benchmark import benchmark_stage
    from unclip_jax.bench.workload import build_workload
    devices = jax.devices()
    if jax.default_backend() == "cpu":
        devices = devices[:args.devices]
    peak = matmul_peak(devices, args.peak_size)
    single = matmul_peak(devices[:1], args.peak_size)
    results = {"machine": report.machine(devices), "command": " ".join(["unclip-jax", *sys.argv[2:]])
               if sys.argv[1:2] == ["bench"] else None,
               "peak": {"all_devices": peak, "one_device": single}, "stages": []}
    for config in configs:
        bs = args.batch_size or int(config.train.batch_size)
        w = build_workload(config, bs, seed=int(config.seed))
        results["stages"].append(benchmark_stage(
            w, devices, mode_names=mode_names, peak=peak["peak_flops_per_s_per_device"],
            warmup=args.warmup, iters=args.iters, loop_steps=args.sample_steps,
            torch=not args.no_torch, single_peak=single["peak_flops_per_s_per_device"]))
        print(report.stage_table(results["stages"][-1]), flush=True)
    print(report.peak_line(results), flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {args.out}")
    return 0

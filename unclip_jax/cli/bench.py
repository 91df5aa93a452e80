"""`unclip-jax bench`: training-step and sampling benchmarks of the prior and the decoder in
three parallel modes (pmap / jit data-parallel / jit FSDP), beside diffusers' PyTorch unCLIP
components on the same CPU (`unclip_jax.bench`).

    unclip-jax bench [--config shapes:decoder] [--config.model.width=512 ...]
                     [--devices 8] [--batch-size 16] [--iters 5] [--out results.json]

Without --config both shapes:prior and shapes:decoder run.
"""
from __future__ import annotations

import json
import os
import sys

from unclip_jax.cli import config_args
from unclip_jax.errors import UserError

DEFAULT_CONFIGS = ("shapes:prior", "shapes:decoder")


def add_arguments(parser) -> None:
    config_args.add_arguments(parser, required=False, repeat=True,
                              help="stage config NAME:ARG or FILE.py:ARG (repeatable; default: "
                                   "the shapes prior and decoder)")
    parser.add_argument("--devices", type=int, default=8,
                        help="CPU: number of simulated devices; accelerators: "
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


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise UserError(f"--{name}={value}: must be at least 1")


def load_configs(specs, overrides):
    return [config_args.apply_overrides(config_args.load_config(s), overrides)
            for s in (specs or DEFAULT_CONFIGS)]


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
    from unclip_jax.bench import set_device_count
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

"""Wall time of `unclip-jax sample` as a user runs it: cold (empty compilation cache) and warm.

    python benchmarks/bench_cli.py [--counts 1 4 16] [--repeats 1]

For each image count N: the command runs once with a fresh, empty persistent compilation
cache (cold: every program compiled) and then `--repeats` times with the cache that first
run filled (warm: what a user sees from the second invocation on). Each run is a new process
(`python -m unclip_jax.cli sample PROMPT -n N --seed 0 --no-progress`) on the bundled model,
timed from start to exit. Prints a markdown table and the load average; run it on an idle
machine.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

PROMPT = "a small red circle on the left"


def run_once(n: int, cache: str, out: str) -> float:
    env = dict(os.environ, UNCLIP_JAX_CACHE_DIR=cache)
    cmd = [sys.executable, "-m", "unclip_jax.cli", "sample", PROMPT, "-n", str(n), "--seed", "0",
           "--no-progress", "--out", out]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--repeats", type=int, default=1, help="warm runs per count (median shown)")
    args = ap.parse_args(argv)
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print("| images (-n) | cold s | warm s |\n|---|---|---|")
    for n in args.counts:
        with tempfile.TemporaryDirectory() as d:
            cache, out = os.path.join(d, "cache"), os.path.join(d, "x.png")
            cold = run_once(n, cache, out)
            warm = sorted(run_once(n, cache, os.path.join(d, f"w{i}.png"))
                          for i in range(args.repeats))[args.repeats // 2]
        print(f"| {n} | {cold:.1f} | {warm:.1f} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

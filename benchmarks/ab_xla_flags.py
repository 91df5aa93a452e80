"""A/B of XLA CPU flag sets on the decoder benchmark configuration: each set runs in its own
process (XLA reads XLA_FLAGS once), the processes alternate, and each reports the median of
its timed guided sampling steps and training steps.

    python benchmarks/ab_xla_flags.py [--rounds 3] [--iters 5]

Flag sets: the project's default (`unclip_jax.runtime`), that plus YNN dots off, and XLA's
defaults (UNCLIP_JAX_XLA_DEFAULTS=0). Run on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

SETS = {
    "project default": {},
    "+ YNN dots off": {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="
                                    "-individual_convolution,-individual_dot,-dot"},
    "XLA defaults": {"UNCLIP_JAX_XLA_DEFAULTS": "0"},
}

CHILD = r"""
import json, sys, time
sys.path.insert(0, "benchmarks")
import unclip_jax, jax
from profile_unet import configs
from unclip_jax.bench import modes as modes_lib
from unclip_jax.bench.workload import build_workload
w = build_workload(configs("decoder"), 8)
m = modes_lib.setup(w, jax.devices()[:1], "dp")
s = m.compile_sample(1)
def t(fn, n):
    fn(); out = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); out.append(time.perf_counter() - t0)
    return out
def train():
    m.params, m.opt_state, loss = m.train(m.params, m.opt_state, m.batch)
    jax.block_until_ready(loss)
print(json.dumps({"sample": t(lambda: jax.block_until_ready(s(m.params, m.sample_inputs)), ITERS),
                  "train": t(train, ITERS)}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args(argv)
    got = {k: {"sample": [], "train": []} for k in SETS}
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    for _ in range(args.rounds):
        for name, env in SETS.items():
            e = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",
                                                                   "UNCLIP_JAX_XLA_DEFAULTS")}
            out = subprocess.run([sys.executable, "-c", CHILD.replace("ITERS", str(args.iters))],
                                 env={**e, **env}, capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            for k in r:
                got[name][k] += r[k]
    print("| flags | guided sampling step ms (median) | training step ms (median) |\n|---|---|---|")
    for name, r in got.items():
        print(f"| {name} | {statistics.median(r['sample']) * 1e3:.1f} | "
              f"{statistics.median(r['train']) * 1e3:.1f} |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sampler benchmark: 250 ancestral steps compiled as ONE program vs dispatched step by step.

Both variants run the same math (`ddpm_sample`'s step: model call + `p_mean_variance` +
noise): 'one program' is `jax.jit(ddpm_sample)` (a `lax.scan`), 'per step' is a jitted
single step called 250 times from Python. Each gets one warm-up call, then `--repeats` timed
runs (interleaved; best run reported). Models: a small MLP on [64, 64] vectors and a tiny conv net on
[8, 16, 16, 3] images. Prints a table and rewrites this benchmark's section of
docs/benchmarks.md.

    python benchmarks/bench_sampler.py [--steps 250] [--repeats 5] [--no-write]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.diffusion import p_mean_variance, respace, ddpm_sample
from unclip_jax.models.layers import timestep_embedding

SECTION = "## Sampler: one compiled loop vs per-step dispatch"
DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


class MLPDenoiser(nn.Module):
    """ε-predictor for vectors [B, D]: 3 dense layers with an added timestep embedding."""
    width: int = 256

    @nn.compact
    def __call__(self, x, t):
        h = nn.Dense(self.width)(x) + nn.Dense(self.width)(timestep_embedding(t, 64))
        h = nn.Dense(self.width)(nn.silu(h))
        return nn.Dense(x.shape[-1])(nn.silu(h))


class ConvDenoiser(nn.Module):
    """ε-predictor for images [B, H, W, C]: three 3×3 convolutions with a timestep bias."""
    channels: int = 32

    @nn.compact
    def __call__(self, x, t):
        h = nn.Conv(self.channels, (3, 3))(x)
        h = h + nn.Dense(self.channels)(timestep_embedding(t, 64))[:, None, None, :]
        h = nn.Conv(self.channels, (3, 3))(nn.silu(h))
        return nn.Conv(x.shape[-1], (3, 3))(nn.silu(h))


def _time_pair(fa, fb, repeats: int) -> tuple[float, float]:
    """Best-of-`repeats` seconds of fa and fb, runs interleaved so load swings hit both."""
    jax.block_until_ready(fa())                       # warm-up (compiles)
    jax.block_until_ready(fb())
    ta, tb = [], []
    for _ in range(repeats):
        for fn, times in ((fa, ta), (fb, tb)):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times.append(time.perf_counter() - t0)
    return min(ta), min(tb)


def bench_model(name: str, module: nn.Module, shape, steps: int, repeats: int) -> dict:
    sched = respace("linear", 1000, str(steps))
    key = jax.random.key(0)
    x_T = jax.random.normal(jax.random.fold_in(key, 1), shape)
    params = module.init(jax.random.fold_in(key, 2), x_T, jnp.zeros((shape[0],), jnp.int32))
    kw = dict(predict="eps", variance="fixed_small", clip_denoised=True)

    @jax.jit
    def whole(params, x_T, key):
        model = lambda x, t: module.apply(params, x, t)  # noqa: E731
        return ddpm_sample(model, sched, shape, key, x_T=x_T, **kw)

    @jax.jit
    def one_step(params, x, i, key):
        t = jnp.full((shape[0],), i, jnp.int32)
        out = module.apply(params, x, sched.timesteps[t])
        p = p_mean_variance(sched, out, x, t, **kw)
        noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, jnp.float32)
        return p["mean"] + jnp.where(i > 0, jnp.exp(0.5 * p["log_variance"]), 0.0) * noise

    def stepped():
        x = x_T
        for i in range(steps - 1, -1, -1):
            x = one_step(params, x, i, key)
        return x

    a, b = whole(params, x_T, key), stepped()
    np.testing.assert_allclose(a, b, atol=1e-3)       # same math, same keys
    t_whole, t_step = _time_pair(lambda: whole(params, x_T, key), stepped, repeats)
    return dict(model=name, shape="×".join(map(str, shape)), steps=steps, whole=t_whole,
                stepped=t_step, ratio=t_step / t_whole)


def table(rows) -> str:
    lines = ["| model | batch shape | steps | one program (s) | per-step dispatch (s) | "
             "per-step / one program | difference per step (ms) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['shape']} | {r['steps']} | {r['whole']:.3f} | "
                     f"{r['stepped']:.3f} | {r['ratio']:.2f}× | "
                     f"{1e3 * (r['stepped'] - r['whole']) / r['steps']:+.3f} |")
    return "\n".join(lines)


def write_section(body: str) -> None:
    """Replace (or append) this benchmark's section in docs/benchmarks.md, leaving others."""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    start = text.find(SECTION)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + body
    else:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + body + ("" if end < 0 else "\n" + text[end + 1:])
    DOC.write_text(text if text.endswith("\n") else text + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-write", action="store_true", help="print only; leave docs alone")
    args = p.parse_args(argv)
    rows = [bench_model("MLP 64→256→256→64", MLPDenoiser(), (64, 64), args.steps, args.repeats),
            bench_model("conv 3×3 ×3, 32 ch", ConvDenoiser(), (8, 16, 16, 3), args.steps,
                        args.repeats)]
    tab = table(rows)
    print(tab)
    if not args.no_write:
        cmd = "python benchmarks/bench_sampler.py " + " ".join(sys.argv[1:] if argv is None else argv)
        machine = (f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), "
                   f"shared with other jobs, jax {jax.__version__} on {jax.default_backend()}")
        body = (f"{SECTION}\n\n"
                f"Measured with `{cmd.strip()}` on a {machine}. Ancestral DDPM (fixed_small, "
                f"clipped x0) with one warm-up call each, then {args.repeats} interleaved runs of each, best run reported (the machine's load from other jobs swings run times by 2× or more; best-of is the least load-sensitive figure). "
                f"'one program' is `jax.jit(ddpm_sample)` (a `lax.scan`); 'per-step dispatch' "
                f"calls a jitted single step {args.steps} times from Python. "
                f"With models this small on CPU, JAX's C++ dispatch costs well under a "
                f"millisecond per step, so the two are close; the compiled loop's gains are "
                f"on accelerators (no host round trip per step) and in letting the whole "
                f"sampler live inside one jitted, sharded program.\n\n{tab}\n")
        write_section(body)
        print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""AR prior sampling: key/value-cached loop vs the full-recompute reference.

Both loops are `unclip_jax.models.ar_prior.sample_tokens` (kv_cache=True / False) on random
weights, one compiled program per loop, at `UnCLIP`'s defaults (temperature 1, guidance 1; it
vmaps the same loop over batch-1 examples, here the batch is one array). Compile time
(`lower().compile()`) is reported apart from run time; each program gets `--warmup` untimed
calls (default 1), then `--repeats` timed runs, interleaved so load swings hit both; medians
with min–max.

The reference costs K full forwards over S = L + 1 + K positions. At the paper's size that is
hours on a small CPU, so `--full forward` times ONE compiled forward (the reference loop's body,
same shapes) and reports K × its median instead of the loop; `--full loop` (the default) times
the whole reference loop, and also prints K × forward so the two can be compared.

    python benchmarks/bench_ar_prior.py --size shapes [--batch 4] [--guidance 1] [--repeats 5]
    python benchmarks/bench_ar_prior.py --size paper --layers 2 --full forward --repeats 3 \
        --warmup 0

Prints a markdown table row per run (load average before and after the timed runs).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.configs import paper, shapes
from unclip_jax.models import ar_prior as ar


def build(size: str, layers: int | None, dtype: str):
    """(ARPrior, config name) for configs/{size}.py:ar_prior, optionally fewer layers."""
    cfg = (shapes if size == "shapes" else paper).ar_prior()
    with cfg.unlocked():
        cfg.model.dtype = dtype
        cfg.model.remat = False
        if layers:
            cfg.model.layers = layers
    return ar.from_config(cfg.model)


def inputs(model, batch: int, seed: int = 0):
    """Random params (jitted init) and conditioning: cond dict, dot tokens [B], key."""
    r = np.random.default_rng(seed)
    params = jax.jit(lambda k: nn.meta.unbox(model.init(k, *ar.dummy_inputs(model))))(
        jax.random.key(seed))
    lengths = r.integers(model.text_len // 4, model.text_len + 1, size=batch)
    cond = dict(z_t=jnp.asarray(r.normal(size=(batch, model.embed_dim)), jnp.float32),
                text_states=jnp.asarray(r.normal(size=(batch, model.text_len, model.text_width)),
                                        jnp.float32),
                text_mask=jnp.asarray(np.arange(model.text_len)[None] < lengths[:, None]))
    dot = jnp.asarray(r.integers(0, model.dot_buckets, size=batch), jnp.int32)
    return params, cond, dot, jax.random.key(seed + 1)


def compiled(fn, *args):
    """(executable, compile seconds) of jax.jit(fn) for these arguments."""
    t0 = time.perf_counter()
    exe = jax.jit(fn).lower(*args).compile()
    return exe, time.perf_counter() - t0


def timed(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """name → list of `repeats` run seconds; `warmup` untimed calls each, runs interleaved."""
    for _ in range(warmup):
        for f in fns.values():
            jax.block_until_ready(f())
    out = {n: [] for n in fns}
    for _ in range(repeats):
        for n, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            out[n].append(time.perf_counter() - t0)
    return out


def fmt(ts) -> str:
    return f"{statistics.median(ts):.3f} ({min(ts):.3f}–{max(ts):.3f})"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=("shapes", "paper"), default="shapes")
    ap.add_argument("--layers", type=int, default=None, help="override the config's depth")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls before the runs "
                    "(programs are compiled ahead of time, so 0 is fair for the big sizes)")
    ap.add_argument("--full", choices=("loop", "forward"), default="loop",
                    help="time the whole reference loop, or one full forward × K")
    a = ap.parse_args(argv)

    model = build(a.size, a.layers, a.dtype)
    params, cond, dot, key = inputs(model, a.batch)
    K, S = model.pca_components, model.text_len + 1 + model.pca_components
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    print(f"# {a.size}: width {model.width}, layers {model.layers}, heads {model.heads}, K {K}, "
          f"S {S}, buckets {model.num_buckets}, {n_params / 1e6:.1f}M params, batch {a.batch}, "
          f"guidance {a.guidance}, {a.dtype}; jax {jax.__version__} on {jax.default_backend()}, "
          f"{os.cpu_count()} CPUs", flush=True)

    sample = lambda kv: (lambda p, c, d, k: ar.sample_tokens(
        p, model, c, d, k, a.temperature, a.guidance, kv_cache=kv))
    cached, c_cached = compiled(sample(True), params, cond, dot, key)
    fns = {"cached": lambda: cached(params, cond, dot, key)}
    compile_s = {"cached": c_cached}
    tokens = jnp.zeros((a.batch, K + 1), jnp.int32).at[:, 0].set(dot)
    fwd, compile_s["forward"] = compiled(
        lambda p, t, c: ar._guided_logits(p, model, t, c, a.guidance), params, tokens, cond)
    fns["forward"] = lambda: fwd(params, tokens, cond)
    if a.full == "loop":
        full, compile_s["full"] = compiled(sample(False), params, cond, dot, key)
        fns["full"] = lambda: full(params, cond, dot, key)
        np.testing.assert_array_equal(np.asarray(fns["cached"]()), np.asarray(fns["full"]()))
    print("# compile (s): " + ", ".join(f"{n} {s:.2f}" for n, s in compile_s.items()),
          flush=True)

    load0 = os.getloadavg()
    t = timed(fns, a.repeats, a.warmup)
    load1 = os.getloadavg()
    full_s = statistics.median(t["full"]) if "full" in t else K * statistics.median(t["forward"])
    how = "loop" if "full" in t else f"{K} × forward"
    cached_s = statistics.median(t["cached"])
    print(f"# runs (s, median (min–max) of {a.repeats}): " +
          ", ".join(f"{n} {fmt(v)}" for n, v in t.items()) +
          f"; {K} × forward {K * statistics.median(t['forward']):.3f}")
    print("| size | layers | batch | guidance | compile cached / full (s) | full recompute (s) "
          "| KV cache (s) | speed-up | load avg (1 min) before → after |")
    print("|---|---|---|---|---|---|---|---|---|")
    c_full = compile_s.get("full", compile_s["forward"])
    print(f"| {a.size} | {model.layers} | {a.batch} | {a.guidance:g} | "
          f"{compile_s['cached']:.1f} / {c_full:.1f}{'' if 'full' in t else ' (forward)'} | "
          f"{full_s:.3f} ({how}) | {fmt(t['cached'])} | {full_s / cached_s:.1f}× | "
          f"{load0[0]:.1f} → {load1[0]:.1f} |")


if __name__ == "__main__":
    main()

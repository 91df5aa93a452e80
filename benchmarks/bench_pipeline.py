"""Sampling-pipeline throughput on this machine: images/s per stage and for the chain.

Models use the configs/shapes.py sizes with random weights (CLIP text encoding excluded).
Each stage is timed two ways with the same number of DDIM steps:
  compiled  the whole sampler loop as ONE jitted program (what unclip_jax.sample runs)
  dispatch  a jitted single step called from Python once per step
Compile time is excluded (one warm-up call each). Usage:

    python benchmarks/bench_pipeline.py --batch 8 --steps 4 [--stages prior,decoder,upsampler1]
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.configs import shapes
from unclip_jax.sample import stage_fns
from unclip_jax.diffusion import gaussian as G
from unclip_jax.diffusion import samplers, schedules
from unclip_jax.models import prior as prior_lib
from unclip_jax.models.unet import UNet


def build(stage, batch):
    """(model_fn(params, x, t), params, x_shape) for one stage at its config size."""
    cfg = shapes.get_config(stage)
    if stage == "prior":
        model = prior_lib.from_config(cfg.model)
        m = cfg.model
        z_t = jnp.ones((batch, m.embed_dim))
        s = jnp.zeros((batch, m.text_len, m.text_width))
        mask = jnp.ones((batch, m.text_len), bool)
        params = jax.jit(model.init)(jax.random.key(0), *prior_lib.dummy_inputs(model))

        def fn(p, x, t):
            return prior_lib.prior_model_fn(p, model, z_t, s, mask, guidance_scale=4.0)(x, t)
        return fn, params, (batch, m.embed_dim), cfg
    model = UNet.from_config(cfg.model)
    m, S = cfg.model, cfg.model.image_size
    if stage == "decoder":
        kw = dict(z_i=jnp.ones((batch, m.embed_dim)),
                  text_states=jnp.zeros((batch, m.text_len, m.text_width)),
                  text_mask=jnp.ones((batch, m.text_len), bool))
    else:
        kw = dict(low_res=jnp.zeros((batch, S // 4, S // 4, 3)))
    one = {k: v[:1] for k, v in kw.items()}
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, S, S, 3)),
                                 jnp.zeros((1,), jnp.int32), **one)

    def fn(p, x, t):
        return stage_fns.unet_model_fn(p, model, guidance=3.0 if stage == "decoder" else 1.0,
                                       learned_variance=cfg.diffusion.variance == "learned_range",
                                       **kw)(x, t)
    return fn, params, (batch, S, S, 3), cfg


def bench_stage(stage, batch, steps, repeats):
    fn, params, shape, cfg = build(stage, batch)
    d = cfg.diffusion
    sched = schedules.respace(d.schedule, d.timesteps, f"ddim{steps}")
    key = jax.random.key(0)

    @jax.jit
    def whole(params, key):
        return samplers.ddim_sample(lambda x, t: fn(params, x, t), sched, shape, key,
                                    predict=d.predict, eta=0.0, variance=d.variance,
                                    clip_denoised=d.clip_denoised)

    @jax.jit
    def step(params, x, i):
        t = jnp.full((shape[0],), i, jnp.int32)
        out = fn(params, x, sched.timesteps[t])
        x0, eps, _ = G.predict_x0_eps(sched, out, x, t, predict=d.predict,
                                      learned=d.variance == "learned_range",
                                      clip_denoised=d.clip_denoised)
        abar_prev = G.extract(sched.alphas_cumprod_prev, t, x)
        return jnp.sqrt(abar_prev) * x0 + jnp.sqrt(1.0 - abar_prev) * eps

    def per_step(params, key):
        x = jax.random.normal(key, shape)
        for i in reversed(range(sched.num_steps)):
            x = step(params, x, i)
        return x

    out = {}
    for name, run in (("compiled", lambda: whole(params, key)),
                      ("dispatch", lambda: per_step(params, key))):
        jax.block_until_ready(run())
        t0 = time.perf_counter()
        for _ in range(repeats):
            jax.block_until_ready(run())
        out[name] = batch * repeats / (time.perf_counter() - t0)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--stages", default="prior,decoder,upsampler1")
    a = ap.parse_args()
    print(f"devices: {jax.devices()}  batch {a.batch}  DDIM steps {a.steps}")
    print(f"{'stage':<12}{'compiled img/s':>16}{'dispatch img/s':>16}")
    total = {"compiled": 0.0, "dispatch": 0.0}
    for stage in a.stages.split(","):
        r = bench_stage(stage, a.batch, a.steps, a.repeats)
        for k in total:
            total[k] += 1.0 / r[k]
        print(f"{stage:<12}{r['compiled']:>16.2f}{r['dispatch']:>16.2f}", flush=True)
    print(f"{'chain':<12}{1 / total['compiled']:>16.2f}{1 / total['dispatch']:>16.2f}")


if __name__ == "__main__":
    main()

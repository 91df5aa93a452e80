"""A cheap sampler for the PNG grids written while training image stages (`train.sample_every`)."""
from __future__ import annotations

import jax


SAMPLE_COUNT = 8       # images per sample grid
SAMPLE_STEPS = 10      # DDIM steps of the preview sampler


def unet_sample(params, key, model, config, batch, extras):
    """A cheap preview: DDIM (η = 0, `SAMPLE_STEPS` steps, no guidance) for the first
    `SAMPLE_COUNT` examples' conditioning. → images [N, H, W, 3] in [-1, 1]."""
    from unclip_jax.diffusion.samplers import ddim_sample
    from unclip_jax.diffusion.schedules import from_config
    d = config.diffusion
    n = min(SAMPLE_COUNT, batch["image"].shape[0])
    sub = {k: v[:n] for k, v in batch.items()}
    cond = ({"low_res": sub["low_res"]} if "low_res" in sub else
            {k: sub[k] for k in ("z_i", "text_states", "text_mask", "caption_ids") if k in sub})
    sched = from_config(d, f"ddim{min(SAMPLE_STEPS, int(d.timesteps))}")

    @jax.jit
    def run(params, cond, key):
        fn = lambda x, t: model.apply({"params": params}, x, t, **cond)
        return ddim_sample(fn, sched, sub["image"].shape, key, predict=d.predict,
                           variance=d.variance, clip_denoised=True)
    return run(params, cond, key)

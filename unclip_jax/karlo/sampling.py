"""Karlo-specific sampling pieces (diffusers UnCLIPPipeline semantics) on our samplers.

- `karlo_schedule(diffusion_cfg, num_steps)`: the respaced schedule over the timesteps
  `UnCLIPScheduler.set_timesteps(num_steps)` visits. Our respaced β_i = 1 − ᾱ_{k_i}/ᾱ_{k_{i−1}}
  and posterior variance are exactly UnCLIPScheduler's per-step β and variance, so
  `samplers.ddpm_sample` with variance 'fixed_small' (its 'fixed_small_log') or
  'learned_range' reproduces `UnCLIPScheduler.step`.
- super_res_last runs the final step of super_res_first's loop through the generic
  `unclip_jax.diffusion.final_steps.final_steps_model_fn`; the sampling engine uses it when
  upsampler2's config has `diffusion.final_steps` > 0.
"""
from __future__ import annotations

import numpy as np

from unclip_jax.diffusion import schedules


TRAIN_TIMESTEPS = 1000         # Karlo's schedules are 1000-step cosine


def karlo_timesteps(num_steps: int, train_steps: int = TRAIN_TIMESTEPS) -> list[int]:
    """Timesteps `UnCLIPScheduler.set_timesteps(num_steps)` visits, ascending.

    t_k = round(k · (T − 1) / (N − 1)), k = 0..N−1 (numpy round-half-to-even), so the first
    and last training steps are always included. N = 1 gives [0].
    """
    n, T = int(num_steps), int(train_steps)
    if n < 1 or n > T:
        raise ValueError(f"num_steps={num_steps} must be between 1 and the {T} training steps")
    if n == 1:
        return [0]
    ratio = (T - 1) / (n - 1)
    return sorted(int(t) for t in np.round(np.arange(n) * ratio))


def karlo_schedule(diffusion_cfg, num_steps: int | None = None) -> schedules.Schedule:
    """Respaced schedule for `num_steps` UnCLIPScheduler steps (default: the config's list)."""
    if num_steps is None:
        return schedules.from_config(diffusion_cfg, sampling=True)
    return schedules.respace(diffusion_cfg.schedule, diffusion_cfg.timesteps,
                             karlo_timesteps(num_steps, diffusion_cfg.timesteps))

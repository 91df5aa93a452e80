"""Switch models for the final steps of one sampler loop.

A stage may hand the last steps of its loop to a second network of the same resolution
(Karlo's super_res_last after super_res_first): `final_steps_model_fn` makes one
`model_fn(x_t, t)` that calls the second network at the final timesteps and the first one
everywhere else, so the whole loop stays one sampler run.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def final_steps_model_fn(first_fn: Callable, last_fn: Callable,
                         last_timestep: int = 0) -> Callable:
    """model_fn(x_t [B,H,W,C], t [B]) → last_fn at t ≤ last_timestep, else first_fn.

    t and last_timestep are original (training) timesteps; last_timestep may be traced. The
    choice is one `lax.cond` on t[0] (every example of a sampler step shares t), so each
    step runs only one of the two networks.
    """
    def fn(x_t, t):
        t = jnp.asarray(t)
        return jax.lax.cond(t.reshape(-1)[0] <= last_timestep, last_fn, first_fn, x_t, t)
    return fn

"""Samplers: each is one whole loop (`lax.scan`) that traces into a single program.

model_fn(x_t, t_model) → prediction, with t_model int32 [B] the ORIGINAL training timestep
(sched.timesteps[i]); it is a closure, so params and conditioning ride along. Settings
(predict, variance, clipping, η, shapes) are Python values fixed at trace time: wrap a
sampler in `jax.jit` with them bound by `functools.partial` or a closure. Randomness: the
initial noise comes from fold_in(key, N) and step i's noise from fold_in(key, i).
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from unclip_jax.diffusion import gaussian as G
from unclip_jax.diffusion.schedules import Schedule


def _model_call(model_fn, sched: Schedule, x, i):
    t = jnp.full((x.shape[0],), i, jnp.int32)
    return t, model_fn(x, sched.timesteps[t])


def _is_learned(out, x, variance):
    """Whether a model output carries a learned-variance half (from `variance` or its shape)."""
    if variance is not None:
        return G.check_variance(variance) == "learned_range"
    return out.shape[-1] == 2 * x.shape[-1] and out.shape[-1] != x.shape[-1]


def _initial_noise(sched, shape, key, x_T):
    if x_T is not None:
        return jnp.asarray(x_T, jnp.float32)
    if key is None:
        raise ValueError("pass a PRNG key (jax.random.key(seed)) or an explicit x_T")
    return jax.random.normal(jax.random.fold_in(key, sched.num_steps), tuple(shape), jnp.float32)


def _finish(x_T, x, traj, return_trajectory):
    if not return_trajectory:
        return x
    return x, jnp.concatenate([x_T[None], traj], axis=0)


def ddpm_step(model_fn: Callable, sched: Schedule, x, i, key, *, predict: str, variance: str,
              clip_denoised: bool = True, clip_range: float = 1.0,
              dynamic_threshold: float | None = None):
    """One ancestral step x_i → x_{i−1} [B, ...] at step index i (int, may be traced); its
    noise is N(0, 1) from fold_in(key, i), none at i = 0."""
    t, out = _model_call(model_fn, sched, x, i)
    p = G.p_mean_variance(sched, out, x, t, predict=predict, variance=variance,
                          clip_denoised=clip_denoised, clip_range=clip_range,
                          dynamic_threshold=dynamic_threshold)
    noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, jnp.float32)
    return p["mean"] + jnp.where(i > 0, jnp.exp(0.5 * p["log_variance"]), 0.0) * noise


def ddim_step(model_fn: Callable, sched: Schedule, x, i, key, *, predict: str, eta: float = 0.0,
              clip_denoised: bool = True, clip_range: float = 1.0,
              dynamic_threshold: float | None = None, variance: str | None = None):
    """One DDIM step x_i → x_{i−1} [B, ...] (see `ddim_sample`); η > 0 adds σ·N(0, 1) noise
    from fold_in(key, i) (key unused at η = 0)."""
    t, x0, eps = _ddim_eps_x0(model_fn, sched, x, i, predict, variance, clip_denoised,
                              clip_range, dynamic_threshold)
    abar = G.extract(sched.alphas_cumprod, t, x)
    abar_prev = G.extract(sched.alphas_cumprod_prev, t, x)
    sigma = eta * jnp.sqrt((1 - abar_prev) / (1 - abar)) * jnp.sqrt(1 - abar / abar_prev)
    x = jnp.sqrt(abar_prev) * x0 + jnp.sqrt(jnp.maximum(1 - abar_prev - sigma**2, 0.0)) * eps
    if eta > 0:
        x = x + sigma * jax.random.normal(jax.random.fold_in(key, i), x.shape, jnp.float32)
    return x


def ddpm_sample(model_fn: Callable, sched: Schedule, shape: Sequence[int], key, *, predict: str,
                variance: str, clip_denoised: bool = True, clip_range: float = 1.0,
                dynamic_threshold: float | None = None, x_T=None, return_trajectory: bool = False):
    """Ancestral sampling over every step of `sched` (respace it for fewer steps).

    shape: [B, ...] of the sample. Returns x0 float32 [B, ...] (and the trajectory
    [N+1, B, ...] starting from x_T if return_trajectory).
    """
    G.check_predict(predict)
    G.check_variance(variance)
    if key is None:
        raise ValueError("ddpm_sample draws noise at every step; pass a PRNG key")
    x_T = _initial_noise(sched, shape, key, x_T)

    def step(x, i):
        x = ddpm_step(model_fn, sched, x, i, key, predict=predict, variance=variance,
                      clip_denoised=clip_denoised, clip_range=clip_range,
                      dynamic_threshold=dynamic_threshold)
        return x, x

    x, traj = jax.lax.scan(step, x_T, jnp.arange(sched.num_steps - 1, -1, -1))
    return _finish(x_T, x, traj, return_trajectory)


def _ddim_eps_x0(model_fn, sched, x, i, predict, variance, clip_denoised, clip_range,
                 dynamic_threshold):
    t, out = _model_call(model_fn, sched, x, i)
    learned = _is_learned(out, x, variance)
    x0, eps, _ = G.predict_x0_eps(sched, out, x, t, predict=predict, learned=learned,
                                  clip_denoised=clip_denoised, clip_range=clip_range,
                                  dynamic_threshold=dynamic_threshold)
    return t, x0, eps


def ddim_sample(model_fn: Callable, sched: Schedule, shape: Sequence[int], key, *, predict: str,
                eta: float = 0.0, clip_denoised: bool = True, clip_range: float = 1.0,
                dynamic_threshold: float | None = None, variance: str | None = None, x_T=None,
                return_trajectory: bool = False):
    """DDIM sampling (Song et al. 2020, eq. 12) over every step of `sched`.

    x_{i−1} = √ᾱ_{i−1} x0 + √(1 − ᾱ_{i−1} − σ²) ε + σ z, σ = η·√((1−ᾱ_{i−1})/(1−ᾱ_i))·√(1−ᾱ_i/ᾱ_{i−1}).
    η = 0 is deterministic (key may be None when x_T is given); η = 1 matches DDPM's
    fixed_small variance. A learned-variance output (variance='learned_range', or detected
    from 2× channels when variance is None) has its variance half ignored.
    """
    G.check_predict(predict)
    if not eta >= 0:
        raise ValueError(f"DDIM eta must be >= 0 (0 = deterministic, 1 = DDPM-like), got {eta!r}")
    x_T = _initial_noise(sched, shape, key, x_T)
    if eta > 0 and key is None:
        raise ValueError("ddim_sample with eta > 0 draws noise; pass a PRNG key")

    def step(x, i):
        x = ddim_step(model_fn, sched, x, i, key, predict=predict, eta=eta,
                      clip_denoised=clip_denoised, clip_range=clip_range,
                      dynamic_threshold=dynamic_threshold, variance=variance)
        return x, x

    x, traj = jax.lax.scan(step, x_T, jnp.arange(sched.num_steps - 1, -1, -1))
    return _finish(x_T, x, traj, return_trajectory)


def ddim_invert(model_fn: Callable, sched: Schedule, x0, *, predict: str,
                clip_denoised: bool = False, clip_range: float = 1.0, variance: str | None = None,
                return_trajectory: bool = False):
    """Deterministic reverse DDIM: data x0 [B, ...] → x_T at the last step of `sched`.

    Step i moves from noise level ᾱ_{i−1} to ᾱ_i using ε evaluated at (x, step i), the
    inverse of `ddim_sample(eta=0)`'s step i up to the change of x within one step.
    Returns x_T (and the trajectory [N+1, B, ...] from x0 if return_trajectory).
    """
    G.check_predict(predict)
    x_start = jnp.asarray(x0, jnp.float32)

    def step(x, i):
        t, _, eps = _ddim_eps_x0(model_fn, sched, x, i, predict, variance, False, clip_range,
                                 None)
        abar = G.extract(sched.alphas_cumprod, t, x)
        abar_prev = G.extract(sched.alphas_cumprod_prev, t, x)
        x0_hat = (x - jnp.sqrt(1 - abar_prev) * eps) / jnp.sqrt(abar_prev)
        if clip_denoised:
            x0_hat = jnp.clip(x0_hat, -clip_range, clip_range)
        x = jnp.sqrt(abar) * x0_hat + jnp.sqrt(1 - abar) * eps
        return x, x

    x, traj = jax.lax.scan(step, x_start, jnp.arange(sched.num_steps))
    return _finish(x_start, x, traj, return_trajectory)

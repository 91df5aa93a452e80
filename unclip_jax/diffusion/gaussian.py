"""Gaussian diffusion math: forward process, posterior, and parameterisation conversions.

All functions are pure functions of a `Schedule` and arrays. `t` is an int32 index [B] into
the given schedule (not the original timestep). Data arrays have the batch on axis 0 and
any number of trailing axes (images [B, H, W, C], embeddings [B, D]); per-step coefficients
broadcast over them. The math is done in float32 whatever the input dtype.
"""
from __future__ import annotations

import jax.numpy as jnp

from unclip_jax.diffusion.schedules import Schedule

PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large", "learned_range")


def check_predict(predict: str) -> str:
    if predict not in PREDICTIONS:
        raise ValueError(f"unknown prediction target predict={predict!r}; choose one of "
                         f"{PREDICTIONS}")
    return predict


def check_variance(variance: str) -> str:
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance type variance={variance!r}; choose one of "
                         f"{VARIANCES}")
    return variance


def extract(coef: jnp.ndarray, t: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    """coef[t] float32 reshaped to [B, 1, ..., 1] to broadcast against x [B, ...]."""
    t = jnp.asarray(t, jnp.int32)
    return coef[t].astype(jnp.float32).reshape(t.shape + (1,) * (x.ndim - t.ndim))


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def q_sample(sched: Schedule, x0, t, noise):
    """x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε."""
    x0, noise = _f32(x0), _f32(noise)
    return (extract(sched.sqrt_alphas_cumprod, t, x0) * x0
            + extract(sched.sqrt_one_minus_alphas_cumprod, t, x0) * noise)


def q_posterior(sched: Schedule, x0, x_t, t):
    """q(x_{t−1} | x_t, x0) → (mean, variance, log_variance_clipped), each shaped like x_t."""
    x0, x_t = _f32(x0), _f32(x_t)
    mean = (extract(sched.posterior_mean_coef1, t, x_t) * x0
            + extract(sched.posterior_mean_coef2, t, x_t) * x_t)
    var = jnp.broadcast_to(extract(sched.posterior_variance, t, x_t), x_t.shape)
    logvar = jnp.broadcast_to(extract(sched.posterior_log_variance_clipped, t, x_t), x_t.shape)
    return mean, var, logvar


def eps_to_x0(sched: Schedule, x_t, t, eps):
    """x0 = x_t/√ᾱ − √(1/ᾱ − 1) ε."""
    x_t, eps = _f32(x_t), _f32(eps)
    return (extract(sched.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - extract(sched.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)


def x0_to_eps(sched: Schedule, x_t, t, x0):
    """ε = (x_t/√ᾱ − x0) / √(1/ᾱ − 1)."""
    x_t, x0 = _f32(x_t), _f32(x0)
    return ((extract(sched.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0)
            / extract(sched.sqrt_recipm1_alphas_cumprod, t, x_t))


def v_target(sched: Schedule, x0, eps, t):
    """v = √ᾱ ε − √(1−ᾱ) x0 (Salimans & Ho velocity)."""
    x0, eps = _f32(x0), _f32(eps)
    return (extract(sched.sqrt_alphas_cumprod, t, x0) * eps
            - extract(sched.sqrt_one_minus_alphas_cumprod, t, x0) * x0)


def v_to_x0(sched: Schedule, x_t, t, v):
    """x0 = √ᾱ x_t − √(1−ᾱ) v."""
    x_t, v = _f32(x_t), _f32(v)
    return (extract(sched.sqrt_alphas_cumprod, t, x_t) * x_t
            - extract(sched.sqrt_one_minus_alphas_cumprod, t, x_t) * v)


def v_to_eps(sched: Schedule, x_t, t, v):
    """ε = √(1−ᾱ) x_t + √ᾱ v."""
    x_t, v = _f32(x_t), _f32(v)
    return (extract(sched.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
            + extract(sched.sqrt_alphas_cumprod, t, x_t) * v)


def to_x0_eps(sched: Schedule, out, x_t, t, predict: str):
    """Model prediction `out` (shaped like x_t) of kind predict → (x0, ε)."""
    check_predict(predict)
    out = _f32(out)
    if predict == "eps":
        return eps_to_x0(sched, x_t, t, out), out
    if predict == "x0":
        return out, x0_to_eps(sched, x_t, t, out)
    return v_to_x0(sched, x_t, t, out), v_to_eps(sched, x_t, t, out)


def split_output(model_output, x_t, learned: bool):
    """(prediction, variance_values or None): a learned-variance output has 2× channels."""
    out = _f32(model_output)
    channels = x_t.shape[-1]
    want = 2 * channels if learned else channels
    if out.shape[-1] != want:
        raise ValueError(f"model output has {out.shape[-1]} channels on its last axis; expected "
                         f"{want} for {channels}-channel inputs "
                         f"({'learned' if learned else 'fixed'} variance)")
    if learned:
        return out[..., :channels], out[..., channels:]
    return out, None


def dynamic_threshold_x0(x0, percentile: float, floor: float = 1.0):
    """Imagen dynamic thresholding: s = max(floor, quantile_p(|x0|)) per sample, x0 ← clip(x0, ±s)·floor/s."""
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"dynamic_threshold is a percentile in (0, 1] (e.g. 0.995), got "
                         f"{percentile!r}")
    flat = jnp.abs(x0.reshape(x0.shape[0], -1))
    s = jnp.maximum(jnp.quantile(flat, percentile, axis=1), floor)
    s = s.reshape((-1,) + (1,) * (x0.ndim - 1))
    return jnp.clip(x0, -s, s) * (floor / s)


def process_x0(x0, *, clip_denoised: bool = True, clip_range: float = 1.0,
               dynamic_threshold: float | None = None):
    """Clamp a predicted x0: dynamic thresholding if given, else clip to ±clip_range if asked."""
    if dynamic_threshold is not None:
        return dynamic_threshold_x0(x0, dynamic_threshold, clip_range)
    if clip_denoised:
        return jnp.clip(x0, -clip_range, clip_range)
    return x0


def predict_x0_eps(sched: Schedule, model_output, x_t, t, *, predict: str, learned: bool = False,
                   clip_denoised: bool = True, clip_range: float = 1.0,
                   dynamic_threshold: float | None = None):
    """(x0, ε, variance_values) from a raw model output; ε is recomputed from x0 if x0 was clamped."""
    pred, var_values = split_output(model_output, x_t, learned)
    x0, eps = to_x0_eps(sched, pred, x_t, t, predict)
    if clip_denoised or dynamic_threshold is not None:
        x0 = process_x0(x0, clip_denoised=clip_denoised, clip_range=clip_range,
                        dynamic_threshold=dynamic_threshold)
        eps = x0_to_eps(sched, x_t, t, x0)
    return x0, eps, var_values


def p_mean_variance(sched: Schedule, model_output, x_t, t, *, predict: str, variance: str,
                    clip_denoised: bool = True, clip_range: float = 1.0,
                    dynamic_threshold: float | None = None) -> dict:
    """Reverse step p(x_{t−1} | x_t) from a model output.

    model_output: [B, ..., C] (or [B, ..., 2C] for variance='learned_range', whose second half
    v ∈ [−1, 1] gives log σ² = ((v+1)/2)·log β + (1 − (v+1)/2)·log β̃).
    variance: 'fixed_small' → β̃ (clipped log at t=0), 'fixed_large' → β with β̃_1 at t=0.
    Returns dict(mean, variance, log_variance, pred_x0, pred_eps), each shaped like x_t.
    """
    check_predict(predict)
    check_variance(variance)
    x_t = _f32(x_t)
    learned = variance == "learned_range"
    x0, eps, v = predict_x0_eps(sched, model_output, x_t, t, predict=predict, learned=learned,
                                clip_denoised=clip_denoised, clip_range=clip_range,
                                dynamic_threshold=dynamic_threshold)
    if variance == "fixed_small":
        log_var = extract(sched.posterior_log_variance_clipped, t, x_t)
    elif variance == "fixed_large":
        large = jnp.concatenate([sched.posterior_variance[1:2], sched.betas[1:]])
        if sched.num_steps == 1:
            large = sched.betas
        log_var = extract(jnp.log(large), t, x_t)
    else:
        min_log = extract(sched.posterior_log_variance_clipped, t, x_t)
        max_log = extract(jnp.log(sched.betas), t, x_t)
        frac = (v + 1.0) / 2.0
        log_var = frac * max_log + (1.0 - frac) * min_log
    log_var = jnp.broadcast_to(log_var, x_t.shape)
    mean, _, _ = q_posterior(sched, x0, x_t, t)
    return dict(mean=mean, variance=jnp.exp(log_var), log_variance=log_var, pred_x0=x0,
                pred_eps=eps)

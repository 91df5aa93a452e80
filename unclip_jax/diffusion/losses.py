"""Diffusion training losses and the variational bound.

`training_losses` is the per-example objective used by every diffusion stage: MSE on the
model's target (ε, x0 or v), plus, for a learned variance, the Improved DDPM hybrid term
λ·T·L_t where L_t is the VLB term at step t in bits/dim computed with a stop-gradient on
the mean prediction (so it trains only the variance). With λ = 0.001 and T = 1000 this is
the paper's L_simple + λ·L_vlb. `vlb_bits_per_dim` evaluates the full bound.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr, ndtr

from unclip_jax.diffusion import gaussian as G
from unclip_jax.diffusion.schedules import Schedule

LOSSES = ("mse", "hybrid")
_LOG2 = math.log(2.0)


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def discretized_gaussian_log_likelihood(x, means, log_scales, num_bins: int = 256):
    """log P(x) elementwise (nats) of data x ∈ [−1, 1] quantised into `num_bins` bins.

    The probability of a bin is the mass of N(means, exp(log_scales)²) over it; the edge bins
    extend to ±∞. log_scales is the log standard deviation.
    """
    half_bin = 1.0 / (num_bins - 1)
    x, means = jnp.asarray(x, jnp.float32), jnp.asarray(means, jnp.float32)
    inv_std = jnp.exp(-log_scales)
    upper = inv_std * (x - means + half_bin)
    lower = inv_std * (x - means - half_bin)
    log_cdf_upper = log_ndtr(upper)                 # log P(X ≤ upper)
    log_sf_lower = log_ndtr(-lower)                 # log P(X > lower)
    mass = jnp.maximum(ndtr(upper) - ndtr(lower), 1e-12)
    edge = 1.0 - half_bin
    return jnp.where(x < -edge, log_cdf_upper,
                     jnp.where(x > edge, log_sf_lower, jnp.log(mass)))


def _mean_over_data(x):
    """[B, ...] → [B]: mean over all but the batch axis."""
    return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def vlb_terms(sched: Schedule, x0, x_t, t, model_output, *, predict: str, variance: str):
    """L_t in bits/dim [B]: KL(q(x_{t−1}|x_t,x0) ‖ p(x_{t−1}|x_t)) for t>0, decoder NLL at t=0."""
    true_mean, _, true_logvar = G.q_posterior(sched, x0, x_t, t)
    out = G.p_mean_variance(sched, model_output, x_t, t, predict=predict, variance=variance,
                            clip_denoised=False)
    kl = _mean_over_data(normal_kl(true_mean, true_logvar, out["mean"], out["log_variance"]))
    nll = -_mean_over_data(discretized_gaussian_log_likelihood(
        x0, out["mean"], 0.5 * out["log_variance"]))
    return jnp.where(jnp.asarray(t) == 0, nll, kl) / _LOG2


def prior_bits_per_dim(sched: Schedule, x0):
    """KL(q(x_{N−1} | x0) ‖ N(0, I)) in bits/dim [B]."""
    t = jnp.full((x0.shape[0],), sched.num_steps - 1, jnp.int32)
    x0 = jnp.asarray(x0, jnp.float32)
    mean = G.extract(sched.sqrt_alphas_cumprod, t, x0) * x0
    logvar = jnp.log(jnp.broadcast_to(
        1.0 - G.extract(sched.alphas_cumprod, t, x0), x0.shape))
    return _mean_over_data(normal_kl(mean, logvar, 0.0, 0.0)) / _LOG2


def _target(sched, x0, noise, t, predict):
    if predict == "eps":
        return jnp.asarray(noise, jnp.float32)
    if predict == "x0":
        return jnp.asarray(x0, jnp.float32)
    return G.v_target(sched, x0, noise, t)


def training_losses(sched: Schedule, model_fn: Callable, x0, t, noise, *, predict: str,
                    variance: str, loss: str = "mse", hybrid_lambda: float = 0.001,
                    weight=None) -> dict:
    """Per-example losses [B] for data x0 [B, ...], step indices t [B] and noise ε ~ N(0, I).

    model_fn(x_t, t_model) with t_model = sched.timesteps[t] returns the prediction (2×
    channels for variance='learned_range'). Returns dict(loss, mse[, vlb]) where mse is the
    mean over data dims of (target − prediction)², vlb (learned variance only) is L_t in
    bits/dim with the mean prediction frozen, and loss = mse (+ λ·T·vlb for 'hybrid').
    `weight` (optional, broadcastable to x0, e.g. [B, H, W, 1] from `object_weights`) scales
    each squared error before the mean (the VLB term, which trains only the variance, is not
    weighted); None is weight 1 everywhere.
    """
    G.check_predict(predict)
    G.check_variance(variance)
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
    learned = variance == "learned_range"
    if learned and loss != "hybrid":
        raise ValueError("variance='learned_range' is trained by the VLB term; set loss='hybrid'")
    if loss == "hybrid" and not learned:
        raise ValueError("loss='hybrid' trains a learned variance; set "
                         "variance='learned_range' or use loss='mse'")
    t = jnp.asarray(t, jnp.int32)
    x_t = G.q_sample(sched, x0, t, noise)
    model_output = model_fn(x_t, sched.timesteps[t])
    pred, var_values = G.split_output(model_output, x_t, learned)
    sq = (_target(sched, x0, noise, t, predict) - pred) ** 2
    mse = _mean_over_data(sq if weight is None else sq * weight)
    terms = dict(mse=mse, loss=mse)
    if learned:
        frozen = jnp.concatenate([jax.lax.stop_gradient(pred), var_values], axis=-1)
        vlb = vlb_terms(sched, x0, x_t, t, frozen, predict=predict, variance=variance)
        terms["vlb"] = vlb
        terms["loss"] = mse + hybrid_lambda * sched.num_steps * vlb
    return terms


def vlb_bits_per_dim(sched: Schedule, model_fn: Callable, x0, key, *, predict: str,
                     variance: str) -> dict:
    """Full variational bound of x0 [B, ...] in bits/dim, one model call per step.

    Returns dict(total [B], prior [B], terms [N, B]) with total = Σ_t L_t + prior; x_t for
    each step is drawn with noise from fold_in(key, t).
    """
    G.check_predict(predict)
    G.check_variance(variance)
    x0 = jnp.asarray(x0, jnp.float32)
    b = x0.shape[0]

    def step(carry, i):
        t = jnp.full((b,), i, jnp.int32)
        noise = jax.random.normal(jax.random.fold_in(key, i), x0.shape, jnp.float32)
        x_t = G.q_sample(sched, x0, t, noise)
        out = model_fn(x_t, sched.timesteps[t])
        return carry, vlb_terms(sched, x0, x_t, t, out, predict=predict, variance=variance)

    _, terms = jax.lax.scan(step, None, jnp.arange(sched.num_steps))
    prior = prior_bits_per_dim(sched, x0)
    return dict(total=terms.sum(0) + prior, prior=prior, terms=terms)

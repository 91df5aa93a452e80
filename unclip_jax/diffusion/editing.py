"""Editing samplers: SDEdit (start part-way from a noised image) and RePaint inpainting (the
known region replaced by the forward-noised original after every step, with optional
resampling jumps), as one `lax.scan` over a static list of operations.

Levels: level L ∈ {0, …, N} of an N-step schedule is the noise of step index L−1 (level N is
pure noise, level 0 clean data): ᾱ(L) = sched.alphas_cumprod[L−1], ᾱ(0) = 1. A down step
at level L (step index s = L−1) is the ordinary sampler step x_L → x_{L−1}; an up step from
level L to L+1 (step index s = L) renoises with q(x_{L+1} | x_L) = N(√α_s x_L, (1−α_s) I),
α_s = ᾱ(L+1)/ᾱ(L).

Masks are float [B, H, W, 1] (or broadcastable) in [0, 1]: 1 = generate (repaint), 0 = keep
the known image; values between blend (soft edges).

Randomness (key = the stage key of `ddpm_sample`/`ddim_sample`): the start noise is
fold_in(key, N) and the first visit of step s uses fold_in(key, s) — so with no mask, no
jumps and start = N the result is `ddpm_sample`/`ddim_sample`'s for the same key and x_T.
Repeated visits, up steps and the known region's noise draw from their own fold_in streams.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.diffusion import samplers
from unclip_jax.diffusion.schedules import Schedule

DOWN, UP = 1, 2          # operation codes (0 = skip, for levels above the start)


def repaint_ops(num_steps: int, jump_length: int = 1, resamplings: int = 1) -> np.ndarray:
    """RePaint's jump schedule as int32 [M, 3] rows (step index s, DOWN|UP, visit number).

    Walks from level N down to 0; each time it reaches a level L > 0 that is a multiple of
    `jump_length` (and L + jump_length ≤ N) it jumps back up `jump_length` levels, at most
    `resamplings` − 1 times per such level, and walks down again. resamplings = 1 is plain
    sampling (N down steps); otherwise about resamplings·N down steps in all.
    """
    n, j, r = int(num_steps), int(jump_length), int(resamplings)
    if n < 1 or j < 1 or r < 1:
        raise ValueError(f"num_steps, jump_length and resamplings must be >= 1, got "
                         f"{num_steps}, {jump_length}, {resamplings}")
    ops, visits, jumps = [], {}, {}
    level = n

    def op(s, kind):
        v = visits.get((s, kind), 0)
        visits[(s, kind)] = v + 1
        ops.append((s, kind, v))

    while level > 0:
        op(level - 1, DOWN)
        level -= 1
        if (r > 1 and level > 0 and level % j == 0 and level + j <= n
                and jumps.get(level, 0) < r - 1):
            jumps[level] = jumps.get(level, 0) + 1
            for _ in range(j):
                op(level, UP)
                level += 1
    return np.asarray(ops, np.int32).reshape(-1, 3)


def level_alpha_bar(sched: Schedule, level):
    """ᾱ at `level` (int, may be traced): alphas_cumprod[level−1], 1 at level 0."""
    abar = jnp.concatenate([jnp.ones((1,), jnp.float32),
                            jnp.asarray(sched.alphas_cumprod, jnp.float32)])
    return abar[level]


def noise_to_level(sched: Schedule, x0, level, noise):
    """q(x_level | x0): √ᾱ x0 + √(1−ᾱ) ε with ᾱ = `level_alpha_bar(level)`; x0 at level 0."""
    abar = level_alpha_bar(sched, level)
    return jnp.sqrt(abar) * jnp.asarray(x0, jnp.float32) + jnp.sqrt(1.0 - abar) * noise


def renoise_up(sched: Schedule, x, s, noise):
    """One up step from level s to s+1: √α_s x + √(1−α_s) ε, α_s = ᾱ(s+1)/ᾱ(s)."""
    alpha = level_alpha_bar(sched, s + 1) / level_alpha_bar(sched, s)
    return jnp.sqrt(alpha) * x + jnp.sqrt(1.0 - alpha) * noise


def blend_known(x, known, mask):
    """mask·x + (1 − mask)·known: generated where mask = 1, the known image where 0."""
    mask = jnp.asarray(mask, jnp.float32)
    return mask * x + (1.0 - mask) * known


def start_state(sched: Schedule, x0, start, noise):
    """The sampler's state at level `start` (traced int in [0, N]): the noise itself at
    start = N (exactly plain sampling's x_T), else x0 noised to that level."""
    return jnp.where(start >= sched.num_steps, noise, noise_to_level(sched, x0, start, noise))


def edit_sample(model_fn: Callable, sched: Schedule, x0, key, *, predict: str,
                variance: str | None, ddim: bool, eta: float = 0.0, clip_denoised: bool = True,
                clip_range: float = 1.0, start=None, mask=None, ops=None, x_T=None):
    """Sample with the model while keeping (part of) a known image x0 [B, ...] in [-1, 1].

    start: level to start from (int, may be traced; default N). SDEdit: x0 noised to level
      `start`, then the ordinary steps start−1 … 0 (start = 0 returns x0 exactly; start = N
      is plain sampling from x_T, the noise fold_in(key, N) unless given).
    mask: None (nothing kept beyond the start) or [B, ..., 1|C] in [0, 1], 1 = generate.
      RePaint: after every down step to level L the known region is replaced by x0 noised
      to level L with fresh noise (x0 itself at level 0), so the final x equals x0 wherever
      mask = 0. The start state is blended the same way.
    ops: `repaint_ops(N, jump_length, resamplings)` (default: no jumps). Operations at
      levels above `start` are skipped (lax.switch on an unbatched index).
    The steps are `samplers.ddim_step` (ddim, η) or `samplers.ddpm_step`. Returns x [B, ...].
    """
    n = sched.num_steps
    x0 = jnp.asarray(x0, jnp.float32)
    start = jnp.asarray(n if start is None else start, jnp.int32)
    ops = jnp.asarray(repaint_ops(n) if ops is None else ops, jnp.int32)
    noise0 = (jax.random.normal(jax.random.fold_in(key, n), x0.shape, jnp.float32)
              if x_T is None else jnp.asarray(x_T, jnp.float32))
    streams = {k: jax.random.fold_in(key, n + 1 + k) for k in range(4)}

    def normal(stream, s, v):
        k = jax.random.fold_in(jax.random.fold_in(streams[stream], s), v)
        return jax.random.normal(k, x0.shape, jnp.float32)

    def keep(x, level, s, v):
        if mask is None:
            return x
        return blend_known(x, noise_to_level(sched, x0, level, normal(0, s, v)), mask)

    def down(x, s, v):
        # first visit: the plain sampler's key; later visits: their own stream (the step
        # folds in s itself)
        k = jax.random.wrap_key_data(jnp.where(
            v == 0, jax.random.key_data(key),
            jax.random.key_data(jax.random.fold_in(streams[1], v))),
            impl=jax.random.key_impl(key))
        kw = dict(predict=predict, clip_denoised=clip_denoised, clip_range=clip_range)
        if ddim:
            x_new = samplers.ddim_step(model_fn, sched, x, s, k, eta=eta, variance=variance,
                                       **kw)
        else:
            x_new = samplers.ddpm_step(model_fn, sched, x, s, k, variance=variance, **kw)
        return keep(x_new, s, s, v)

    def up(x, s, v):
        return renoise_up(sched, x, s, normal(2, s, v))

    def body(x, op):
        s, kind, v = op[0], op[1], op[2]
        branch = jnp.where(s < start, kind, 0)
        x = jax.lax.switch(branch, [lambda x: x, lambda x: down(x, s, v),
                                    lambda x: up(x, s, v)], x)
        return x, None

    x = start_state(sched, x0, start, noise0)
    x = keep(x, start, n + 1, 0)
    x, _ = jax.lax.scan(body, x, ops)
    return x


def strength_to_start(strength: float, num_steps: int) -> int:
    """SDEdit's start level for strength ∈ [0, 1]: round(strength · N) (0 → keep the input,
    1 → plain sampling from noise)."""
    return int(round(float(strength) * int(num_steps)))


def mix_embeddings(z, weights):
    """Weighted combination on the sphere of embeddings z [K, D] with weights [K] (any real
    numbers with a non-zero sum; they are divided by it) → [D].

    Direction: the normalised weighted sum of the unit vectors, d = Σ w_k ẑ_k / ‖Σ w_k ẑ_k‖;
    norm: the weighted mean of the norms Σ w_k ‖z_k‖ (absolute value). Why this and not a
    repeated slerp: it is symmetric in the inputs (a chain of pairwise slerps depends on the
    order), closed-form, exact for one-hot weights, and for two inputs it moves along the
    same great-circle arc as slerp (only the speed along the arc differs), with the angle to
    ẑ_k shrinking monotonically as w_k grows. It is the first-order (small-spread)
    approximation of the weighted spherical (Karcher) mean. Float32.
    """
    z = jnp.asarray(z, jnp.float32)
    w = jnp.asarray(weights, jnp.float32)
    w = w / jnp.sum(w)
    norms = jnp.linalg.norm(z, axis=-1)
    unit = z / jnp.maximum(norms, 1e-12)[:, None]
    d = jnp.sum(w[:, None] * unit, axis=0)
    d = d / jnp.maximum(jnp.linalg.norm(d), 1e-12)
    return d * jnp.abs(jnp.sum(w * norms))

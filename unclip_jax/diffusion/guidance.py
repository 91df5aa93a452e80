"""Classifier-free guidance as one batched model call per step (GLIDE / Ho & Salimans)."""
from __future__ import annotations

import numbers
from typing import Callable

import jax.numpy as jnp

from unclip_jax.diffusion.gaussian import check_predict


def check_guidance_scale(scale) -> None:
    """Reject a negative Python-number scale (traced scales are not checked)."""
    if isinstance(scale, numbers.Number) and not scale >= 0:
        raise ValueError(f"guidance scale must be >= 0 (0 = unconditional, 1 = conditional, "
                         f">1 = stronger guidance), got {scale!r}")


def classifier_free_guidance(model_fn2: Callable, scale, *, predict: str = "eps",
                             learned_variance: bool = False) -> Callable:
    """Wrap a doubled-batch model into a guided model_fn(x_t [B, ...], t [B]).

    model_fn2(x [2B, ...], t [2B]) sees the batch twice — rows [:B] conditional, rows [B:]
    unconditional (the caller's closure holds conditioning concatenated the same way) — and
    is called once. The guided prediction (ε, x0 or v, on the first C output channels) is
    uncond + scale·(cond − uncond); a learned-variance half (channels C:) comes from the
    conditional rows. scale may be a traced array.
    """
    check_predict(predict)
    check_guidance_scale(scale)

    def model_fn(x_t, t):
        b = x_t.shape[0]
        out = model_fn2(jnp.concatenate([x_t, x_t], axis=0), jnp.concatenate([t, t], axis=0))
        out = jnp.asarray(out, jnp.float32)
        cond, uncond = out[:b], out[b:]
        if learned_variance:
            c = x_t.shape[-1]
            guided = uncond[..., :c] + scale * (cond[..., :c] - uncond[..., :c])
            return jnp.concatenate([guided, cond[..., c:]], axis=-1)
        return uncond + scale * (cond - uncond)

    return model_fn

"""The object region of scenes on a flat background, and the per-pixel loss weight built on it.

On `unclip_shapes` scenes (and any image whose background is one colour) the objects cover a
few percent of the pixels, so a loss averaged over the image is dominated by the flat
background. `object_region` finds the objects — pixels farther than a threshold from the
background colour, which is the median of the border pixels — grown by one pixel so the edge
where a shape's corners are drawn is inside. `object_weights` turns it into a per-pixel weight
for the diffusion loss (`training_losses(weight=...)`, `train.object_weight`).

Pure functions of arrays: jax.numpy and numpy inputs both work (the evaluation's
`eval.conditioning.object_mask` calls `object_region` on uint8 renders cast to float).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def object_region(images, threshold: float):
    """images [B, H, W, C] (any scale) → bool [B, H, W]: pixels farther than `threshold` (same
    units as the images, in any channel) from the background colour (the per-image median of
    the border pixels), grown by one pixel in each direction (3×3 dilation)."""
    x = jnp.asarray(images, jnp.float32)
    border = jnp.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1)   # [B, 4S, C]
    bg = jnp.median(border, axis=1)[:, None, None, :]
    m = jnp.any(jnp.abs(x - bg) > threshold, axis=-1)
    return jax.lax.reduce_window(m, False, jax.lax.bitwise_or, (1, 3, 3), (1, 1, 1), "SAME")


def object_weights(x0, weight: float, threshold: float = 8 / 127.5):
    """x0 [B, H, W, C] in [−1, 1] → float32 [B, H, W, 1]: `weight` on the object region
    (`object_region`; the default threshold is 8 of 255 levels), 1 elsewhere."""
    region = object_region(x0, threshold)
    return jnp.where(region, jnp.float32(weight), jnp.float32(1.0))[..., None]

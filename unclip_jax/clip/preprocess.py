"""CLIP image preprocessing, jittable: any NHWC image batch → CLIP-normalised [B, S, S, 3].

Steps (as in CLIP's reference preprocessing, done with `jax.image.resize`):
  1. scale to [0, 1]: uint8 inputs are divided by 255, float inputs are taken to be in [-1, 1]
     (the project's image convention) and mapped by (x + 1) / 2;
  2. channels: 1 (grey) is replicated to RGB; 4 (RGBA) drops the alpha channel — the same as
     PIL's `Image.convert("RGB")` that CLIP's own preprocessing uses, so embeddings match it;
     any other count raises UserError;
  3. resize so the shortest side is S (bicubic, antialiased when shrinking), clamp to [0, 1]
     (as an 8-bit resize would), centre-crop S×S;
  4. normalise with CLIP's per-channel mean / std.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from unclip_jax.errors import UserError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_unit_rgb(images):
    """uint8 [0, 255] or float [-1, 1] images [..., H, W, C] with C in {1, 3, 4} →
    float32 RGB in [0, 1] [..., H, W, 3]."""
    images = jnp.asarray(images)
    c = images.shape[-1]
    if c not in (1, 3, 4):
        raise UserError(f"images have {c} channels (shape {images.shape}); CLIP needs NHWC "
                        "images with 3 (RGB), 1 (grey) or 4 (RGBA) channels in the last axis")
    if images.dtype == jnp.uint8:
        x = images.astype(jnp.float32) / 255.0
    elif jnp.issubdtype(images.dtype, jnp.floating):
        x = (images.astype(jnp.float32) + 1.0) / 2.0
    else:
        raise UserError(f"images of dtype {images.dtype}: pass uint8 in [0, 255] or float "
                        "in [-1, 1]")
    if c == 1:
        x = jnp.repeat(x, 3, axis=-1)
    elif c == 4:
        x = x[..., :3]
    return x


def resize_center_crop(x, size: int):
    """[B, H, W, C] float → [B, size, size, C]: shortest side to `size` (bicubic), centre crop."""
    _, h, w, c = x.shape
    if h <= w:   # long side scaled and truncated, as Hugging Face's CLIPImageProcessor does
        nh, nw = size, max(size, int(size * w / h))
    else:
        nh, nw = max(size, int(size * h / w)), size
    if (nh, nw) != (h, w):
        x = jax.image.resize(x, (x.shape[0], nh, nw, c), method="bicubic", antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, top:top + size, left:left + size, :]


def normalize_image(x):
    """[..., 3] RGB in [0, 1] → (x − CLIP_MEAN) / CLIP_STD, float32."""
    return (x - jnp.asarray(CLIP_MEAN, jnp.float32)) / jnp.asarray(CLIP_STD, jnp.float32)


def preprocess(images, size: int):
    """images [B, H, W, C] or [H, W, C] (uint8 [0, 255] or float [-1, 1], C in {1, 3, 4})
    → CLIP-normalised float32 [B, size, size, 3]. Jittable (shapes are static)."""
    images = jnp.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise UserError(f"images must be NHWC [batch, height, width, channels], got shape "
                        f"{images.shape}")
    x = to_unit_rgb(images)
    x = jnp.clip(resize_center_crop(x, size), 0.0, 1.0)
    return normalize_image(x)

"""Inpainting masks: read, check and resize to each stage.

A mask is grayscale of the image's own size: white (1) = repaint, black (0) = keep, gray =
blend (soft edges). Arrays are float32 in [0, 1].
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from unclip_jax.errors import UserError

MAX_GRAY_FRACTION = 0.25     # a mask with more gray pixels than this is not a mask


def mask_array(mask, where: str = "mask") -> np.ndarray:
    """A mask (PIL image, or array [H, W] / [H, W, 1|3], uint8 0..255 or float/bool 0..1)
    → float32 [H, W] in [0, 1], 1 = repaint. UserError for colour or non-grayscale input."""
    if isinstance(mask, Image.Image):
        if mask.mode in ("1", "L"):
            mask = np.asarray(mask.convert("L"), np.uint8)
        elif mask.mode in ("RGB", "P"):
            mask = np.asarray(mask.convert("RGB"), np.uint8)
        elif mask.mode.startswith("I") or mask.mode == "F":
            arr = np.asarray(mask, np.float64)
            mask = (arr / (65535.0 if arr.max() > 255 else 255.0)).astype(np.float32)
        else:
            raise UserError(f"{where} has mode {mask.mode} ({len(mask.getbands())} channels); "
                            "give a grayscale mask: white = repaint, black = keep")
    a = np.asarray(mask)
    if a.ndim == 3 and a.shape[-1] in (1, 3):
        if a.shape[-1] == 3 and np.ptp(a.astype(np.float32), axis=-1).max() > 2 * (
                1 if a.dtype == np.uint8 else 1 / 255):
            raise UserError(f"{where} has colours (its 3 channels differ); give a grayscale "
                            "mask: white = repaint, black = keep")
        a = a[..., 0]
    if a.ndim != 2:
        raise UserError(f"{where} must be [H, W] or [H, W, 1|3] (one grayscale channel); got "
                        f"shape {a.shape}")
    a = a.astype(np.float32) / (255.0 if a.dtype == np.uint8 else 1.0)
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise UserError(f"{where} values must lie in [0, 1] (or 0..255 as uint8)")
    return a


def check_mask(mask: np.ndarray, image_hw: tuple[int, int], where: str = "mask") -> np.ndarray:
    """Reject a mask [H, W] that does not fit the image or is not a mask: another size, more
    than MAX_GRAY_FRACTION gray pixels (soft edges are fine), nothing or everything to
    repaint. Returns it unchanged."""
    if mask.shape != tuple(image_hw):
        raise UserError(f"{where} is {mask.shape[1]}×{mask.shape[0]} but the image is "
                        f"{image_hw[1]}×{image_hw[0]}; give a mask of the image's size "
                        "(white = repaint, black = keep)")
    gray = float(np.mean((mask > 0.05) & (mask < 0.95)))
    if gray > MAX_GRAY_FRACTION:
        raise UserError(f"{where} is not black and white: {gray:.0%} of its pixels are gray; "
                        "paint the region to repaint white and the rest black (soft edges "
                        "are fine; --feather softens them)")
    if not (mask >= 0.5).any():
        raise UserError(f"{where} is all black: nothing to repaint; paint the region to "
                        "change white")
    if (mask >= 0.5).all():
        raise UserError(f"{where} is all white: the whole image would be repainted; use "
                        "`unclip-jax sample` (or img2img), or keep part of the mask black")
    return mask


def stage_mask(mask: np.ndarray, size: int, feather: float = 0.0) -> np.ndarray:
    """Mask [H, W] in [0, 1] → [size, size, 1]: Gaussian feathering of σ = `feather` pixels
    (of the mask's own resolution), the centre square crop the images get, and an
    area-weighted (antialiased bilinear) resize, so edges come out soft at a coarse stage."""
    m = np.asarray(mask, np.float32)
    if feather > 0:
        from scipy.ndimage import gaussian_filter
        m = gaussian_filter(m, float(feather), mode="nearest")
    h, w = m.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    img = Image.fromarray(m[top:top + s, left:left + s], "F")
    if s != size:
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(img, np.float32), 0.0, 1.0)[..., None]

"""Upsampler fidelity on real images, beside bicubic interpolation of the same input.

For each upsampler stage of a loaded `UnCLIP` (input s px = the previous stage's output size,
output S px): the split's first
`num_images` single-object scenes are read at S px (the reference) and at s px (area-resized
from the stored image, like the real images the evaluation compares against), the stage
upsamples the s px images, and the PSNR of its output against the reference is reported beside
the PSNR of a bicubic resize of the same input. Stages whose config marks them as running only
the last steps of the previous stage's loop (Karlo's super_res_last) are skipped: they have no
input of their own.

PSNR is in dB on 8-bit images: 10 · log10(255² / MSE), the MSE over pixels and channels of one
image, floored at (0.1)² so identical images give a finite 68.1 dB.
"""
from __future__ import annotations

import jax
import numpy as np

from unclip_jax.eval import metrics
from unclip_jax.eval.data import load_examples
from unclip_jax.sample.images import from_uint8, to_uint8
from unclip_jax.stages import UPSAMPLERS

MSE_FLOOR = 0.01      # (0.1 grey level)²


def psnr(images, reference) -> np.ndarray:
    """Per-image PSNR in dB of uint8 images [B, H, W, C] against uint8 reference [B, H, W, C]."""
    a = np.asarray(images, np.float64)
    b = np.asarray(reference, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"psnr needs equal shapes, got {a.shape} and {b.shape}")
    mse = np.mean((a - b) ** 2, axis=tuple(range(1, a.ndim)))
    return 10.0 * np.log10(255.0 ** 2 / np.maximum(mse, MSE_FLOOR))


def bicubic(low_res, size: int) -> np.ndarray:
    """uint8 [B, s, s, 3] → uint8 [B, size, size, 3] by bicubic interpolation (float32)."""
    x = from_uint8(low_res)
    up = jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), "bicubic")
    return to_uint8(np.asarray(up))


def upsampler_scores(pipe, data_dir: str, split: str, *, num_images: int, key,
                     dataset: str | None = None, steps=None, chunk: int = 64,
                     num_resamples: int = 1000) -> dict:
    """{stage: {'input_size', 'output_size', 'psnr', 'psnr_bicubic'}} with bootstrap intervals
    (`metrics.bootstrap_ci`) for every upsampler in `pipe` (see the module docstring).
    steps: respacing for every upsampler (None: each stage's config)."""
    out = {}
    for i, stage in enumerate(UPSAMPLERS):
        if stage not in pipe.stages or pipe.is_final_only(stage):
            continue
        size = pipe.image_size(stage)
        low = pipe.image_size(UPSAMPLERS[i - 1] if i else "decoder")   # the chain's input
        hi = load_examples(data_dir, split, image_size=size, dataset=dataset,
                           limit=num_images)["image"]
        lo = load_examples(data_dir, split, image_size=low, dataset=dataset,
                           limit=num_images)["image"]
        k = jax.random.fold_in(key, 100 + i)
        ups = []
        for c, start in enumerate(range(0, len(lo), chunk)):
            x = pipe.upsample(stage, from_uint8(lo[start:start + chunk]),
                              jax.random.fold_in(k, c), steps=steps)
            ups.append(to_uint8(x))
        model = np.concatenate(ups)
        ck = jax.random.fold_in(k, 999)
        out[stage] = {
            "input_size": low, "output_size": size,
            "psnr": metrics.bootstrap_ci(psnr(model, hi), ck, num_resamples=num_resamples),
            "psnr_bicubic": metrics.bootstrap_ci(psnr(bicubic(lo, size), hi), ck,
                                                 num_resamples=num_resamples),
        }
    return out

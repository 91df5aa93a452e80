"""Mixing on a loaded `UnCLIP`: decode a weighted combination of images and prompts.

Image embeddings come from CLIP, prompt embeddings through the prior (the k-th prompt with
example key k); `unclip_jax.diffusion.editing.mix_embeddings` combines them on the sphere
(normalised weighted sum); the decoder sees no caption, as for variations.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from unclip_jax.diffusion import editing as edit_math
from unclip_jax.errors import UserError
from unclip_jax.sample import chain
from unclip_jax.sample.checks import as_key, check_count, check_eta
from unclip_jax.sample.images import image_to_float, read_image
from unclip_jax.sample.prompts import prompt_conditioning

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class Prompt(str):
    """A string that `mix` treats as a prompt even when it looks like a file name."""


def split_items(items) -> tuple[list, list[str]]:
    """Mix inputs → (items, kinds): a string is an image when it names an existing file or
    ends in an image suffix (.png, .jpg, ...), otherwise a prompt (a `Prompt` always is);
    PIL images and arrays are images."""
    items = list(items) if not isinstance(items, (str, Image.Image)) else [items]
    if not items:
        raise UserError("nothing to mix; give images and/or prompts")
    kinds = []
    for it in items:
        if isinstance(it, Prompt):
            kinds.append("prompt")
        elif isinstance(it, (str, os.PathLike)):
            s = os.fspath(it)
            is_image = os.path.isfile(s) or s.lower().endswith(IMAGE_SUFFIXES)
            if not is_image and not s.strip():
                raise UserError("an empty prompt among the inputs to mix; give it some text")
            kinds.append("image" if is_image else "prompt")
        else:
            kinds.append("image")
    return items, kinds


def check_weights(weights, count: int) -> np.ndarray:
    """Weights [count] (default: equal), finite, with a non-zero sum; UserError otherwise."""
    if weights is None:
        return np.full((count,), 1.0 / count, np.float32)
    try:
        w = np.asarray([float(x) for x in weights], np.float32)
    except (TypeError, ValueError):
        raise UserError(f"weights {weights!r} must be numbers") from None
    if w.shape != (count,):
        raise UserError(f"{w.size} weights for {count} inputs; give one weight per image or "
                        "prompt")
    if not np.isfinite(w).all():
        raise UserError("weights must be finite numbers")
    if abs(float(w.sum())) < 1e-6:
        raise UserError(f"the weights sum to {float(w.sum()):g}; they are divided by their sum, "
                        "so it must not be 0")
    return w


def mix_embedding(pipe, items, weights, key, *, prior_steps=None, prior_guidance=None,
                  prior_best_of=None) -> tuple[np.ndarray, np.ndarray]:
    """→ (z_mix [D], z_inputs [K, D]): images CLIP-encoded, prompts through the prior (the
    k-th prompt with example key k), combined by `diffusion.editing.mix_embeddings`."""
    items, kinds = split_items(items)
    w = check_weights(weights, len(items))
    pipe.require("clip", "decoder")
    z = [None] * len(items)
    img_idx = [i for i, k in enumerate(kinds) if k == "image"]
    txt_idx = [i for i, k in enumerate(kinds) if k == "prompt"]
    if img_idx:
        size = pipe.stages["clip"].model.image_size
        imgs = np.stack([image_to_float(read_image(items[i]), size) for i in img_idx])
    if txt_idx:
        text, z_t, _ = prompt_conditioning(pipe, [items[i] for i in txt_idx], key,
                                           prior_steps=prior_steps,
                                           prior_guidance=prior_guidance,
                                           prior_best_of=prior_best_of)
        for j, i in enumerate(txt_idx):
            z[i] = z_t[j]
    if img_idx:
        for j, e in zip(img_idx, pipe.encode_images(imgs)):
            z[j] = e
    z = np.stack(z).astype(np.float32)
    return np.asarray(edit_math.mix_embeddings(z, w)), z


def mix(pipe, items, weights=None, key=0, *, n: int = 1, prior_steps=None, prior_guidance=None,
        prior_best_of=None, decoder_steps=None, decoder_guidance=None, upsampler_steps=None,
        eta: float = 0.0, return_intermediates: bool = False):
    """Decode n images of the weighted mix of images and prompts (`mix_embedding`); the
    decoder sees no caption (as for variations). → uint8 [n, H, W, 3]."""
    n = check_count("n", n)
    check_eta(eta)
    key = as_key(key)
    chain.validate_steps(pipe, decoder_steps, chain.steps_per_upsampler(upsampler_steps))
    pipe.guidance("decoder", decoder_guidance)
    z_mix, z_in = mix_embedding(pipe, items, weights, key, prior_steps=prior_steps,
                                prior_guidance=prior_guidance, prior_best_of=prior_best_of)
    z_rep = np.repeat(z_mix[None], n, axis=0)
    out = chain.decode(pipe, z_rep, key, decoder_steps=decoder_steps,
                       decoder_guidance=decoder_guidance, upsampler_steps=upsampler_steps,
                       eta=eta, upsampler_eta=eta)
    return chain.finish(out, return_intermediates, z_i=z_rep, inputs=z_in)


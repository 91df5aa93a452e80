"""Editing on a loaded `UnCLIP`: inpainting, image-to-image, negative prompts, weighted mixing.

The per-step math is `unclip_jax.diffusion.editing` (SDEdit start, RePaint known-region
replacement and resampling jumps); each stage still runs as ONE compiled program (the
pipeline's `decoder_sample` / `upsample` with an `edit`). `UnCLIP.inpaint`, `.img2img` and
`.mix` are thin wrappers of the functions here.

- inpaint: the known image and the mask are resized to every stage's size; at each step
  of the decoder and of each upsampler the region to keep (mask 0, black) is replaced by
  the original noised to that step's level, the region to repaint (mask 1, white) is
  generated under the prompt's z_i (from the prior) and text. Gray mask values blend.
- img2img (SDEdit): every stage starts from the input (at that stage's size) noised to
  level round(strength·N) and runs the remaining steps under the prompt's z_i; strength 0
  returns the input, 1 is plain generation (the same images `generate` gives).
- negative prompts: guidance's unconditional half of the prior conditions on the negative
  caption, and that of the decoder on the negative caption and its z_i (a prior sample
  of the negative caption with guidance 1, drawn with the positive example's key).
- mix: image embeddings from CLIP, prompt embeddings through the prior, combined with
  `diffusion.editing.mix_embeddings` (normalised weighted sum on the sphere), decoded.

Images NHWC, float in [-1, 1] inside, uint8 out. Masks float in [0, 1], 1 = repaint.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image

from unclip_jax import pipeline_io as io
from unclip_jax.diffusion import editing as edit_math
from unclip_jax.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_GRAY_FRACTION = 0.25     # a mask with more gray pixels than this is not a mask


# --------------------------------------------------------------------------- inputs

def _as_list(x, what: str) -> list:
    """One item (path, PIL image, [H, W(, C)] array) or a sequence / [N, H, W, C] batch."""
    if isinstance(x, (str, os.PathLike, Image.Image)):
        return [x]
    if hasattr(x, "shape"):
        a = np.asarray(x)
        return list(a) if a.ndim == 4 else [a]
    items = list(x)
    if not items:
        raise UserError(f"no {what} given; pass at least one")
    return items


def _read(item, what: str):
    """A path → RGB PIL image (UserError if unreadable); PIL / arrays pass through."""
    if isinstance(item, (str, os.PathLike)):
        return io.to_rgb(io.open_image(os.fspath(item))) if what == "image" else \
            io.open_image(os.fspath(item))
    return item


def _hw(img) -> tuple[int, int]:
    if isinstance(img, Image.Image):
        return img.size[1], img.size[0]
    a = np.asarray(img)
    return int(a.shape[0]), int(a.shape[1])


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


def stage_sizes(pipe) -> dict[str, int]:
    """{stage: image size} of the decoder and every upsampler that runs as its own stage."""
    from unclip_jax.pipeline import UPSAMPLERS
    names = ["decoder"] + [u for u in UPSAMPLERS
                           if u in pipe.stages and not pipe._is_final_only(u)]
    return {s: pipe.image_size(s) for s in names}


def _known(images: list, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    return {s: np.stack([io.image_to_float(im, size) for im in images])
            for s, size in sizes.items()}


def _prompts_for(prompts, count: int) -> list[str]:
    prompts = io.check_prompts(prompts)
    if len(prompts) == 1:
        return prompts * count
    if len(prompts) != count:
        raise UserError(f"{len(prompts)} prompts for {count} images; give one prompt, or one "
                        "per image")
    return prompts


def check_strength(strength) -> float:
    try:
        s = float(strength)
    except (TypeError, ValueError):
        raise UserError(f"strength {strength!r} is not a number; pass a value in [0, 1]") from None
    if not (np.isfinite(s) and 0.0 <= s <= 1.0):
        raise UserError(f"strength {strength} must lie in [0, 1] (0 = the input unchanged, "
                        "1 = plain generation)")
    return s


def _check_jumps(jump_length, resamplings) -> tuple[int, int]:
    from unclip_jax.pipeline import _check_count
    return (_check_count("jump_length", jump_length), _check_count("resamplings", resamplings))


# --------------------------------------------------------------------------- conditioning

def expand_negatives(negative_prompts, prompts: Sequence[str], n: int) -> list[str] | None:
    """None, one string, or one per prompt → one negative per expanded example (prompt-major,
    n per prompt), or None."""
    if negative_prompts is None:
        return None
    negs = [negative_prompts] if isinstance(negative_prompts, str) else list(negative_prompts)
    if len(negs) == 1:
        negs = negs * len(prompts)
    if len(negs) != len(prompts):
        raise UserError(f"{len(negs)} negative prompts for {len(prompts)} prompts; give one "
                        "negative prompt, or one per prompt")
    for i, p in enumerate(negs):
        if not isinstance(p, str) or not p.strip():
            raise UserError(f"negative prompt {i} is empty; give it some text (or leave "
                            "--negative out)")
    return [p for p in negs for _ in range(n)]


def negative_conditioning(pipe, negatives: Sequence[str], key, prior_kw: dict | None) -> dict:
    """What guidance's unconditional half conditions on for each example: `encode_text` of
    its negative prompt plus 'z_i' — a prior sample of the negative prompt with guidance 1
    (its conditional model only) drawn with the example's own key, or (prior_kw None: no
    prior in use) the negative prompt's z_t. With negative = prompt, guidance then gives
    exactly the conditional prediction at both stages."""
    neg = dict(pipe.encode_text(list(negatives)))
    if prior_kw is None:
        neg["z_i"] = neg["embeds"]
    else:
        neg["z_i"] = pipe.prior_sample(neg, key, guidance=1.0, **prior_kw)
    return neg


def prompt_conditioning(pipe, prompts: list[str], key, *, negative_prompts=None,
                        prior_steps=None, prior_guidance=None, prior_best_of=None):
    """Per-example prompts → (text, z_i [B, D], negative or None), as `generate` does."""
    use_prior = not pipe.text_conditioned_decoder
    pipe._need("clip", "tokenizer", "decoder", *(("prior",) if use_prior else ()))
    text = pipe.encode_text(prompts)
    negs = expand_negatives(negative_prompts, prompts, 1)
    prior_kw = dict(steps=prior_steps, best_of=prior_best_of) if use_prior else None
    neg = None if negs is None else negative_conditioning(pipe, negs, key, prior_kw)
    if not use_prior:
        return text, text["embeds"], neg
    z_i = pipe.prior_sample(text, key, guidance=prior_guidance, negative=neg, **prior_kw)
    return text, pipe._finite(pipe.prior_stage.name, z_i), neg


# --------------------------------------------------------------------------- the chain

def edit_decode(pipe, z_i, key, *, known: dict, masks: dict | None, strength: float | None,
                text: dict | None, negative: dict | None = None, decoder_steps=None,
                decoder_guidance=None, upsampler_steps=None, eta: float = 0.0,
                jump_length: int = 1, resamplings: int = 1, bar=None) -> dict:
    """Decoder + upsamplers around known images: known = {stage: [B, S, S, 3]}, masks =
    {stage: [B, S, S, 1]} (RePaint) or None, strength (SDEdit) or None (start from noise).
    The decoder starts from `pipe.initial_noise` like `decode`. → {'x_T', stage: float}."""
    from unclip_jax.pipeline import _stage_bar
    ups = pipe._upsampler_steps(upsampler_steps)
    pipe._validate_steps(decoder_steps, ups)
    x_T = pipe.initial_noise(len(z_i), key)
    out = {"x_T": x_T}
    x = None
    for stage in known:
        steps = decoder_steps if stage == "decoder" else ups[stage]
        n_steps = int(pipe._schedule(stage, steps)[1].num_steps)
        start = n_steps if strength is None else edit_math.strength_to_start(strength, n_steps)
        ops = (edit_math.repaint_ops(n_steps, jump_length, resamplings) if masks is not None
               else edit_math.repaint_ops(n_steps))
        ed = {"x0": known[stage], "mask": None if masks is None else masks[stage],
              "start": start, "ops": ops}
        _stage_bar(bar, stage)
        if stage == "decoder":
            x = pipe.decoder_sample(z_i, x_T, key, text=text, steps=steps,
                                    guidance=decoder_guidance, eta=eta, negative=negative,
                                    edit=ed)
        else:
            x = pipe.upsample(stage, x, key, steps=steps, eta=eta, edit=ed)
        out[stage] = x = pipe._finite(stage, x)
    _stage_bar(bar, None)
    return out


def _edit(pipe, command: str, images, prompts, key, *, n: int, masks=None, feather=0.0,
          strength=None, negative_prompts=None, jump_length=1, resamplings=1, prior_steps=None,
          prior_guidance=None, prior_best_of=None, decoder_steps=None, decoder_guidance=None,
          upsampler_steps=None, eta=0.0, return_intermediates=False):
    from unclip_jax.pipeline import _check_count, _check_eta, _finish, as_key
    pipe._need("clip", "tokenizer", "decoder")
    n = _check_count("n", n)
    _check_eta(eta)
    key = as_key(key)
    images = [_read(im, "image") for im in _as_list(images, "images")]
    prompts = _prompts_for(prompts, len(images))
    sizes = stage_sizes(pipe)
    stage_masks = None
    if masks is not None:
        mlist = _as_list(masks, "masks")
        if len(mlist) == 1:
            mlist = mlist * len(images)
        if len(mlist) != len(images):
            raise UserError(f"{len(mlist)} masks for {len(images)} images; give one mask, or "
                            "one per image")
        feather = float(feather)
        if not (np.isfinite(feather) and feather >= 0):
            raise UserError(f"feather={feather} must be >= 0 (a blur radius in mask pixels)")
        arrays = [check_mask(mask_array(_read(m, "mask"), f"mask {i}"), _hw(im), f"mask {i}")
                  for i, (m, im) in enumerate(zip(mlist, images))]
        stage_masks = {s: np.repeat(np.stack([stage_mask(m, size, feather) for m in arrays]),
                                    n, axis=0) for s, size in sizes.items()}
    known = {s: np.repeat(v, n, axis=0) for s, v in _known(images, sizes).items()}
    expanded = [p for p in prompts for _ in range(n)]
    pipe._check_fits(len(expanded), copies=1 + int(return_intermediates))
    # every setting is checked before the first program runs
    pipe._validate_steps(decoder_steps, pipe._upsampler_steps(upsampler_steps))
    pipe._guidance("decoder", decoder_guidance)
    if not pipe.text_conditioned_decoder and pipe.prior_stage.name == "prior":
        pipe._schedule("prior", prior_steps)
        pipe._guidance("prior", prior_guidance)
    negs = expand_negatives(negative_prompts, prompts, n)
    with pipe._bar(len(sizes) + 1, command) as bar:
        from unclip_jax.pipeline import _stage_bar
        _stage_bar(bar, "clip+prior")
        text, z_i, neg = prompt_conditioning(
            pipe, expanded, key, negative_prompts=negs, prior_steps=prior_steps,
            prior_guidance=prior_guidance, prior_best_of=prior_best_of)
        out = edit_decode(pipe, z_i, key, known=known, masks=stage_masks, strength=strength,
                          text=text, negative=neg, decoder_steps=decoder_steps,
                          decoder_guidance=decoder_guidance, upsampler_steps=upsampler_steps,
                          eta=eta, jump_length=jump_length, resamplings=resamplings, bar=bar)
    extra = {"z_i": z_i, "known": known[list(sizes)[-1]]}
    if stage_masks is not None:
        extra["mask"] = stage_masks[list(sizes)[-1]]
    return _finish(out, return_intermediates, **extra)


def inpaint(pipe, images, masks, prompts, key, *, n: int = 1, feather: float = 0.0,
            jump_length: int = 1, resamplings: int = 1, **kw):
    """Repaint the white region of each mask under its prompt (RePaint, training-free).

    images: a path / PIL image / [H, W, C] array, or a list of them (any size; centre-cropped
    to a square like every image input); masks: one per image (or one for all) of the
    image's own size, white (1) = repaint, black (0) = keep, gray = blend (soft edges);
    prompts: one, or one per image. feather: extra Gaussian softening of the mask edges
    (σ in mask pixels). jump_length, resamplings: RePaint's resampling jumps (1, 1 = none;
    each stage then runs about resamplings × its steps). → uint8 [len(images)·n, H, W, 3],
    image-major; outside the mask each image equals its input (resized to the final size).
    """
    _check_jumps(jump_length, resamplings)
    return _edit(pipe, "inpaint", images, prompts, key, n=n, masks=masks, feather=feather,
                 jump_length=jump_length, resamplings=resamplings, **kw)


def img2img(pipe, images, prompts, key, *, strength: float = 0.6, n: int = 1, **kw):
    """SDEdit: each stage starts from the input at its size noised to level
    round(strength·N) of its N steps, then denoises under the prompt's z_i and text.
    strength 0 returns the input (resized to the final size), 1 is plain generation.
    → uint8 [len(images)·n, H, W, 3], image-major."""
    return _edit(pipe, "img2img", images, prompts, key, n=n, strength=check_strength(strength),
                 **kw)


# --------------------------------------------------------------------------- mixing

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
    pipe._need("clip", "decoder")
    z = [None] * len(items)
    img_idx = [i for i, k in enumerate(kinds) if k == "image"]
    txt_idx = [i for i, k in enumerate(kinds) if k == "prompt"]
    if img_idx:
        size = pipe.stages["clip"].model.image_size
        imgs = np.stack([io.image_to_float(_read(items[i], "image"), size) for i in img_idx])
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


def mix(pipe, items, weights, key, *, n: int = 1, prior_steps=None, prior_guidance=None,
        prior_best_of=None, decoder_steps=None, decoder_guidance=None, upsampler_steps=None,
        eta: float = 0.0, return_intermediates: bool = False):
    """Decode n images of the weighted mix of images and prompts (`mix_embedding`); the
    decoder sees no caption (as for variations). → uint8 [n, H, W, 3]."""
    from unclip_jax.pipeline import _check_count, _check_eta, _finish, as_key
    n = _check_count("n", n)
    _check_eta(eta)
    key = as_key(key)
    pipe._validate_steps(decoder_steps, pipe._upsampler_steps(upsampler_steps))
    pipe._guidance("decoder", decoder_guidance)
    z_mix, z_in = mix_embedding(pipe, items, weights, key, prior_steps=prior_steps,
                                prior_guidance=prior_guidance, prior_best_of=prior_best_of)
    z_rep = np.repeat(z_mix[None], n, axis=0)
    out = pipe.decode(z_rep, key, decoder_steps=decoder_steps, decoder_guidance=decoder_guidance,
                      upsampler_steps=upsampler_steps, eta=eta, upsampler_eta=eta)
    return _finish(out, return_intermediates, z_i=z_rep, inputs=z_in)

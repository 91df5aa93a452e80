"""Editing on a loaded `UnCLIP`: inpainting and image-to-image (bound as its methods).

The per-step math is `unclip_jax.diffusion.editing` (SDEdit start, RePaint known-region
replacement and resampling jumps); each stage still runs as ONE compiled program (the
`decoder_sample` / `upsample` programs with an `edit`).

- inpaint: the known image and the mask (`unclip_jax.sample.masks`) are resized to every
  stage's size; at each step of the decoder and of each upsampler the region to keep (mask
  0, black) is replaced by the original noised to that step's level, the region to repaint
  (mask 1, white) is generated under the prompt's z_i (from the prior) and text. Gray mask
  values blend.
- img2img (SDEdit): every stage starts from the input (at that stage's size) noised to
  level round(strength·N) and runs the remaining steps under the prompt's z_i; strength 0
  returns the input, 1 is plain generation (the same images `generate` gives).
- negative prompts: see `unclip_jax.sample.prompts`.

Images NHWC, float in [-1, 1] inside, uint8 out. Masks float in [0, 1], 1 = repaint.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from unclip_jax.diffusion import editing as edit_math
from unclip_jax.errors import UserError
from unclip_jax.sample import chain
from unclip_jax.sample.checks import as_key, check_count, check_eta, check_prompts
from unclip_jax.sample.images import image_to_float, open_image, read_image
from unclip_jax.sample.masks import check_mask, mask_array, stage_mask
from unclip_jax.sample.progress import advance
from unclip_jax.sample.prompts import expand_negatives, prompt_conditioning


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
    """A path → RGB PIL image (a mask: in its own mode; UserError if unreadable); PIL
    images and arrays pass through."""
    if what == "image":
        return read_image(item)
    return open_image(os.fspath(item)) if isinstance(item, (str, os.PathLike)) else item


def _hw(img) -> tuple[int, int]:
    if isinstance(img, Image.Image):
        return img.size[1], img.size[0]
    a = np.asarray(img)
    return int(a.shape[0]), int(a.shape[1])


def stage_sizes(pipe) -> dict[str, int]:
    """{stage: image size} of the decoder and every upsampler that runs as its own stage."""
    return {s: pipe.image_size(s) for s in pipe.own_stages()}


def _known(images: list, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    return {s: np.stack([image_to_float(im, size) for im in images])
            for s, size in sizes.items()}


def _prompts_for(prompts, count: int) -> list[str]:
    prompts = check_prompts(prompts)
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
    return (check_count("jump_length", jump_length), check_count("resamplings", resamplings))


# --------------------------------------------------------------------------- the chain

def edit_decode(pipe, z_i, key, *, known: dict, masks: dict | None, strength: float | None,
                text: dict | None, negative: dict | None = None, decoder_steps=None,
                decoder_guidance=None, upsampler_steps=None, eta: float = 0.0,
                jump_length: int = 1, resamplings: int = 1, bar=None) -> dict:
    """Decoder + upsamplers around known images: known = {stage: [B, S, S, 3]}, masks =
    {stage: [B, S, S, 1]} (RePaint) or None, strength (SDEdit) or None (start from noise).
    The decoder starts from `pipe.initial_noise` like `decode`. → {'x_T', stage: float}."""
    ups = chain.steps_per_upsampler(upsampler_steps)
    chain.validate_steps(pipe, decoder_steps, ups)
    x_T = pipe.initial_noise(len(z_i), key)
    out = {"x_T": x_T}
    x = None
    for stage in known:
        steps = decoder_steps if stage == "decoder" else ups[stage]
        n_steps = int(pipe.schedule(stage, steps)[1].num_steps)
        start = n_steps if strength is None else edit_math.strength_to_start(strength, n_steps)
        ops = (edit_math.repaint_ops(n_steps, jump_length, resamplings) if masks is not None
               else edit_math.repaint_ops(n_steps))
        ed = {"x0": known[stage], "mask": None if masks is None else masks[stage],
              "start": start, "ops": ops}
        advance(bar, stage)
        if stage == "decoder":
            x = pipe.decoder_sample(z_i, x_T, key, text=text, steps=steps,
                                    guidance=decoder_guidance, eta=eta, negative=negative,
                                    edit=ed)
        else:
            x = pipe.upsample(stage, x, key, steps=steps, eta=eta, edit=ed)
        out[stage] = x = pipe.finite(stage, x)
    advance(bar, None)
    return out


def _edit(pipe, command: str, images, prompts, key, *, n: int, masks=None, feather=0.0,
          strength=None, negative_prompts=None, jump_length=1, resamplings=1, prior_steps=None,
          prior_guidance=None, prior_best_of=None, decoder_steps=None, decoder_guidance=None,
          upsampler_steps=None, eta=0.0, return_intermediates=False):
    pipe.require("clip", "tokenizer", "decoder")
    n = check_count("n", n)
    check_eta(eta)
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
    chain.check_fits(pipe, len(expanded), copies=1 + int(return_intermediates))
    # every setting is checked before the first program runs
    chain.validate_steps(pipe, decoder_steps, chain.steps_per_upsampler(upsampler_steps))
    pipe.guidance("decoder", decoder_guidance)
    if not pipe.text_conditioned_decoder and pipe.prior_stage.name == "prior":
        pipe.schedule("prior", prior_steps)
        pipe.guidance("prior", prior_guidance)
    negs = expand_negatives(negative_prompts, prompts, n)
    with pipe.bar(len(sizes) + 1, command) as bar:
        advance(bar, "clip+prior")
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
    return chain.finish(out, return_intermediates, **extra)


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

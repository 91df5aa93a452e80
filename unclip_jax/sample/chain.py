"""The chain of a loaded `UnCLIP`: text → CLIP → prior → decoder → upsamplers.

Functions of an `UnCLIP`, bound as its methods `decode` and `generate`, and the helpers the
manipulations and editing share with them (settings checked before any compute, the
memory check, the final uint8 result). Floats in [-1, 1], NHWC; uint8 only in results.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from unclip_jax.errors import UserError
from unclip_jax.sample import prompts as prompts_lib
from unclip_jax.sample.checks import as_key, check_count, check_eta, check_prompts
from unclip_jax.sample.images import to_uint8
from unclip_jax.stages import UPSAMPLERS
from unclip_jax.sample.progress import advance

MAX_BATCH_PER_DEVICE = 64      # `generate` samples at most this many images per device at once


def steps_per_upsampler(value) -> dict:
    """One steps value for every upsampler, or two (one each) → {upsampler: steps}."""
    if value is None or isinstance(value, (str, int)):
        return {u: value for u in UPSAMPLERS}
    steps = list(value)
    if len(steps) != 2:
        raise UserError("upsampler_steps takes one value or two (one per upsampler)")
    return dict(zip(UPSAMPLERS, steps))


def validate_steps(pipe, decoder_steps, ups: dict) -> None:
    """Check every image stage's steps before any compute (errors come first, not late)."""
    pipe.schedule("decoder", decoder_steps)
    for u in pipe.own_stages()[1:]:
        pipe.schedule(u, ups[u])


def num_stages(pipe, with_prior: bool) -> int:
    """Stages a request runs (for the progress bar): CLIP(+prior), decoder, upsamplers."""
    return int(with_prior) + len(pipe.own_stages())


def check_fits(pipe, n: int, copies: int = 1) -> None:
    """UserError when `n` final images (uint8, `copies` times) exceed the free memory."""
    size = pipe.image_size(pipe.own_stages()[-1])
    need = n * size * size * 3 * copies
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if need > 0.8 * free:
        fit = max(1, int(0.8 * free // (size * size * 3 * copies)))
        raise UserError(f"{n} images of {size}×{size} need {need / 2**30:.1f} GiB for the "
                        f"results alone but {free / 2**30:.1f} GiB of memory is free; ask "
                        f"for at most {fit} images per run")


def finish(out: dict, return_intermediates: bool, **extra):
    """The last stage's images as uint8 [B, H, W, 3]; with `return_intermediates` also a
    dict of every stage's float output and `extra` (host arrays)."""
    last = next(out[k] for k in ("upsampler2", "upsampler1", "decoder") if k in out)
    images = to_uint8(last)
    if not return_intermediates:
        return images
    inter = {k: np.asarray(v) for k, v in out.items()}
    inter.update({k: np.asarray(v) for k, v in extra.items()})
    return images, inter


def decode(pipe, z_i, key, *, x_T=None, text: dict | None = None, decoder_steps=None,
           decoder_guidance=None, upsampler_steps=None, eta: float = 0.0,
           ddim: bool | None = None, upsampler_eta: float = 0.0, bar=None,
           negative: dict | None = None) -> dict:
    """Decoder + available upsamplers from z_i [B, D] (and x_T, else drawn from key).
    negative: see `decoder_sample`. bar: a `progress.StageBar` to advance, or None.

    Returns {'x_T', 'decoder', 'upsampler1'?, 'upsampler2'?} float arrays in [-1, 1].
    """
    z_i = np.asarray(z_i, np.float32)
    ups = steps_per_upsampler(upsampler_steps)
    validate_steps(pipe, decoder_steps, ups)
    x_T = pipe.initial_noise(len(z_i), key) if x_T is None else np.asarray(x_T, np.float32)
    out = {"x_T": x_T}
    advance(bar, "decoder")
    x = pipe.decoder_sample(z_i, x_T, key, text=text, steps=decoder_steps,
                            guidance=decoder_guidance, eta=eta, ddim=ddim, negative=negative)
    out["decoder"] = x = pipe.finite("decoder", x)
    for u in pipe.own_stages()[1:]:
        advance(bar, u)
        x = pipe.upsample(u, x, key, steps=ups[u], eta=upsampler_eta)
        out[u] = x = pipe.finite(u, x)
    advance(bar, None)
    return out


def generate(pipe, prompts: Sequence[str], key, *, num_images_per_prompt: int = 1,
             prior_steps=None, decoder_steps=None, upsampler_steps=None,
             prior_guidance=None, decoder_guidance=None, prior_best_of=None,
             prior_temperature: float = 1.0, eta: float = 0.0,
             text_as_image_embed: bool = False, return_intermediates: bool = False,
             max_batch: int | None = None, negative_prompts=None):
    """Text → images uint8 [len(prompts)·num_images_per_prompt, H, W, 3], prompt-major.

    key: int seed or typed key. Steps are respacing strings ('25', 'ddim25'); None uses
    each stage's config. eta is DDIM's η (decoder with 'ddimN' steps, and upsamplers).
    text_as_image_embed: skip the prior and give the decoder the caption's CLIP text
    embedding z_t as z_i (the paper's §5.1 zero-shot baseline; automatic for a decoder
    trained on z_t, see `text_conditioned_decoder`).
    With return_intermediates also returns a dict with z_t, z_i, x_T (enough to redo or
    edit a result through `decode`) and each stage's float output.
    max_batch: images sampled per call (default `MAX_BATCH_PER_DEVICE` per device); a
    larger request runs in chunks, each image with the key of its position in the whole
    request, so it is the image one batch would give (up to the float rounding of another
    batch shape). A request whose results alone would not fit in memory is refused.
    negative_prompts: one string for every prompt, or one per prompt; classifier-free
    guidance's unconditional half of the prior and the decoder conditions on it
    (`unclip_jax.sample.prompts.negative_conditioning`).
    """
    pipe.require("clip", "tokenizer", "decoder")
    use_prior = not (text_as_image_embed or pipe.text_conditioned_decoder)
    if use_prior:
        pipe.require("prior")
    prompts = check_prompts(prompts)
    n = check_count("num_images_per_prompt", num_images_per_prompt)
    key = as_key(key)
    if use_prior and pipe.prior_stage.name == "prior":
        pipe.schedule("prior", prior_steps)
        pipe.guidance("prior", prior_guidance)
    pipe.guidance("decoder", decoder_guidance)
    validate_steps(pipe, decoder_steps, steps_per_upsampler(upsampler_steps))
    check_eta(eta)
    expanded = [p for p in prompts for _ in range(n)]
    negatives = prompts_lib.expand_negatives(negative_prompts, prompts, n)
    check_fits(pipe, len(expanded), copies=1 + int(return_intermediates))
    chunk = (MAX_BATCH_PER_DEVICE * pipe.num_devices if max_batch is None
             else check_count("max_batch", max_batch))
    starts = range(0, len(expanded), chunk)
    parts = []
    with pipe.bar(num_stages(pipe, use_prior) * len(starts), "generate") as bar:
        for start in starts:
            pipe.programs.offset = start       # example keys: positions in the whole request
            try:
                advance(bar, "clip+prior")
                text = pipe.encode_text(expanded[start:start + chunk])
                prior_kw = dict(steps=prior_steps, best_of=prior_best_of,
                                temperature=prior_temperature) if use_prior else None
                neg = None if negatives is None else prompts_lib.negative_conditioning(
                    pipe, negatives[start:start + chunk], key, prior_kw)
                if use_prior:
                    z_i = pipe.prior_sample(text, key, guidance=prior_guidance,
                                            negative=neg, **prior_kw)
                    z_i = pipe.finite(pipe.prior_stage.name, z_i)
                else:   # §5.1: z_t in place of z_i (zero-shot, or a decoder trained on z_t)
                    z_i = text["embeds"]
                out = decode(pipe, z_i, key, text=text, decoder_steps=decoder_steps,
                             decoder_guidance=decoder_guidance,
                             upsampler_steps=upsampler_steps, eta=eta,
                             upsampler_eta=eta, bar=bar, negative=neg)
            finally:
                pipe.programs.offset = 0
            parts.append(finish(out, return_intermediates, z_t=text["embeds"], z_i=z_i))
    if not return_intermediates:
        return np.concatenate(parts)
    return (np.concatenate([p[0] for p in parts]),
            {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]})

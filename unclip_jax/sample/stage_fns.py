"""Pure per-stage sampling functions of the unCLIP hierarchy.

Each stage function is a pure function of (params, inputs, key) plus static settings
(module, schedule, guidance scale, sampler choice); `unclip_jax.sample.unclip.UnCLIP` jits
each one once per (stage, shape, settings) (`unclip_jax.sample.programs`) with the batch
sharded over all devices. Classifier-free guidance is one batched model call over
[cond; uncond].

Shapes: B batch, D CLIP embedding size, L text tokens, W text width, images NHWC in [-1, 1].
Timesteps passed to models are original (training) timesteps. Every model function goes
through `progress.reporting_steps` (a no-op unless the program is traced for a shown bar).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from unclip_jax.diffusion import editing
from unclip_jax.diffusion import guidance as guidance_lib
from unclip_jax.diffusion import samplers
from unclip_jax.diffusion.final_steps import final_steps_model_fn
from unclip_jax.diffusion.schedules import Schedule
from unclip_jax.errors import UserError
from unclip_jax.models import prior as prior_lib
from unclip_jax.sample.progress import reporting_steps


# --------------------------------------------------------------------------- model functions

def as_variables(params):
    """Flax variables of `params` (a bare parameter tree gets its 'params' collection)."""
    return params if "params" in params else {"params": params}


def unet_model_fn(params, model, *, z_i=None, text_states=None, text_mask=None, low_res=None,
                  guidance: float = 1.0, use_text: bool = True, learned_variance: bool = False,
                  predict: str = "eps", z_t=None, uncond: dict | None = None,
                  caption_ids=None):
    """`model_fn(x_t [B,H,W,C], t [B]) → output` for a decoder / upsampler UNet.

    Decoder: conditioned on z_i [B, D] and (when `use_text`) text_states [B, L, W] with
    text_mask [B, L]; without text the caption is dropped for every example. A model with
    `text_embed_dim` > 0 also takes z_t [B, D] (the pooled CLIP text embedding; dropped with
    the caption, zeros when none is given). A model with its own caption encoder
    (`caption_vocab` > 0) also takes caption_ids [B, L] int32, the token ids of text_states
    (zeros, masked out, when no caption is given). guidance ≠ 1 runs one call over
    [cond; uncond] where uncond drops the image embedding and either
      - drops the caption (uncond=None: the model's own drop path), or
      - conditions on another caption's encoding, `uncond` = {'embeds' [B|1, D],
        'states' [B|1, L, W], 'mask' [B|1, L], and 'ids' [B|1, L] for a caption encoder}
        (e.g. the empty caption "", as Karlo does);
        with 'z_i' [B|1, D] in it too (a negative prompt's image embedding) the
        unconditional half keeps that image embedding instead of dropping it.
    Upsampler: conditioned on `low_res` (its input resolution) only; no guidance.
    """
    variables = as_variables(params)
    conditional = z_i is not None
    if conditional and getattr(model, "text_width", 0) and text_states is None:
        # no caption: one masked-out zero token, dropped for every example
        text_states = jnp.zeros((z_i.shape[0], 1, model.text_width), jnp.float32)
        text_mask = jnp.zeros((z_i.shape[0], 1), bool)
        caption_ids = None
        use_text = False
        uncond = None
    if conditional and getattr(model, "caption_vocab", 0) and caption_ids is None:
        if use_text:
            raise UserError("this decoder has its own caption encoder: pass the caption's token "
                            "ids (caption_ids, encode_text's 'ids') with its text_states")
        caption_ids = jnp.zeros(jnp.shape(text_states)[:2], jnp.int32)
    if conditional and getattr(model, "text_embed_dim", 0) and z_t is None:
        z_t = jnp.zeros((z_i.shape[0], model.text_embed_dim), jnp.float32)
        use_text = False

    def call(x_t, t, z, ts, tm, lr, drop_text, drop_img, zt, ids=None):
        return model.apply(variables, x_t, t, z_i=z, text_states=ts, text_mask=tm,
                           low_res=lr, drop_text=drop_text, drop_image_embed=drop_img,
                           z_t=zt, caption_ids=ids, train=False)

    def model_fn(x_t, t):
        B = x_t.shape[0]
        t = jnp.broadcast_to(jnp.asarray(t), (B,))
        if not conditional:
            return call(x_t, t, None, None, None, low_res, None, None, None)
        no_text = jnp.full((B,), not use_text)
        return call(x_t, t, z_i, text_states, text_mask, low_res, no_text,
                    jnp.zeros((B,), bool), z_t, caption_ids)

    if not conditional or guidance == 1.0:
        return model_fn
    B = z_i.shape[0]
    two = lambda a: None if a is None else jnp.concatenate([a, a], axis=0)
    z2, lr2 = two(z_i), two(low_res)
    no_text = jnp.full((B,), not use_text)
    if uncond is None:
        s2, m2, zt2, ids2 = two(text_states), two(text_mask), two(z_t), two(caption_ids)
        drop_text = jnp.concatenate([no_text, jnp.ones((B,), bool)])
    else:
        u = _broadcast_text(uncond, B)
        s2 = jnp.concatenate([jnp.asarray(text_states, jnp.float32), u["states"]])
        m2 = jnp.concatenate([jnp.asarray(text_mask, bool), u["mask"]])
        zt2 = None if z_t is None else jnp.concatenate([jnp.asarray(z_t, jnp.float32),
                                                        u["embeds"]])
        if caption_ids is not None and "ids" not in u:
            raise UserError("this decoder has its own caption encoder: the unconditional "
                            "caption needs its token 'ids' too (encode_text gives them)")
        ids2 = None if caption_ids is None else jnp.concatenate(
            [jnp.asarray(caption_ids, jnp.int32), u["ids"]])
        drop_text = jnp.concatenate([no_text, jnp.zeros((B,), bool)])
    if uncond is not None and uncond.get("z_i") is not None:   # a negative prompt's z_i
        z2 = jnp.concatenate([jnp.asarray(z_i, jnp.float32),
                              jnp.broadcast_to(jnp.asarray(uncond["z_i"], jnp.float32),
                                               jnp.shape(z_i))])
        drop_img = jnp.zeros((2 * B,), bool)
    else:
        drop_img = jnp.concatenate([jnp.zeros((B,), bool), jnp.ones((B,), bool)])

    def model_fn2(x2, t2):
        return call(x2, t2, z2, s2, m2, lr2, drop_text, drop_img, zt2, ids2)

    return guidance_lib.classifier_free_guidance(model_fn2, guidance, predict=predict,
                                                 learned_variance=learned_variance)


def _broadcast_text(text: dict, B: int) -> dict:
    """{'embeds' [1|B, D], 'states' [1|B, L, W], 'mask' [1|B, L] (, 'ids' [1|B, L])} → the
    same with batch B."""
    out = {}
    for k, dtype in (("embeds", jnp.float32), ("states", jnp.float32), ("mask", bool),
                     ("ids", jnp.int32)):
        if k not in text:
            continue
        a = jnp.asarray(text[k], dtype)
        out[k] = jnp.broadcast_to(a, (B,) + a.shape[1:])
    return out


def prior_uncond_model_fn(params, model, z_t, text_states, text_mask, uncond: dict, *,
                          guidance: float, clamp: float | None = None):
    """Guided prior `model_fn(x_t [B, D], t [B]) → x0 [B, D]` whose unconditional half is
    another caption's encoding (`uncond` as in `unet_model_fn`, e.g. the empty caption ""),
    not the model's learned null tokens. One batched call over [cond; uncond]; x0 is
    clipped to ±clamp (normalised space) after guidance."""
    B = z_t.shape[0]
    u = _broadcast_text(uncond, B)
    z2 = jnp.concatenate([jnp.asarray(z_t, jnp.float32), u["embeds"]])
    s2 = jnp.concatenate([jnp.asarray(text_states, jnp.float32), u["states"]])
    m2 = jnp.concatenate([jnp.asarray(text_mask, bool), u["mask"]])
    variables = as_variables(params)

    def model_fn2(x2, t2):
        return model.apply(variables, x2, t2, z2, s2, m2, None)

    fn = guidance_lib.classifier_free_guidance(model_fn2, guidance, predict="x0")
    if clamp is None:
        return fn

    def clamped(x_t, t):
        t = jnp.broadcast_to(jnp.asarray(t), (x_t.shape[0],))
        return jnp.clip(fn(x_t, t), -clamp, clamp)
    return clamped


# --------------------------------------------------------------------------- stages

def prior_sample(params, model, model_cfg, diffusion_cfg, stats, z_t, text_states, text_mask,
                 key, *, sched: Schedule, guidance: float, best_of: int,
                 uncond: dict | None = None):
    """Diffusion prior: z_t [B, D], text_states [B, L, W], text_mask [B, L] → z_i [B, D].

    Draws `best_of` candidates per caption in one batched sampler run and keeps the one
    closest (cosine) to z_t. Sampling happens in the prior's normalised space; the result is
    denormalised to CLIP embedding space. Guidance's unconditional half uses the model's
    learned null tokens, or (`uncond` given, see `prior_uncond_model_fn`) another caption.
    """
    B, D = z_t.shape
    rep = lambda a: jnp.tile(a, (best_of,) + (1,) * (a.ndim - 1))
    clamp = model_cfg.get("clamp", None) or None
    if uncond is not None and guidance != 1.0:
        fn = prior_uncond_model_fn(params, model, rep(z_t), rep(text_states), rep(text_mask),
                                   uncond, guidance=guidance, clamp=clamp)
    else:
        fn = prior_lib.prior_model_fn(as_variables(params), model, rep(z_t), rep(text_states),
                                      rep(text_mask), guidance_scale=guidance, clamp=clamp)
    x = samplers.ddpm_sample(reporting_steps(fn), sched, (best_of * B, D), key, predict="x0",
                             variance=diffusion_cfg.variance,
                             clip_denoised=False, clip_range=diffusion_cfg.clip_range)
    cands = prior_lib.denormalize_embed(x, model_cfg, stats).reshape(best_of, B, D)
    return prior_lib.best_of(cands, z_t)


def image_sample(model_fn, diffusion_cfg, sched: Schedule, shape, key, *, ddim: bool,
                 eta: float, x_T=None):
    """Run the decoder / upsampler sampler: DDIM(η) when `ddim`, else ancestral DDPM."""
    model_fn = reporting_steps(model_fn)
    if ddim:   # a learned-variance half is ignored by DDIM
        return samplers.ddim_sample(model_fn, sched, shape, key, predict=diffusion_cfg.predict,
                                    eta=eta, clip_denoised=diffusion_cfg.clip_denoised,
                                    clip_range=diffusion_cfg.clip_range,
                                    variance=diffusion_cfg.variance, x_T=x_T)
    return samplers.ddpm_sample(model_fn, sched, shape, key, predict=diffusion_cfg.predict,
                                variance=diffusion_cfg.variance,
                                clip_denoised=diffusion_cfg.clip_denoised,
                                clip_range=diffusion_cfg.clip_range, x_T=x_T)


def image_edit(model_fn, diffusion_cfg, sched: Schedule, key, edit: dict, *, ddim: bool,
               eta: float, x_T=None):
    """`editing.edit_sample` with a stage's settings. edit = {'x0' [B, S, S, 3] (the known
    image at this stage's size), 'mask' [B, S, S, 1] or None (1 = repaint), 'start' (level,
    int32 scalar), 'ops' (`editing.repaint_ops` rows)}."""
    return editing.edit_sample(reporting_steps(model_fn), sched, edit["x0"], key,
                               predict=diffusion_cfg.predict,
                               variance=diffusion_cfg.variance, ddim=ddim, eta=eta,
                               clip_denoised=diffusion_cfg.clip_denoised,
                               clip_range=diffusion_cfg.clip_range, start=edit["start"],
                               mask=edit.get("mask"), ops=edit["ops"], x_T=x_T)


def decoder_sample(params, model, diffusion_cfg, z_i, text_states, text_mask, x_T, key, *,
                   sched: Schedule, guidance: float, ddim: bool, eta: float, use_text: bool,
                   z_t=None, uncond: dict | None = None, edit: dict | None = None,
                   caption_ids=None):
    """Decoder: z_i [B, D] (+ text, z_t [B, D]) and x_T [B, S, S, 3] → images [B, S, S, 3]
    in [-1, 1]. `uncond`, `caption_ids`: see `unet_model_fn`. `edit`: sample around a known image instead
    (SDEdit / RePaint, see `image_edit`)."""
    fn = unet_model_fn(params, model, z_i=z_i, text_states=text_states, text_mask=text_mask,
                       guidance=guidance, use_text=use_text, predict=diffusion_cfg.predict,
                       learned_variance=diffusion_cfg.variance == "learned_range",
                       z_t=z_t, uncond=uncond, caption_ids=caption_ids)
    if edit is not None:
        return image_edit(fn, diffusion_cfg, sched, key, edit, ddim=ddim, eta=eta, x_T=x_T)
    return image_sample(fn, diffusion_cfg, sched, x_T.shape, key, ddim=ddim, eta=eta, x_T=x_T)


def decoder_invert(params, model, diffusion_cfg, z_i, text_states, text_mask, x0, *,
                   sched: Schedule, guidance: float, use_text: bool):
    """DDIM inversion of the decoder: images x0 [B, S, S, 3] given z_i → x_T [B, S, S, 3]."""
    learned = diffusion_cfg.variance == "learned_range"
    fn = unet_model_fn(params, model, z_i=z_i, text_states=text_states, text_mask=text_mask,
                       guidance=guidance, use_text=use_text, learned_variance=learned,
                       predict=diffusion_cfg.predict)
    return samplers.ddim_invert(reporting_steps(fn), sched, x0, predict=diffusion_cfg.predict,
                                variance=diffusion_cfg.variance)


def upscale_low_res(low_res, size: int, method: str | None):
    """low_res [B, s, s, C] → [B, size, size, C] by `method` ('bicubic', 'bilinear', ...;
    jax.image.resize, whose bicubic is the Keys a = −0.5 kernel with half-pixel centres, i.e.
    torch's antialiased bicubic), or unchanged for None (the UNet resizes it itself)."""
    if not method:
        return low_res
    B, _, _, C = low_res.shape
    return jax.image.resize(jnp.asarray(low_res, jnp.float32), (B, size, size, C), method)


def upsample(params, model, diffusion_cfg, low_res, key, *, sched: Schedule, size: int,
             ddim: bool, eta: float, final: tuple | None = None, x_T=None,
             edit: dict | None = None):
    """Upsampler: low_res [B, s, s, 3] (clean, the previous stage's output) → [B, size, size, 3].
    `x_T` [B, size, size, 3]: the starting noise (default: drawn from `key`). `edit`: sample
    around a known image at `size` instead (SDEdit / RePaint, see `image_edit`).

    `diffusion_cfg.low_res_upscale` (optional) resizes low_res to `size` before the model.
    `final` = (params, model, last_timestep): a second UNet of the same resolution that runs
    the steps at timesteps ≤ last_timestep instead of this one (Karlo's super_res_last).
    """
    low_res = upscale_low_res(low_res, size, diffusion_cfg.get("low_res_upscale", None))
    fn = unet_model_fn(params, model, low_res=low_res)
    if final is not None:
        last_params, last_model, last_t = final
        fn = final_steps_model_fn(fn, unet_model_fn(last_params, last_model, low_res=low_res),
                                  last_t)
    if edit is not None:
        return image_edit(fn, diffusion_cfg, sched, key, edit, ddim=ddim, eta=eta, x_T=x_T)
    shape = (low_res.shape[0], size, size, low_res.shape[-1])
    return image_sample(fn, diffusion_cfg, sched, shape, key, ddim=ddim, eta=eta, x_T=x_T)

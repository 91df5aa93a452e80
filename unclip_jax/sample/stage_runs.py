"""Each stage of a loaded `UnCLIP` as ONE compiled program over a sharded batch.

Functions of an `UnCLIP` (bound as its methods `prior_sample`, `initial_noise`,
`decoder_sample`, `decoder_invert`, `upsample`): check the settings, pad and shard the
batch, and run the pure sampler of `unclip_jax.sample.stage_fns` per example (vmapped, with
the example's own key) through the program cache. Inputs and outputs are host arrays;
images are float in [-1, 1], NHWC.
"""
from __future__ import annotations

import functools

import jax
import numpy as np

from unclip_jax.diffusion import steps as steps_grammar
from unclip_jax.errors import CheckpointError, UserError
from unclip_jax.sample import stage_fns
from unclip_jax.sample.checks import check_eta, check_guidance
from unclip_jax.sample.programs import edit_static, example_keys, per_example, stage_key


def prior_sample(pipe, text: dict, key, *, steps=None, guidance=None, best_of=None,
                 temperature: float = 1.0, negative: dict | None = None) -> np.ndarray:
    """text (from `encode_text`) → z_i [B, D] (host). best_of None: the prior config's
    `model.sample_candidates` (default 2). negative: `encode_text` of one negative
    prompt per example; guidance's unconditional half conditions on it (diffusion prior
    only)."""
    pipe.require("prior")
    st = pipe.prior_stage
    guidance = pipe.guidance(st.name, guidance) if st.name == "prior" else \
        check_guidance("prior guidance", 1.0 if guidance is None else guidance)
    if negative is not None and st.name != "prior":
        raise UserError("negative prompts need the diffusion prior (prior/); the AR prior "
                        "has no unconditional branch to replace")
    neg = () if negative is None else (negative["embeds"], negative["states"],
                                       negative["mask"])
    (z_t, states, mask, *neg), idx, n = pipe.programs.pad(text["embeds"], text["states"],
                                                          text["mask"], *neg)
    neg = neg or [None] * 3
    key = stage_key(key, "prior")
    if st.name == "prior":
        if best_of is None:
            best_of = st.config.model.get("sample_candidates", 2)
        if int(best_of) < 1:
            raise UserError(f"prior best_of={best_of} must be at least 1")
        steps, sched = pipe.schedule("prior", steps)
        stats = st.extra.get("stats")
        uncond = pipe.uncond_text("prior")

        def one(k, z_t, s, m, ne, ns, nm, params, stats, sched, uncond):
            if ne is not None:
                uncond = {"embeds": ne, "states": ns, "mask": nm}
            return stage_fns.prior_sample(params, st.model, st.config.model,
                                          st.config.diffusion, stats, z_t, s, m, k,
                                          sched=sched, guidance=guidance,
                                          best_of=int(best_of), uncond=uncond)

        def fn(params, stats, sched, uncond, key, idx, z_t, s, m, ne, ns, nm):
            return per_example(functools.partial(one, params=params, stats=stats,
                                                 sched=sched, uncond=uncond),
                               example_keys(key, idx), z_t, s, m, ne, ns, nm)
        out = pipe.run_program("prior", st, (steps, guidance, int(best_of), uncond is None,
                                      negative is None), fn,
                        (st.params, stats, sched, uncond, key, idx, z_t, states, mask, *neg))
    else:
        from unclip_jax.models import ar_prior
        codec = st.extra.get("codec")
        if codec is None:
            raise CheckpointError(f"{st.directory} has no AR codec in extra.json; export "
                                  "the AR prior with its fitted codec")

        def one(k, z_t, s, m, params, codec):
            cond = {"z_t": z_t, "text_states": s, "text_mask": m}
            return ar_prior.ar_sample(stage_fns.as_variables(params), st.model, codec, cond, k,
                                      temperature=temperature, guidance_scale=guidance)[0]

        def fn(params, codec, key, idx, z_t, s, m):
            return per_example(functools.partial(one, params=params, codec=codec),
                               example_keys(key, idx), z_t, s, m)
        out = pipe.run_program("ar_prior", st, (guidance, float(temperature)), fn,
                        (st.params, codec, key, idx, z_t, states, mask))
    return np.asarray(out)[:n]


def initial_noise(pipe, n: int, key) -> np.ndarray:
    """The decoder's x_T [n, S, S, 3]: example i from fold_in(fold_in(key, x_T), i)."""
    pipe.require("decoder")
    s = pipe.image_size("decoder")
    return pipe.programs.example_noise(stage_key(key, "x_T"), n, (s, s, 3))


_DECODER_TEXT = ("states", "mask", "embeds", "ids")


def _decoder_text(model, text: dict | None) -> dict | None:
    """The entries of `text` (`encode_text`'s dict) that `model` reads: 'states' [B, L, W],
    'mask' [B, L], and 'embeds' [B, D] (a decoder with `text_embed_dim`) and 'ids' [B, L] int32
    (one with its own caption encoder); UserError when one of those two is missing."""
    if text is None:
        return None
    out = {"states": text["states"], "mask": text["mask"]}
    if getattr(model, "caption_vocab", 0):
        if text.get("ids") is None:
            raise UserError("this decoder has its own caption encoder; pass text=encode_text(...) "
                            "with its token 'ids'")
        out["ids"] = text["ids"]
    if getattr(model, "text_embed_dim", 0):
        if "embeds" not in text:
            raise UserError("this decoder also takes the pooled CLIP text embedding; pass "
                            "text=encode_text(...) with its 'embeds'")
        out["embeds"] = text["embeds"]
    return out


def decoder_sample(pipe, z_i, x_T, key, *, text: dict | None = None, steps=None,
                   guidance=None, eta: float = 0.0, ddim: bool | None = None,
                   negative: dict | None = None, edit: dict | None = None) -> np.ndarray:
    """z_i [B, D], x_T [B, S, S, 3] (+ optional text) → images [B, S, S, 3] in [-1, 1].

    negative: {'embeds', 'states', 'mask', 'z_i' (, 'ids')} of one negative prompt per example
    (`encode_text` plus its z_i); guidance's unconditional half conditions on it (needs
    `text`). edit: sample around a known image (`unclip_jax.sample.editing.edit_decode`)."""
    pipe.require("decoder")
    st = pipe.stages["decoder"]
    steps, sched = pipe.schedule("decoder", steps)
    guidance = pipe.guidance("decoder", guidance)
    ddim = steps_grammar.uses_ddim(steps, st.config.diffusion.sampler) if ddim is None else ddim
    eta = check_eta(eta)
    use_text = text is not None
    if negative is not None and not use_text:
        raise UserError("a negative prompt for the decoder needs the prompt's text too")
    uncond = pipe.uncond_text("decoder") if use_text and negative is None else None
    (z, xt), idx, n = pipe.programs.pad(z_i, x_T)
    cond = pipe.programs.pad_dict(_decoder_text(st.model, text), _DECODER_TEXT)
    key = stage_key(key, "decoder")
    neg = pipe.programs.pad_dict(negative, ("embeds", "states", "mask", "z_i", "ids"))
    ed = pipe.programs.pad_dict(edit, ("x0", "mask"))

    def one(k, z, xt, cond, neg, ed, params, sched, uncond, ed_static):
        if neg is not None:
            uncond = neg
        if ed is not None:
            ed = dict(ed, **ed_static)
        cond = cond or {}
        return stage_fns.decoder_sample(params, st.model, st.config.diffusion, z,
                                        cond.get("states"), cond.get("mask"), xt, k,
                                        sched=sched, guidance=guidance, ddim=ddim, eta=eta,
                                        use_text=use_text, z_t=cond.get("embeds"),
                                        uncond=uncond, edit=ed, caption_ids=cond.get("ids"))

    def fn(params, sched, uncond, ed_static, key, idx, z, xt, cond, neg, ed):
        return per_example(functools.partial(one, params=params, sched=sched, uncond=uncond,
                                             ed_static=ed_static),
                           example_keys(key, idx), z, xt, cond, neg, ed)
    out = pipe.run_program("decoder", st, (steps, guidance, ddim, eta, use_text, uncond is None,
                                    negative is None, edit is None),
                    fn, (st.params, sched, uncond, edit_static(edit), key, idx, z, xt,
                         cond, neg, ed))
    return np.asarray(out)[:n]


def decoder_invert(pipe, z_i, images, *, steps=None, guidance=None) -> np.ndarray:
    """DDIM-invert the decoder (no caption): images [B, S, S, 3] in [-1, 1] given z_i → x_T."""
    pipe.require("decoder")
    st = pipe.stages["decoder"]
    steps, sched = pipe.schedule("decoder", steps)
    guidance = pipe.guidance("decoder", guidance)
    (z, x0), _, n = pipe.programs.pad(z_i, images)

    def one(k, z, x0, params, sched):
        del k
        return stage_fns.decoder_invert(params, st.model, st.config.diffusion, z, None, None,
                                        x0, sched=sched, guidance=guidance, use_text=False)

    def fn(params, sched, z, x0):
        keys = jax.random.split(jax.random.key(0), z.shape[0])
        return per_example(functools.partial(one, params=params, sched=sched), keys, z, x0)
    out = pipe.run_program("decoder_invert", st, (steps, guidance), fn, (st.params, sched, z, x0))
    return np.asarray(out)[:n]


def upsample(pipe, stage: str, low_res, key, *, steps=None, eta: float = 0.0,
             edit: dict | None = None) -> np.ndarray:
    """Upsampler `stage`: clean low-res images [B, s, s, 3] → [B, S, S, 3] in [-1, 1].
    edit: sample around a known image (`unclip_jax.sample.editing.edit_decode`)."""
    pipe.require(stage)
    st = pipe.stages[stage]
    steps, sched = pipe.schedule(stage, steps)
    ddim = steps_grammar.uses_ddim(steps, st.config.diffusion.sampler)
    eta = check_eta(eta)
    size = pipe.image_size(stage)
    (lr,), idx, n = pipe.programs.pad(low_res)
    key = stage_key(key, stage)
    fin = pipe.final_stage(stage)
    if fin is not None:
        k_last = int(fin.config.diffusion.final_steps)
        if k_last > len(sched.timesteps):
            raise UserError(f"{stage} steps={steps!r} has fewer than the {k_last} final "
                            f"steps {fin.name} runs; use more steps")
        final_args = (fin.params, int(np.asarray(sched.timesteps)[k_last - 1]))
    else:
        final_args = None

    def one(k, lr, ed, params, sched, final_args, ed_static):
        final = None if final_args is None else (final_args[0], fin.model, final_args[1])
        if ed is not None:
            ed = dict(ed, **ed_static)
        return stage_fns.upsample(params, st.model, st.config.diffusion, lr, k, sched=sched,
                                  size=size, ddim=ddim, eta=eta, final=final, edit=ed)

    def fn(params, sched, final_args, ed_static, key, idx, lr, ed):
        return per_example(functools.partial(one, params=params, sched=sched,
                                             final_args=final_args, ed_static=ed_static),
                           example_keys(key, idx), lr, ed)
    settings = (steps, ddim, eta, size, None if fin is None else (fin.directory, fin.identity),
                edit is None)
    args = (st.params, sched, final_args, edit_static(edit), key, idx, lr,
            pipe.programs.pad_dict(edit, ("x0", "mask")))
    out = pipe.run_program(stage, st, settings, fn, args)
    return np.asarray(out)[:n]

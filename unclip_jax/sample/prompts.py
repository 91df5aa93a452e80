"""Per-example prompt conditioning of a loaded `UnCLIP`: caption encodings, z_i, and
negative prompts.

A negative prompt replaces what classifier-free guidance's unconditional half conditions
on: for the prior its caption encoding, for the decoder its caption encoding and its z_i (a
prior sample of the negative caption with guidance 1, drawn with the positive example's
key). With negative = prompt, guidance then gives exactly the conditional prediction.
"""
from __future__ import annotations

from typing import Sequence

from unclip_jax.errors import UserError


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
    pipe.require("clip", "tokenizer", "decoder", *(("prior",) if use_prior else ()))
    text = pipe.encode_text(prompts)
    negs = expand_negatives(negative_prompts, prompts, 1)
    prior_kw = dict(steps=prior_steps, best_of=prior_best_of) if use_prior else None
    neg = None if negs is None else negative_conditioning(pipe, negs, key, prior_kw)
    if not use_prior:
        return text, text["embeds"], neg
    z_i = pipe.prior_sample(text, key, guidance=prior_guidance, negative=neg, **prior_kw)
    return text, pipe.finite(pipe.prior_stage.name, z_i), neg

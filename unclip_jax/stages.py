"""The one list of unCLIP stages: their names, their Flax modules, what each is conditioned on.

    clip        CLIP (text + vision towers)             trained on images and captions
    prior       diffusion prior  → z_i                  conditioned on the caption (z_t, tokens)
    ar_prior    autoregressive prior → z_i              conditioned on the caption (z_t, tokens)
    decoder     ADM UNet → 64 px image (preset sizes vary)
                                                        conditioned on z_i (or z_t, see
                                                        `decoder_embedding`) and the tokens
    upsampler1  ADM UNet, low-res → high-res            conditioned on the low-res image
    upsampler2  ADM UNet, low-res → high-res            conditioned on the low-res image

Training (`unclip_jax.train.registry`), the input pipelines (`unclip_jax.data.pipeline`),
sampling (`unclip_jax.sample`) and packaging read these names from here. Importing this
module loads no model code; `build_model` imports the chosen stage's module.
"""
from __future__ import annotations

from unclip_jax.errors import UserError

STAGES = ("clip", "prior", "ar_prior", "decoder", "upsampler1", "upsampler2")
PRIORS = ("prior", "ar_prior")
UPSAMPLERS = ("upsampler1", "upsampler2")

# the inputs each stage is conditioned on (batch keys of `unclip_jax.data.pipeline`); the
# decoder's 'z_i' is the caption's z_t instead for data.decoder_embedding = 'text'
CONDITIONED_ON: dict[str, tuple[str, ...]] = {
    "clip": (),
    "prior": ("z_t", "text_states", "text_mask"),
    "ar_prior": ("z_t", "text_states", "text_mask"),
    "decoder": ("z_i", "text_states", "text_mask"),
    "upsampler1": ("low_res",),
    "upsampler2": ("low_res",),
}
# stages whose training batches read precomputed CLIP embeddings (`unclip-jax embed`)
EMBED_STAGES = tuple(s for s in STAGES if {"z_i", "z_t"} & set(CONDITIONED_ON[s]))
DECODER_EMBEDDINGS = {"image": "z_i", "text": "z_t"}


def check_stage(name: str, what: str = "stage") -> str:
    """`name` if it is one of `STAGES`, else a UserError listing them."""
    if name not in STAGES:
        raise UserError(f"unknown {what} {name!r}; choose one of {', '.join(STAGES)}")
    return name


def decoder_embedding(data) -> str:
    """The embedding a decoder is conditioned on, 'z_i' or 'z_t', from a config's `data`
    section (`decoder_embedding`: 'image', the default, or 'text')."""
    value = str(data.get("decoder_embedding", "image"))
    if value not in DECODER_EMBEDDINGS:
        raise UserError(f"data.decoder_embedding={value!r}; choose 'image' (unCLIP: z_i) or "
                        "'text' (baseline: the caption's CLIP text embedding z_t)")
    return DECODER_EMBEDDINGS[value]


def build_model(stage: str, model):
    """The Flax module of `stage` from its config's `model` section (compute dtype:
    `model.dtype`)."""
    check_stage(stage)
    if stage == "clip":
        from unclip_jax.clip.model import CLIP
        return CLIP.from_config(model)
    if stage == "prior":
        from unclip_jax.models import prior
        return prior.from_config(model)
    if stage == "ar_prior":
        from unclip_jax.models import ar_prior
        return ar_prior.from_config(model)
    from unclip_jax.models.unet import UNet
    return UNet.from_config(model)

"""What a stage is conditioned on, read from its config — shared by training (the input
pipelines) and sampling, and importable without TensorFlow."""
from __future__ import annotations

from unclip_jax.errors import UserError

DECODER_EMBEDDINGS = {"image": "z_i", "text": "z_t"}


def decoder_embedding(data) -> str:
    """The embedding a decoder is conditioned on, 'z_i' or 'z_t', from a config's `data`
    section (`decoder_embedding`: 'image', the default, or 'text')."""
    value = str(data.get("decoder_embedding", "image"))
    if value not in DECODER_EMBEDDINGS:
        raise UserError(f"data.decoder_embedding={value!r}; choose 'image' (unCLIP: z_i) or "
                        "'text' (baseline: the caption's CLIP text embedding z_t)")
    return DECODER_EMBEDDINGS[value]

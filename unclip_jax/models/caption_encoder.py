"""The decoder's own caption encoder: GLIDE's text transformer, which unCLIP's decoder keeps.

The paper's decoder (§2.1) conditions on z_i through the time embedding and four extra
context tokens "concatenated to the sequence of outputs from the GLIDE text encoder": the
caption reaches it through a transformer trained with the decoder, not through CLIP. A decoder
that reads only CLIP's token states (as Karlo's does) can tell apart only the words its CLIP
tells apart; a CLIP trained on little data may map two words to nearly the same states (the
shapes CLIP: 'circle' / 'square' and 'triangle' / 'star' at 0.993 / 0.999 cosine, docs/results.md),
and the decoder then cannot draw the difference from the caption.

`CaptionEncoder` embeds the caption's token ids (the CLIP tokenizer's, so its [B, L] lines up
with CLIP's token states and shares their mask), runs a small bidirectional transformer over
the valid tokens and projects each token to the decoder's context width. The UNet ADDS this
per token to the projected CLIP token states. The output projection starts at zero, so adding
the encoder to a trained decoder leaves what it computes unchanged until training moves it
(`train.init_from` places such a decoder's export this way).

Parameters (under the UNet's `caption_encoder`): `embeddings/{token_embedding,
position_embedding}` (the CLIP text-embedding layout), `transformer/layers_{i}`,
`final_layer_norm`, `out_proj` (zero-initialised).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from unclip_jax.clip.model import TextEmbeddings
from unclip_jax.models.layers import LayerNorm, Transformer, dense


class CaptionEncoder(nn.Module):
    """ids [B, L] int32 (L ≤ length), valid [B, L] bool → per-token context [B, L, out_width]
    float32; rows of invalid tokens are zero. Every token attends to the valid tokens and to
    itself (so a fully masked caption — a dropped one — gives finite zeros, not NaN)."""
    vocab_size: int
    length: int
    width: int
    layers: int
    num_heads: int
    out_width: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids, valid):
        L = ids.shape[1]
        x = TextEmbeddings(self.vocab_size, self.length, self.width, name="embeddings")(ids)
        eye = jnp.eye(L, dtype=bool)[None, None]
        mask = valid[:, None, None, :] | eye
        x, _ = Transformer(self.width, self.layers, self.num_heads, dtype=self.dtype,
                           name="transformer")(x.astype(self.dtype), mask)
        x = LayerNorm(dtype=self.dtype, name="final_layer_norm")(x)
        out = dense(self.out_width, (None, "embed"), "out_proj", self.dtype,
                    kernel_init=nn.initializers.zeros)(x)
        return jnp.where(valid[..., None], out.astype(jnp.float32), 0.0)


__all__ = ["CaptionEncoder"]

"""ADM/GLIDE UNet in two roles: the unCLIP decoder and the (convolution-only) upsamplers.

Built from a config's `model` section with `UNet.from_config(cfg.model)`:

    model = UNet.from_config(cfg.model)
    params = model.init(key, x_t, t, z_i=..., text_states=..., text_mask=...)
    out = model.apply(params, x_t, t, ..., train=True, rngs={'dropout': key})

Shapes: x_t [B, H, W, in_channels] NHWC in [-1, 1] (noised image), t [B] original timesteps
(int or float), z_i [B, embed_dim] CLIP image embedding, text_states [B, L, text_width] CLIP
text token states, text_mask [B, L] bool (True = real token), z_t [B, text_embed_dim] CLIP
text embedding (only with model.text_embed_dim > 0), caption_ids [B, L] int32 the caption's
token ids, the same tokenization as text_states (only with model.caption_vocab > 0), low_res
[B, h, w, low_res_channels] in [-1, 1], drop_text / drop_image_embed [B] bool. Output
[B, H, W, out_channels] float32 (decoder with learned variance: ε then the variance
interpolation v; otherwise ε).

Module tree (diffusers `UNet2DConditionModel` / `UNet2DModel` names, as Karlo's weights use):

  time_embedding/{linear_1, linear_2}     sinusoid(model_channels) → MLP → E = 4·model_channels
  image_embed_proj                        z_i → E, ADDED to the time embedding     (decoder)
  text_embed_proj                         z_t → E, also added (text_embed_dim > 0, Karlo)
  null_image_embed                        [embed_dim] used for a dropped z_i when
                                          learned_null_image_embed (Karlo); else zeros
  clip_tokens_proj                        z_i → clip_tokens·context_dim; output index
                                          c·clip_tokens + j is channel c of token j  (decoder)
  text_proj, text_norm                    text_states → context_dim, LayerNorm     (decoder)
  caption_encoder                         caption_ids → context_dim per token, ADDED to the
                                          projected text states (caption_vocab > 0; the
                                          decoder's own text encoder, `caption_encoder.py`)
  conv_in                                 3×3, in_channels (+ low_res_channels) → model_channels
  down_blocks_{i}                         level i (resolution image_size / 2^i): resnets_{j},
                                          attentions_{j}, downsamplers_0 (not on the last level)
  mid_block                               resnets_0, attentions_0 (if any attention), resnets_1
  up_blocks_{u}                           u = 0 is the lowest resolution: num_res_blocks + 1
                                          × (skip concat, resnets_{j}, attentions_{j}),
                                          upsamplers_0 (not on the last)
  conv_norm_out, conv_out                 GroupNorm – SiLU – zero-initialised 3×3 conv

Context (decoder): [clip tokens (clip_tokens); projected text tokens (L)] of width
context_dim, seen by every attention block as extra keys/values (GLIDE encoder_kv).

Classifier-free guidance: the caller passes per-example flags. `drop_image_embed` zeroes z_i
(so the time-embedding term and the clip tokens come from a zero embedding). `drop_text`
MASKS the text: the token states are zeroed and their mask is turned off, so attention sees
only the clip tokens and the image; no learned null text is needed. The caption encoder's
rows follow the same mask (zero where it is off). Either way the output does
not depend on the dropped input.

Upsampler role: `low_res` is resized (bilinear, `jax.image.resize`) to x_t's size and
concatenated to it as extra input channels. No attention and no size-dependent parameters,
so a model trained on crops runs at any size divisible by 2^(levels−1).

Attention is placed by the CONFIGURED `image_size`: level i has attention iff
image_size // 2^i is in `attention_resolutions`, whatever size the model is run at.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from unclip_jax.errors import UserError
from unclip_jax.models.caption_encoder import CaptionEncoder
from unclip_jax.models.layers import LayerNorm, dense, timestep_embedding
from unclip_jax.models.unet_blocks import (CONV_AXES, DownBlock, GroupNorm, MidBlock, UpBlock,
                                           constrain, conv)

CONFIG_FIELDS = (
    "image_size", "in_channels", "out_channels", "model_channels", "channel_mult",
    "num_res_blocks", "attention_resolutions", "num_head_channels", "dropout",
    "resblock_updown", "use_scale_shift_norm", "norm_groups", "low_res_channels", "embed_dim",
    "clip_tokens", "text_width", "context_dim", "remat", "dtype",
    "text_embed_dim", "learned_null_image_embed", "normalize_z_i",
    "caption_vocab", "caption_len", "caption_layers",
)
INFO_FIELDS = ("kind", "text_len")   # config keys the module does not need


class UNet(nn.Module):
    """ADM UNet; see the module docstring for the tree, roles and shapes."""
    model_channels: int
    channel_mult: Sequence[int] = (1, 2, 3, 4)
    num_res_blocks: int = 2
    attention_resolutions: Sequence[int] = ()
    image_size: int = 64
    in_channels: int = 3
    out_channels: int = 3
    num_head_channels: int = 64
    dropout: float = 0.0
    resblock_updown: bool = True
    use_scale_shift_norm: bool = True
    norm_groups: int = 32
    low_res_channels: int = 0    # > 0: upsampler, low-res image concatenated to the input
    embed_dim: int = 0           # > 0: z_i conditioning (time embedding + clip tokens)
    clip_tokens: int = 4         # extra context tokens made from z_i
    text_width: int = 0          # > 0: CLIP text token states of this width as context
    context_dim: int = 0         # width of the context tokens after projection
    text_embed_dim: int = 0      # > 0: z_t [B, text_embed_dim] also added to the time embedding
    learned_null_image_embed: bool = False   # dropped z_i → learned `null_image_embed`, not 0
    normalize_z_i: bool = False  # rescale z_i to norm √embed_dim first (see `conditioning`)
    caption_vocab: int = 0       # > 0: own caption encoder over token ids < caption_vocab
    caption_len: int = 0         # its positional table (≥ the caption length L)
    caption_layers: int = 2      # its transformer blocks (width context_dim)
    remat: bool = False
    dtype: Any = jnp.float32

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "UNet":
        """Build from a config `model` section (`config_schema.unet`). Unknown keys are errors."""
        cfg = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
        if cfg.get("kind", "unet") != "unet":
            raise UserError(f"model.kind is {cfg['kind']!r}, not 'unet'; pass a decoder or "
                            f"upsampler config")
        unknown = sorted(set(cfg) - set(CONFIG_FIELDS) - set(INFO_FIELDS))
        if unknown:
            raise UserError(f"unknown UNet config keys {unknown}; valid keys: "
                            f"{sorted(CONFIG_FIELDS)}")
        kw = {k: cfg[k] for k in CONFIG_FIELDS if k in cfg}
        for k in ("channel_mult", "attention_resolutions"):
            if k in kw:
                kw[k] = tuple(int(v) for v in kw[k])
        if "dtype" in kw:
            kw["dtype"] = jnp.dtype(kw["dtype"])
        return cls(**kw)

    # --- structure -------------------------------------------------------------------------
    def level_attention(self, level: int) -> bool:
        return self.image_size // 2 ** level in tuple(self.attention_resolutions)

    def check_config(self):
        levels = [self.image_size // 2 ** i for i in range(len(self.channel_mult))]
        bad = [r for r in self.attention_resolutions if r not in levels]
        if bad:
            raise UserError(f"attention_resolutions {bad} are not level resolutions {levels} of "
                            f"image_size {self.image_size}; pick from those")
        if self.embed_dim and not self.context_dim:
            raise UserError("model.embed_dim > 0 needs model.context_dim > 0 (width of the "
                            "context tokens)")
        if self.text_width and not self.context_dim:
            raise UserError("model.text_width > 0 needs model.context_dim > 0")
        if self.caption_vocab and not (self.text_width and self.caption_len > 0):
            raise UserError("model.caption_vocab > 0 (the decoder's own caption encoder) needs "
                            "model.text_width > 0 and model.caption_len > 0 (the caption length)")

    def check_inputs(self, x_t, t, z_i, text_states, text_mask, low_res, z_t=None,
                     caption_ids=None):
        if x_t.ndim != 4 or x_t.shape[-1] != self.in_channels:
            raise UserError(f"x_t must be NHWC [B, H, W, {self.in_channels}], got {x_t.shape}")
        B, H, W, _ = x_t.shape
        f = 2 ** (len(self.channel_mult) - 1)
        if H % f or W % f:
            raise UserError(f"image size {H}×{W} is not divisible by {f} (2^(levels-1)); "
                            f"crop or pad it to a multiple of {f}")
        if jnp.shape(t) != (B,):
            raise UserError(f"t must be [B] = [{B}] timesteps, got shape {jnp.shape(t)}")
        if self.low_res_channels:
            if low_res is None:
                raise UserError("this UNet is an upsampler: pass low_res=[B, h, w, "
                                f"{self.low_res_channels}] (the low-resolution image)")
            if low_res.ndim != 4 or low_res.shape[0] != B or \
                    low_res.shape[-1] != self.low_res_channels:
                raise UserError(f"low_res must be [{B}, h, w, {self.low_res_channels}], got "
                                f"{low_res.shape}")
        elif low_res is not None:
            raise UserError("low_res given but model.low_res_channels is 0; use an upsampler "
                            "config or drop low_res")
        if self.embed_dim:
            if z_i is None or z_i.shape != (B, self.embed_dim):
                raise UserError(f"this decoder needs z_i=[B, {self.embed_dim}] (CLIP image "
                                f"embedding; use drop_image_embed to drop it), got "
                                f"{None if z_i is None else z_i.shape}")
        elif z_i is not None:
            raise UserError("z_i given but model.embed_dim is 0 (unconditional model)")
        if self.text_embed_dim:
            if z_t is None or z_t.shape != (B, self.text_embed_dim):
                raise UserError(f"this decoder needs z_t=[B, {self.text_embed_dim}] (CLIP text "
                                f"embedding), got {None if z_t is None else z_t.shape}")
        elif z_t is not None:
            raise UserError("z_t given but model.text_embed_dim is 0; drop z_t")
        if self.text_width:
            if text_states is None or text_states.ndim != 3 or text_states.shape[0] != B or \
                    text_states.shape[-1] != self.text_width:
                raise UserError(f"this decoder needs text_states=[B, L, {self.text_width}] "
                                f"(CLIP token states; use drop_text to drop them), got "
                                f"{None if text_states is None else text_states.shape}")
            if text_mask is not None and text_mask.shape != text_states.shape[:2]:
                raise UserError(f"text_mask must be [B, L] = {text_states.shape[:2]}, got "
                                f"{text_mask.shape}")
        elif text_states is not None:
            raise UserError("text_states given but model.text_width is 0")
        if self.caption_vocab:
            L = text_states.shape[1]
            if caption_ids is None or caption_ids.shape != (B, L) or \
                    not jnp.issubdtype(caption_ids.dtype, jnp.integer):
                raise UserError(f"this decoder has its own caption encoder: pass caption_ids="
                                f"[B, L] = [{B}, {L}] integer token ids (the tokenization of "
                                f"text_states), got "
                                f"{None if caption_ids is None else caption_ids.shape}")
            if L > self.caption_len:
                raise UserError(f"{L} caption tokens exceed model.caption_len "
                                f"{self.caption_len}")
        elif caption_ids is not None:
            raise UserError("caption_ids given but model.caption_vocab is 0 (this decoder has no "
                            "caption encoder); drop caption_ids")

    # --- forward -----------------------------------------------------------------------------
    def conditioning(self, emb, z_i, text_states, text_mask, drop_text, drop_image_embed,
                     z_t=None, caption_ids=None):
        """Add z_i (and z_t) to the time embedding and build the context.
        → (emb, context, context_mask).

        With `normalize_z_i` the decoder sees only z_i's direction: CLIP embeddings are
        compared by cosine and their norm carries nothing, so a prior's unit-norm sample, a
        raw CLIP image embedding and a CLIP text embedding (the paper's §5.1 zero-shot case)
        all condition it the same way. z_i is rescaled to norm √embed_dim (unit RMS per
        component), not 1: a unit vector would reach the image-embedding projections ~√D
        times weaker than a raw CLIP embedding at initialisation, and a 16 px decoder trained
        so for 2400 steps still got background colours wrong (mean colour error 55.6 vs 21.8
        / 255 with raw embeddings). A dropped z_i is replaced after rescaling.
        """
        B = emb.shape[0]
        contexts, masks = [], []
        if self.text_embed_dim:
            zt = z_t.astype(jnp.float32)
            if drop_text is not None:
                zt = jnp.where(jnp.asarray(drop_text, bool)[:, None], 0.0, zt)
            emb = emb + dense(emb.shape[-1], (None, "embed"), "text_embed_proj", self.dtype)(zt)
        if self.embed_dim:
            z = z_i.astype(jnp.float32)
            if self.normalize_z_i:   # unit RMS per component: norm √D
                z = z * (self.embed_dim ** 0.5 /
                         jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12))
            null = 0.0
            if self.learned_null_image_embed:
                null = self.param("null_image_embed", nn.with_logical_partitioning(
                    nn.initializers.zeros, (None,)), (self.embed_dim,), jnp.float32)[None]
            if drop_image_embed is not None:
                z = jnp.where(jnp.asarray(drop_image_embed, bool)[:, None], null, z)
            emb = emb + dense(emb.shape[-1], (None, "embed"), "image_embed_proj", self.dtype)(z)
            n, c = self.clip_tokens, self.context_dim
            if n:
                tok = dense(n * c, (None, "embed"), "clip_tokens_proj", self.dtype)(z)
                contexts.append(tok.reshape(B, c, n).transpose(0, 2, 1))
                masks.append(jnp.ones((B, n), bool))
        if self.text_width:
            s = text_states.astype(jnp.float32)
            m = (jnp.ones(s.shape[:2], bool) if text_mask is None
                 else jnp.asarray(text_mask, bool))
            if drop_text is not None:
                drop = jnp.asarray(drop_text, bool)
                s = jnp.where(drop[:, None, None], 0.0, s)
                m = m & ~drop[:, None]
            s = dense(self.context_dim, (None, "embed"), "text_proj", self.dtype)(s)
            s = LayerNorm(dtype=self.dtype, name="text_norm")(s)
            if self.caption_vocab:
                # ids of a dropped caption are masked out (m) and their rows come back zero
                s = s + CaptionEncoder(
                    self.caption_vocab, self.caption_len, self.context_dim, self.caption_layers,
                    max(1, self.context_dim // self.num_head_channels), self.context_dim,
                    self.dtype, name="caption_encoder")(jnp.asarray(caption_ids, jnp.int32),
                                                        m).astype(self.dtype)
            contexts.append(s)
            masks.append(m)
        if not contexts:
            return emb, None, None
        context = jnp.concatenate([c.astype(self.dtype) for c in contexts], axis=1)
        return emb, context, jnp.concatenate(masks, axis=1)

    @nn.compact
    def __call__(self, x_t, t, *, z_i=None, text_states=None, text_mask=None, low_res=None,
                 drop_text=None, drop_image_embed=None, z_t=None, caption_ids=None,
                 train: bool = False):
        self.check_config()
        self.check_inputs(x_t, t, z_i, text_states, text_mask, low_res, z_t, caption_ids)
        deterministic = not train
        mc, E = self.model_channels, 4 * self.model_channels

        emb = timestep_embedding(t, mc)
        emb = TimeEmbedding(E, self.dtype, name="time_embedding")(emb)
        emb, context, context_mask = self.conditioning(
            emb, z_i, text_states, text_mask, drop_text, drop_image_embed, z_t, caption_ids)

        h = x_t.astype(jnp.float32)
        if self.low_res_channels:
            B, H, W, _ = x_t.shape
            up = jax.image.resize(low_res.astype(jnp.float32),
                                  (B, H, W, self.low_res_channels), "bilinear")
            h = jnp.concatenate([h, up], axis=-1)
        # input channels are few (3–6): shard only the output channels of conv_in.
        h = constrain(conv(mc, 3, "conv_in", self.dtype,
                           axes=(None, None, None, "conv_out"))(h.astype(self.dtype)))

        common = dict(num_res_blocks=self.num_res_blocks, num_head_channels=self.num_head_channels,
                      dropout=self.dropout, use_scale_shift_norm=self.use_scale_shift_norm,
                      norm_groups=self.norm_groups, resblock_updown=self.resblock_updown,
                      remat=self.remat, dtype=self.dtype)
        levels = len(self.channel_mult)
        skips = [h]
        for i, mult in enumerate(self.channel_mult):
            h, s = DownBlock(mult * mc, attention=self.level_attention(i),
                             downsample=i < levels - 1, name=f"down_blocks_{i}", **common)(
                h, emb, context, context_mask, deterministic)
            skips.extend(s)

        h = MidBlock(self.channel_mult[-1] * mc, attention=bool(self.attention_resolutions),
                     name="mid_block", **common)(h, emb, context, context_mask, deterministic)

        for u, i in enumerate(reversed(range(levels))):
            n = self.num_res_blocks + 1
            level_skips = [skips.pop() for _ in range(n)]
            h = UpBlock(self.channel_mult[i] * mc, attention=self.level_attention(i),
                        upsample=i > 0, name=f"up_blocks_{u}", **common)(
                h, level_skips, emb, context, context_mask, deterministic)
        assert not skips, "skip bookkeeping"

        h = nn.silu(GroupNorm(self.norm_groups, name="conv_norm_out")(h)).astype(self.dtype)
        # few output channels (3 or 6): shard the input channels of conv_out instead.
        out = conv(self.out_channels, 3, "conv_out", self.dtype, zero_init=True,
                   axes=(None, None, "conv_in", None))(h)
        return out.astype(jnp.float32)


class TimeEmbedding(nn.Module):
    """linear_1 – SiLU – linear_2: [B, model_channels] sinusoid → [B, features]."""
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = dense(self.features, ("embed", "mlp"), "linear_1", self.dtype)(x)
        return dense(self.features, ("mlp", "embed"), "linear_2", self.dtype)(nn.silu(x))


def build_unet(cfg) -> UNet:
    """`UNet.from_config` for a whole stage config or its `model` section."""
    return UNet.from_config(cfg["model"] if "model" in cfg else cfg)


__all__ = ["UNet", "TimeEmbedding", "build_unet", "CONV_AXES"]

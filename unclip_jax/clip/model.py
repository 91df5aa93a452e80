"""CLIP text and vision transformers in Flax Linen, parameter layout mirroring HF `CLIPModel`.

Shapes: B batch, L text length (≤ context_length), W text width, Wv vision width,
N = (image_size / patch_size)² patches, D joint embedding size (`embed_dim`).

Parameter tree (names mirror Hugging Face, so `convert.py` maps them 1:1):
  text_model/embeddings/{token_embedding,position_embedding}/embedding
  text_model/encoder/layers_{i}/...        (unclip_jax.models.layers.Transformer)
  text_model/final_layer_norm/ln/{scale,bias}
  vision_model/embeddings/{patch_embedding/kernel [p,p,3,Wv], class_embedding [Wv],
                           position_embedding/embedding [N+1,Wv]}
  vision_model/{pre_layrnorm,encoder,post_layernorm}
  text_projection/kernel [W,D], visual_projection/kernel [Wv,D], logit_scale []

Text pooling follows HF: with `eos_token_id == 2` (legacy configs) the pooled position is the
argmax of the token ids (the end-of-text token has the largest id, as in OpenAI's vocabulary
and in tokenizers made by `tokenizer.build_tokenizer`); otherwise it is the first position
whose id equals `eos_token_id`. Tokens after the pooled position are padding (`mask` False);
thanks to the causal mask they never influence valid positions.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from unclip_jax.errors import UserError
from unclip_jax.models.layers import LayerNorm, Transformer, causal_mask, dense

LEGACY_EOS_TOKEN_ID = 2


def normalize(x, axis: int = -1, eps: float = 1e-12):
    """L2-normalise `x` along `axis` in float32 (zero vectors stay zero)."""
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


def pooled_index(tokens, eos_token_id: int):
    """Position of the end-of-text token per row: tokens [B, L] int → [B] int32 (HF's rule)."""
    tokens = jnp.asarray(tokens)
    if eos_token_id == LEGACY_EOS_TOKEN_ID:
        return jnp.argmax(tokens, axis=-1).astype(jnp.int32)
    return jnp.argmax(tokens == eos_token_id, axis=-1).astype(jnp.int32)


def _embed(num: int, features: int, axes, name: str) -> nn.Embed:
    return nn.Embed(num, features, param_dtype=jnp.float32, name=name,
                    embedding_init=nn.with_logical_partitioning(
                        nn.initializers.normal(0.02), axes))


class TextEmbeddings(nn.Module):
    """tokens [B, L] int → token + learned position embeddings [B, L, W] (float32)."""
    vocab_size: int
    context_length: int
    width: int

    @nn.compact
    def __call__(self, tokens):
        tok = _embed(self.vocab_size, self.width, ("vocab", "embed"), "token_embedding")(tokens)
        pos = _embed(self.context_length, self.width, (None, "embed"), "position_embedding")
        return tok + pos.embedding[None, : tokens.shape[1]]


def sincos_2d(grid: int, width: int, temperature: float = 10_000.0) -> jnp.ndarray:
    """Fixed 2-D sine–cosine position codes for a grid × grid patch layout, with a zero row for
    the class token in front: [1 + grid², width] float32, values in [-1, 1].

    The first quarter of the channels are sin(y·ω), then cos(y·ω), sin(x·ω), cos(x·ω), with
    frequencies ω = temperature^(-k / (width/4)), k = 0 … width/4 − 1 (the layout of
    big_vision's `posemb_sincos_2d`); patches are row-major, y the row index.
    """
    if width % 4:
        raise UserError(f"sincos2d position codes need a vision width divisible by 4, got {width}")
    y, x = jnp.meshgrid(jnp.arange(grid, dtype=jnp.float32),
                        jnp.arange(grid, dtype=jnp.float32), indexing="ij")
    omega = temperature ** (-jnp.arange(width // 4, dtype=jnp.float32) / (width // 4))
    ya = y.reshape(-1)[:, None] * omega[None]
    xa = x.reshape(-1)[:, None] * omega[None]
    codes = jnp.concatenate([jnp.sin(ya), jnp.cos(ya), jnp.sin(xa), jnp.cos(xa)], axis=1)
    return jnp.concatenate([jnp.zeros((1, width), jnp.float32), codes], axis=0)


POSITION_INITS = ("normal", "sincos2d")


class VisionEmbeddings(nn.Module):
    """images [B, S, S, 3] → [B, 1 + N, Wv]: class token then patches, plus learned positions.

    `position_init` chooses the learned position table's start: "normal" (std 0.02, as Hugging
    Face CLIP) or "sincos2d" (`sincos_2d`, amplitude 1: a position signal as strong as the
    patch content from the first step; the table is still a trained parameter of the same
    shape, so checkpoints stay interchangeable).
    """
    image_size: int
    patch_size: int
    width: int
    dtype: Any = jnp.float32
    position_init: str = "normal"

    @nn.compact
    def __call__(self, images):
        p = self.patch_size
        patches = nn.Conv(
            self.width, (p, p), strides=(p, p), padding="VALID", use_bias=False,
            dtype=self.dtype, param_dtype=jnp.float32, name="patch_embedding",
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), (None, None, "conv_in", "embed")))(images)
        B = patches.shape[0]
        patches = patches.reshape(B, -1, self.width).astype(jnp.float32)
        cls = self.param("class_embedding",
                         nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)),
                         (self.width,), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls, (B, 1, self.width)), patches], axis=1)
        grid = self.image_size // p
        if self.position_init == "sincos2d":
            pos = nn.Embed(grid * grid + 1, self.width, param_dtype=jnp.float32,
                           name="position_embedding",
                           embedding_init=nn.with_logical_partitioning(
                               lambda *_: sincos_2d(grid, self.width), (None, "embed")))
        elif self.position_init == "normal":
            pos = _embed(grid * grid + 1, self.width, (None, "embed"), "position_embedding")
        else:
            raise UserError(f"vision.position_init {self.position_init!r}: choose one of "
                            f"{POSITION_INITS}")
        return x + pos.embedding[None]


class TextTransformer(nn.Module):
    """tokens [B, L] → dict(states [B, L, W] after final LN, pooled [B, W], mask [B, L] bool)."""
    vocab_size: int
    context_length: int
    width: int
    layers: int
    heads: int
    mlp_ratio: float
    activation: str
    eos_token_id: int
    layer_norm_eps: float = 1e-5
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens):
        L = tokens.shape[1]
        x = TextEmbeddings(self.vocab_size, self.context_length, self.width,
                           name="embeddings")(tokens).astype(self.dtype)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        x, _ = Transformer(self.width, self.layers, self.heads, self.mlp_ratio, self.activation,
                           self.layer_norm_eps, remat=self.remat, dtype=self.dtype,
                           name="encoder")(x, causal_mask(L))
        states = LayerNorm(self.layer_norm_eps, self.dtype, name="final_layer_norm")(x)
        idx = pooled_index(tokens, self.eos_token_id)
        pooled = jnp.take_along_axis(states, idx[:, None, None], axis=1)[:, 0]
        mask = jnp.arange(L)[None, :] <= idx[:, None]
        return dict(states=states, pooled=pooled, mask=mask)


class VisionTransformer(nn.Module):
    """images [B, S, S, 3] (CLIP-normalised) → dict(states [B, 1+N, Wv] encoder output,
    pooled [B, Wv] = post_layernorm(class token))."""
    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int
    mlp_ratio: float
    activation: str
    layer_norm_eps: float = 1e-5
    remat: bool = False
    dtype: Any = jnp.float32
    position_init: str = "normal"

    @nn.compact
    def __call__(self, images):
        x = VisionEmbeddings(self.image_size, self.patch_size, self.width, self.dtype,
                             self.position_init, name="embeddings")(images.astype(self.dtype))
        x = LayerNorm(self.layer_norm_eps, self.dtype, name="pre_layrnorm")(x)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        states, _ = Transformer(self.width, self.layers, self.heads, self.mlp_ratio,
                                self.activation, self.layer_norm_eps, remat=self.remat,
                                dtype=self.dtype, name="encoder")(x)
        pooled = LayerNorm(self.layer_norm_eps, self.dtype, name="post_layernorm")(states[:, 0])
        return dict(states=states, pooled=pooled)


class CLIP(nn.Module):
    """CLIP: text and vision towers with bias-free projections into a joint D-dim space.

    Build with `CLIP.from_config(model_cfg)` (the `model` section of
    `unclip_jax.config_schema.clip_model`). Methods (use `model.apply(params, ..., method=...)`):
      encode_text(tokens [B, L] int32) → dict(embeds [B, D] f32 unnormalised, states [B, L, W],
                                               mask [B, L] bool, pooled [B, W])
      encode_image(images [B, S, S, 3] CLIP-normalised) → dict(embeds [B, D] f32,
                                               pooled [B, Wv], states [B, 1+N, Wv])
      __call__(tokens, images) → (text_embeds, image_embeds, logit_scale) (unnormalised embeds,
                                               logit_scale is the raw log-scale parameter)
    """
    embed_dim: int
    vocab_size: int
    context_length: int
    text_width: int
    text_layers: int
    text_heads: int
    text_mlp_ratio: float
    text_activation: str
    eos_token_id: int
    pad_token_id: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp_ratio: float
    vision_activation: str
    layer_norm_eps: float = 1e-5
    logit_scale_init: float = 2.6592
    remat: bool = False
    dtype: Any = jnp.float32
    vision_position_init: str = "normal"

    @classmethod
    def from_config(cls, cfg) -> "CLIP":
        """A CLIP from a `model` ConfigDict (`unclip_jax.config_schema.clip_model`)."""
        cfg = model_config(cfg)
        t, v = cfg.text, cfg.vision
        if v.image_size % v.patch_size:
            raise UserError(f"CLIP vision.image_size {v.image_size} is not a multiple of "
                            f"vision.patch_size {v.patch_size}; change the model config")
        return cls(
            embed_dim=int(cfg.embed_dim), vocab_size=int(t.vocab_size),
            context_length=int(t.context_length), text_width=int(t.width),
            text_layers=int(t.layers), text_heads=int(t.heads),
            text_mlp_ratio=float(t.mlp_ratio), text_activation=str(t.activation),
            eos_token_id=int(t.eos_token_id), pad_token_id=int(t.pad_token_id),
            image_size=int(v.image_size), patch_size=int(v.patch_size),
            vision_width=int(v.width), vision_layers=int(v.layers), vision_heads=int(v.heads),
            vision_mlp_ratio=float(v.mlp_ratio), vision_activation=str(v.activation),
            layer_norm_eps=float(cfg.layer_norm_eps),
            logit_scale_init=float(cfg.logit_scale_init), remat=bool(cfg.get("remat", False)),
            dtype=jnp.dtype(cfg.get("dtype", "float32")),
            vision_position_init=str(v.get("position_init", "normal")))

    def setup(self):
        self.text_model = TextTransformer(
            self.vocab_size, self.context_length, self.text_width, self.text_layers,
            self.text_heads, self.text_mlp_ratio, self.text_activation, self.eos_token_id,
            self.layer_norm_eps, self.remat, self.dtype)
        self.vision_model = VisionTransformer(
            self.image_size, self.patch_size, self.vision_width, self.vision_layers,
            self.vision_heads, self.vision_mlp_ratio, self.vision_activation,
            self.layer_norm_eps, self.remat, self.dtype, self.vision_position_init)
        self.text_projection = dense(self.embed_dim, ("embed", None), "text_projection",
                                     self.dtype, use_bias=False)
        self.visual_projection = dense(self.embed_dim, ("embed", None), "visual_projection",
                                       self.dtype, use_bias=False)
        self.logit_scale = self.param(
            "logit_scale", nn.with_logical_partitioning(
                nn.initializers.constant(self.logit_scale_init), ()), (), jnp.float32)

    def encode_text(self, tokens):
        if tokens.ndim != 2:
            raise UserError(f"encode_text expects token ids [batch, length], got shape "
                            f"{tokens.shape}; tokenize captions with clip.tokenizer.Tokenizer")
        if tokens.shape[1] > self.context_length:
            raise UserError(f"{tokens.shape[1]} tokens exceed the CLIP context length "
                            f"{self.context_length}; truncate with clip.tokenizer.Tokenizer")
        out = self.text_model(tokens)
        out["embeds"] = self.text_projection(out["pooled"]).astype(jnp.float32)
        return out

    def encode_image(self, images):
        s = self.image_size
        if images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise UserError(f"encode_image expects CLIP-normalised images [batch, {s}, {s}, 3], "
                            f"got shape {images.shape}; run clip.preprocess.preprocess first")
        out = self.vision_model(images)
        out["embeds"] = self.visual_projection(out["pooled"]).astype(jnp.float32)
        return out

    def __call__(self, tokens, images):
        return (self.encode_text(tokens)["embeds"], self.encode_image(images)["embeds"],
                self.logit_scale)


def model_config(config):
    """The CLIP `model` section from a model config, a CLIP stage config, or a config with a
    `clip` section (a later stage's reference to its CLIP)."""
    if "text" in config and "vision" in config:
        return config
    if "model" in config and "text" in config.model:
        return config.model
    if "clip" in config and "model" in config.clip:
        return config.clip.model
    raise UserError("config has no CLIP model section (expected keys text/vision, model.text "
                    "or clip.model); pass a config_schema.clip_model() section or a stage config")


@functools.partial(jax.jit, static_argnums=(0,))
def _encode_text(model: CLIP, params, tokens):
    return model.apply(params, tokens, method=CLIP.encode_text)


@functools.partial(jax.jit, static_argnums=(0,))
def _encode_images(model: CLIP, params, images):
    from unclip_jax.clip.preprocess import preprocess
    return model.apply(params, preprocess(images, model.image_size), method=CLIP.encode_image)


def _params(params):
    return params if "params" in params else {"params": params}


def clip_encode_text(params, config, tokens) -> dict:
    """Jitted `encode_text` with the model built from `config`; `params` with or without the
    top-level 'params' key. tokens [B, L] int32 → dict(embeds, states, mask, pooled)."""
    model = CLIP.from_config(config)
    return _encode_text(model, _params(params), jnp.asarray(tokens, jnp.int32))


def clip_encode_images(params, config, images) -> dict:
    """Jitted preprocessing + `encode_image`. images: uint8 [0, 255] or float [-1, 1], NHWC of
    any size and 1, 3 or 4 channels (see `preprocess.preprocess`) → dict(embeds, pooled, states)."""
    model = CLIP.from_config(config)
    return _encode_images(model, _params(params), jnp.asarray(images))

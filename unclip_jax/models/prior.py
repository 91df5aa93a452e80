"""unCLIP diffusion prior: a decoder-only causal Transformer that denoises CLIP image embeddings.

Sequence, in order (S = L + 4 positions, width W):
  [text token states (L, projected text_width→W), z_t (projected embed_dim→W),
   timestep embedding (sinusoidal → MLP), noised z_i = x_t (projected), learned query]
plus learned positional embeddings. Attention is causal, and keys at invalid text tokens are
masked out. After a final LayerNorm the output at the query position, projected to embed_dim,
is the predicted *unnoised* embedding x0 (the prior is trained with MSE on x0).

Classifier-free guidance: where `drop_text[b]` is True the text token states are replaced by
learned null states [L, W] (all treated as valid) and the z_t token by a learned null token
[W], so the example's output depends on neither.

Embedding normalisation (`model.normalize`), applied by the trainer before noising and undone
after sampling with `denormalize_embed`:
  'scale'    x → x · embed_scale / ‖x‖  (paper: 17.2); undone as x / embed_scale, which lands on
             the unit sphere (CLIP embeddings are compared by cosine, their norm carries nothing).
  'meanstd'  x → (x − mean) / std with per-dimension dataset statistics. The statistics are a
             small pytree `stats = {'mean': [D], 'std': [D]}` made by `embedding_stats` over the
             training z_i; it is kept beside the parameters (export.py's extra.json, via
             `stats_to_json` / `stats_from_json`) and passed to the two functions explicitly.

Sharding: input projections' kernels are [in, W] with axes (None, 'embed'), the output
projection [W, D] has ('embed', None); the Transformer uses models/layers.py's axes.

Units: embeddings are CLIP joint-space vectors [B, D]; timesteps are integer indices into the
*original* (training) schedule, 0 ≤ t < T.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.diffusion import samplers, schedules
from unclip_jax.diffusion.guidance import classifier_free_guidance
from unclip_jax.errors import UserError
from unclip_jax.models.layers import (LayerNorm, MLP, Transformer, causal_mask, dense,
                                      timestep_embedding)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
NORMALIZE_CHOICES = ("scale", "meanstd")


def compute_dtype(name: str):
    """'float32' | 'bfloat16' → jnp dtype (UserError otherwise)."""
    try:
        return DTYPES[str(name)]
    except KeyError:
        raise UserError(f"model.dtype={name!r} is not supported; set it to one of "
                        f"{sorted(DTYPES)}") from None


# ----------------------------------------------------------------------------- normalisation

def embedding_stats(z_i) -> dict[str, np.ndarray]:
    """Per-dimension mean and std of training embeddings z_i [N, D] → {'mean': [D], 'std': [D]}.

    float32 numpy; std is floored at 1e-6 so constant dimensions do not divide by zero.
    """
    z = np.asarray(z_i, np.float64)
    if z.ndim != 2 or z.shape[0] < 2:
        raise UserError(f"embedding_stats needs z_i of shape [N>=2, D], got {z.shape}")
    return {"mean": z.mean(0).astype(np.float32),
            "std": np.maximum(z.std(0), 1e-6).astype(np.float32)}


def stats_to_json(stats: Mapping[str, Any] | None) -> dict | None:
    """Stats pytree → JSON-able dict (lists of floats) for extra.json."""
    if stats is None:
        return None
    return {k: np.asarray(v, np.float32).tolist() for k, v in stats.items()}


def stats_from_json(d: Mapping[str, Any] | None) -> dict | None:
    """Inverse of `stats_to_json`."""
    if d is None:
        return None
    return {k: np.asarray(v, np.float32) for k, v in d.items()}


def _check_normalize(cfg, stats):
    mode = cfg.normalize
    if mode not in NORMALIZE_CHOICES:
        raise UserError(f"model.normalize={mode!r} is unknown; set it to one of "
                        f"{NORMALIZE_CHOICES}")
    if mode == "meanstd" and stats is None:
        raise UserError("model.normalize='meanstd' needs dataset statistics: compute them with "
                        "unclip_jax.models.prior.embedding_stats(z_i) and pass stats=...")
    return mode


def normalize_embed(x, cfg, stats=None):
    """Embedding [..., D] → model space. `cfg` has `normalize` and `embed_scale` (cfg.model)."""
    mode = _check_normalize(cfg, stats)
    x = jnp.asarray(x, jnp.float32)
    if mode == "scale":
        norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
        return x * (cfg.embed_scale / jnp.maximum(norm, 1e-12))
    return (x - jnp.asarray(stats["mean"], jnp.float32)) / jnp.asarray(stats["std"], jnp.float32)


def denormalize_embed(x, cfg, stats=None):
    """Model space [..., D] → embedding space (inverse of `normalize_embed`; for 'scale' the
    result has unit norm when x has norm embed_scale)."""
    mode = _check_normalize(cfg, stats)
    x = jnp.asarray(x, jnp.float32)
    if mode == "scale":
        return x / cfg.embed_scale
    return x * jnp.asarray(stats["std"], jnp.float32) + jnp.asarray(stats["mean"], jnp.float32)


def cosine(a, b):
    """Cosine similarity along the last axis, float32. [..., D], [..., D] → [...]."""
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    num = jnp.sum(a * b, axis=-1)
    return num / jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), 1e-12)


def best_of(candidates, z_t):
    """Per example, the candidate with the largest cosine to z_t. [N, B, D], [B, D] → [B, D]."""
    scores = cosine(candidates, z_t[None])                      # [N, B]
    idx = jnp.argmax(scores, axis=0)                            # [B]
    return jnp.take_along_axis(candidates, idx[None, :, None], axis=0)[0]


# ----------------------------------------------------------------------------- conditioning

def check_text_inputs(text_states, text_mask, z_t, *, text_len, text_width, embed_dim):
    """Raise UserError unless text_states [B, text_len, text_width], text_mask [B, text_len],
    z_t [B, embed_dim] agree with the model config."""
    B = z_t.shape[0]
    if text_states.shape[1:] != (text_len, text_width):
        raise UserError(
            f"text_states has shape {tuple(text_states.shape)} but the prior expects "
            f"[B, {text_len}, {text_width}]; pad/truncate captions to model.text_len={text_len} "
            f"and use the CLIP whose text width is model.text_width={text_width}")
    if tuple(text_mask.shape) != (B, text_len):
        raise UserError(f"text_mask has shape {tuple(text_mask.shape)}; it must be "
                        f"[B, {text_len}] (True at real tokens)")
    if z_t.shape[-1] != embed_dim:
        raise UserError(f"z_t has {z_t.shape[-1]} features but model.embed_dim={embed_dim}; "
                        "use the CLIP the prior was trained with")


class TextConditioning(nn.Module):
    """Text prefix shared by both priors: [text tokens (L), z_t] → ([B, L+1, W], valid [B, L+1]).

    Text states [B, L, Wt] are projected to W; z_t [B, D] is L2-normalised (unless
    `normalize_z_t` is False) and projected.
    Where drop_text[b] is True both are replaced by learned null states (valid everywhere).
    """
    width: int
    text_len: int
    dtype: Any = jnp.float32
    normalize_z_t: bool = True   # False: z_t is projected as given (Karlo)

    @nn.compact
    def __call__(self, z_t, text_states, text_mask, drop_text=None):
        B = z_t.shape[0]
        text = dense(self.width, (None, "embed"), "text_proj", self.dtype)(
            text_states.astype(self.dtype))
        z_t = z_t.astype(jnp.float32)
        if self.normalize_z_t:
            z_t = z_t / jnp.maximum(jnp.linalg.norm(z_t, axis=-1, keepdims=True), 1e-12)
        zt_tok = dense(self.width, (None, "embed"), "z_t_proj", self.dtype)(
            z_t.astype(self.dtype))
        null_text = self.param("null_text", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ("length", "embed")), (self.text_len, self.width),
            jnp.float32)
        null_zt = self.param("null_z_t", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ("embed",)), (self.width,), jnp.float32)
        valid = jnp.asarray(text_mask, bool)
        if drop_text is not None:
            drop = jnp.asarray(drop_text, bool)
            text = jnp.where(drop[:, None, None], null_text.astype(self.dtype)[None], text)
            zt_tok = jnp.where(drop[:, None], null_zt.astype(self.dtype)[None], zt_tok)
            valid = valid | drop[:, None]
        prefix = jnp.concatenate([text, zt_tok[:, None]], axis=1)
        valid = jnp.concatenate([valid, jnp.ones((B, 1), bool)], axis=1)
        return prefix, valid


def prefix_causal_mask(valid):
    """valid [B, S] (False at padded text keys) → [B, 1, S, S] causal mask; each query may
    always attend to itself, so no row is empty."""
    S = valid.shape[1]
    eye = jnp.eye(S, dtype=bool)[None, None]
    return causal_mask(S) & (valid[:, None, None, :] | eye)


def positional_embedding(module: nn.Module, length: int, width: int):
    """Learned positional table [length, width] ('length', 'embed') created in `module`."""
    return module.param("pos_embed", nn.with_logical_partitioning(
        nn.initializers.normal(0.01), ("length", "embed")), (length, width), jnp.float32)


class CausalStack(nn.Module):
    """Positional embeddings + causal Transformer + final LayerNorm over a prepared sequence.

    __call__(x [B, S, W], valid [B, S], deterministic) → [B, S, W] float32.
    """
    width: int
    layers: int
    heads: int
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    remat: bool = False
    dtype: Any = jnp.float32
    norm_in: bool = False   # LayerNorm `norm_in` after the positional embeddings

    @nn.compact
    def __call__(self, x, valid, deterministic=True):
        S = x.shape[1]
        x = x + positional_embedding(self, S, self.width).astype(self.dtype)[None]
        if self.norm_in:
            x = LayerNorm(dtype=self.dtype, name="norm_in")(x)
        x = nn.with_logical_constraint(x.astype(self.dtype), ("batch", "length", "embed"))
        x, _ = Transformer(self.width, self.layers, self.heads, self.mlp_ratio, "gelu",
                           dropout=self.dropout, remat=self.remat, dtype=self.dtype,
                           name="transformer")(x, prefix_causal_mask(valid), deterministic)
        return LayerNorm(dtype=jnp.float32, name="final_ln")(x)


# ----------------------------------------------------------------------------- model

class DiffusionPrior(nn.Module):
    """unCLIP diffusion prior (predicts x0). See the module docstring for the sequence.

    __call__(x_t [B, D], t [B] int, z_t [B, D], text_states [B, L, Wt], text_mask [B, L] bool,
             drop_text [B] bool | None, deterministic=True, return_hidden=False)
      → x0 [B, D] float32, or (x0, hidden [B, L+4, W] float32) with return_hidden.
    """
    width: int
    layers: int
    heads: int
    embed_dim: int
    text_width: int
    text_len: int
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    remat: bool = False
    dtype: Any = jnp.float32
    normalize_z_t: bool = True    # L2-normalise z_t before projecting it (False: Karlo)
    time_mlp_ratio: float = 4.0   # hidden width of the timestep MLP / width (Karlo: 1)
    time_embed_dim: int = 0       # that hidden width itself; 0 = time_mlp_ratio · width
    norm_in: bool = False         # LayerNorm over the sequence before the blocks

    @nn.compact
    def __call__(self, x_t, t, z_t, text_states, text_mask, drop_text=None,
                 deterministic: bool = True, return_hidden: bool = False):
        check_text_inputs(text_states, text_mask, z_t, text_len=self.text_len,
                          text_width=self.text_width, embed_dim=self.embed_dim)
        if x_t.shape != z_t.shape:
            raise UserError(f"x_t has shape {tuple(x_t.shape)} but z_t has {tuple(z_t.shape)}; "
                            "both must be [B, model.embed_dim]")
        B = x_t.shape[0]
        prefix, valid = TextConditioning(self.width, self.text_len, self.dtype,
                                         self.normalize_z_t, name="cond")(
            z_t, text_states, text_mask, drop_text)
        t_emb = timestep_embedding(jnp.asarray(t).reshape(B), self.width)
        t_tok = MLP(time_hidden_width(self.width, self.time_mlp_ratio, self.time_embed_dim),
                    "silu", self.dtype, name="time_mlp")(t_emb.astype(self.dtype))
        x_tok = dense(self.width, (None, "embed"), "x_proj", self.dtype)(
            x_t.astype(self.dtype))
        query = self.param("query", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ("embed",)), (self.width,), jnp.float32)
        tail = jnp.stack([t_tok, x_tok, jnp.broadcast_to(query.astype(self.dtype),
                                                         (B, self.width))], axis=1)
        seq = jnp.concatenate([prefix.astype(self.dtype), tail], axis=1)
        valid = jnp.concatenate([valid, jnp.ones((B, 3), bool)], axis=1)
        hidden = CausalStack(self.width, self.layers, self.heads, self.mlp_ratio, self.dropout,
                             self.remat, self.dtype, self.norm_in, name="stack")(
            seq, valid, deterministic)
        out = dense(self.embed_dim, ("embed", None), "out_proj", jnp.float32)(hidden[:, -1])
        return (out, hidden) if return_hidden else out


def time_hidden_width(width: int, time_mlp_ratio: float = 4.0, time_embed_dim: int = 0) -> int:
    """Hidden width of the timestep MLP: `time_embed_dim` when set (> 0), else
    int(time_mlp_ratio · width)."""
    return int(time_embed_dim) if time_embed_dim else int(time_mlp_ratio * width)


def from_config(model_cfg) -> DiffusionPrior:
    """`DiffusionPrior` from a `model` config section (`config_schema.diffusion_prior`)."""
    if model_cfg.kind != "diffusion_prior":
        raise UserError(f"model.kind={model_cfg.kind!r}; a diffusion prior needs "
                        "'diffusion_prior' (use e.g. --config shapes:prior)")
    _check_normalize(model_cfg, stats={})
    return DiffusionPrior(
        width=model_cfg.width, layers=model_cfg.layers, heads=model_cfg.heads,
        embed_dim=model_cfg.embed_dim, text_width=model_cfg.text_width,
        text_len=model_cfg.text_len, mlp_ratio=model_cfg.mlp_ratio,
        dropout=model_cfg.dropout, remat=model_cfg.remat, dtype=compute_dtype(model_cfg.dtype),
        normalize_z_t=bool(model_cfg.get("normalize_z_t", True)),
        time_mlp_ratio=float(model_cfg.get("time_mlp_ratio", 4.0)),
        time_embed_dim=int(model_cfg.get("time_embed_dim", 0)),
        norm_in=bool(model_cfg.get("norm_in", False)))


def dummy_inputs(model: DiffusionPrior, batch: int = 1) -> tuple:
    """Zero inputs of the right shapes for `model.init(key, *dummy_inputs(model))`."""
    D = model.embed_dim
    return (jnp.zeros((batch, D)), jnp.zeros((batch,), jnp.int32), jnp.ones((batch, D)),
            jnp.zeros((batch, model.text_len, model.text_width)),
            jnp.ones((batch, model.text_len), bool))


def prior_model_fn(params, model: DiffusionPrior, z_t, text_states, text_mask,
                   guidance_scale: float = 1.0, clamp: float | None = None):
    """`model_fn(x_t [B, D], t [B]) → x0 [B, D]` for the diffusion samplers.

    `t` is the original-schedule timestep (what the samplers pass as t_model). With
    guidance_scale != 1 the conditional and unconditional predictions come from one batched
    call over [cond; uncond] (the second half sets drop_text), combined by
    `diffusion.guidance.classifier_free_guidance`. `clamp` (e.g. model.clamp) clips the
    returned x0 to ±clamp (in normalised space).
    """
    B = z_t.shape[0]

    def cond_fn(x_t, t):
        t = jnp.broadcast_to(jnp.asarray(t), (B,))
        return model.apply(params, x_t, t, z_t, text_states, text_mask, None)

    def doubled_fn(x_t, t):
        two = lambda a: jnp.concatenate([a, a], axis=0)
        drop = jnp.concatenate([jnp.zeros((B,), bool), jnp.ones((B,), bool)])
        return model.apply(params, x_t, t, two(z_t), two(text_states), two(text_mask), drop)

    fn = (cond_fn if guidance_scale == 1.0 else
          classifier_free_guidance(doubled_fn, guidance_scale, predict="x0"))
    if clamp is None:
        return fn
    return lambda x_t, t: jnp.clip(fn(x_t, t), -clamp, clamp)


def sample_prior(params, model: DiffusionPrior, config, cond: Mapping[str, Any], key, *,
                 stats=None, num_candidates: int | None = None,
                 guidance_scale: float | None = None, sample_steps=None):
    """Sample z_i [B, D] (embedding space) for cond = {'z_t', 'text_states', 'text_mask'}.

    `config` is the stage config (its model and diffusion sections). Draws
    num_candidates (default model.sample_candidates) per example in one batched sampler run
    over the respaced schedule (diffusion.sample_steps unless given), de-normalises them and
    keeps the one with the largest cosine to z_t (`best_of`). Wrap in jax.jit as needed.
    """
    mcfg, dcfg = config.model, config.diffusion
    n = int(num_candidates or mcfg.get("sample_candidates", 1))
    scale = dcfg.guidance_scale if guidance_scale is None else guidance_scale
    if not scale >= 0:
        raise UserError(f"guidance_scale={scale} must be ≥ 0 (1 = no guidance; paper-style "
                        "priors use about 4)")
    if n < 1:
        raise UserError(f"num_candidates={n} must be ≥ 1 (paper: 2)")
    z_t = jnp.asarray(cond["z_t"], jnp.float32)
    B, D = z_t.shape
    rep = lambda a: jnp.concatenate([jnp.asarray(a)] * n, axis=0)
    fn = prior_model_fn(params, model, rep(z_t), rep(cond["text_states"]),
                        rep(cond["text_mask"]), scale, clamp=mcfg.get("clamp", None))
    sched = schedules.from_config(dcfg, sample_steps, sampling=True)
    common = dict(predict=dcfg.predict, clip_denoised=dcfg.clip_denoised,
                  clip_range=dcfg.clip_range)
    if dcfg.sampler == "ddim":
        x = samplers.ddim_sample(fn, sched, (n * B, D), key, eta=dcfg.eta, **common)
    else:
        x = samplers.ddpm_sample(fn, sched, (n * B, D), key, variance=dcfg.variance, **common)
    return best_of(denormalize_embed(x.reshape(n, B, D), mcfg, stats), z_t)

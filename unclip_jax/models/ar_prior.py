"""unCLIP autoregressive prior: CLIP image embeddings as a sequence of discrete tokens.

The codec (z_i ↔ tokens, fitted on training embeddings) is `unclip_jax.models.ar_codec`.

Model (`ARPrior`): the same causal-Transformer body as the diffusion prior (models/prior.py):
  [text token states (L, projected), z_t (projected), dot token, component tokens 0..K-2]
with learned positional embeddings (S = L + 1 + K positions). Component tokens share one
bucket-embedding table; the positional embedding tells components apart. The output at the
dot position predicts component 0, the output at component k−1 predicts component k, so
`__call__` returns logits [B, K, num_buckets]. Learned null text / null z_t replace the
caption where drop_text is True (classifier-free guidance).

Sampling (`ar_sample`) decodes incrementally with a key/value cache: one prefill pass over
the L + 2 prefix positions (text, z_t, dot token) fills each layer's keys and values
[B, H, S, W/H], then each of the K − 1 further steps runs the stack over ONE new position
(`extend`), attending over the cache, so a sample costs about one full forward instead of K.
It reads the parameter tree `ARPrior` builds (nothing new). The full-recompute loop stays as
the reference (`sample_tokens(..., kv_cache=False)`); both draw the same tokens for a key.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from unclip_jax.diffusion.guidance import classifier_free_guidance
from unclip_jax.errors import UserError
from unclip_jax.models.ar_codec import check_codec, decode_tokens, sample_dot_tokens
from unclip_jax.models.layers import MLP, LayerNorm, dense, dot_product_attention
from unclip_jax.models.prior import CausalStack, TextConditioning, check_text_inputs, compute_dtype

# ----------------------------------------------------------------------------- model


def _table(n: int, width: int, dtype, name: str | None = None) -> nn.Embed:
    """Token table [n, width] ('vocab', 'embed'): int tokens [...] → [..., width] in dtype."""
    return nn.Embed(n, width, dtype=dtype, param_dtype=jnp.float32, name=name,
                    embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                ("vocab", "embed")))


def _head(num_buckets: int, name: str | None = None) -> nn.Dense:
    """Output projection [W, num_buckets] ('embed', 'vocab'), float32: hidden → logits."""
    return dense(num_buckets, ("embed", "vocab"), name, jnp.float32)


class ARPrior(nn.Module):
    """unCLIP AR prior. See the module docstring for the sequence.

    __call__(tokens [B, K+1] int (dot token first), z_t [B, D], text_states [B, L, Wt],
             text_mask [B, L] bool, drop_text [B] bool | None, deterministic=True,
             return_hidden=False)
      → logits [B, K, num_buckets] float32 (component k predicted from position k−1),
        or (logits, hidden [B, L+1+K, W]) with return_hidden. tokens[:, K] is not read.
    """
    width: int
    layers: int
    heads: int
    embed_dim: int
    text_width: int
    text_len: int
    pca_components: int
    num_buckets: int
    dot_buckets: int
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens, z_t, text_states, text_mask, drop_text=None,
                 deterministic: bool = True, return_hidden: bool = False):
        check_text_inputs(text_states, text_mask, z_t, text_len=self.text_len,
                          text_width=self.text_width, embed_dim=self.embed_dim)
        K = self.pca_components
        if tuple(tokens.shape) != (z_t.shape[0], K + 1):
            raise UserError(f"tokens has shape {tuple(tokens.shape)}; it must be "
                            f"[B, pca_components + 1] = [{z_t.shape[0]}, {K + 1}] "
                            "(dot token first; see training_tokens)")
        B = z_t.shape[0]
        prefix, valid = TextConditioning(self.width, self.text_len, self.dtype, name="cond")(
            z_t, text_states, text_mask, drop_text)
        dot = _table(self.dot_buckets, self.width, self.dtype, "dot_embed")(tokens[:, :1])
        comps = _table(self.num_buckets, self.width, self.dtype, "token_embed")(tokens[:, 1:K])
        seq = jnp.concatenate([prefix.astype(self.dtype), dot, comps], axis=1)
        valid = jnp.concatenate([valid, jnp.ones((B, K), bool)], axis=1)
        hidden = CausalStack(self.width, self.layers, self.heads, self.mlp_ratio, self.dropout,
                             self.remat, self.dtype, name="stack")(seq, valid, deterministic)
        L = self.text_len
        logits = _head(self.num_buckets, "head")(hidden[:, L + 1:L + 1 + K])
        return (logits, hidden) if return_hidden else logits


def from_config(model_cfg) -> ARPrior:
    """`ARPrior` from a `model` config section (configs/shapes.py:ar_prior)."""
    if model_cfg.kind != "ar_prior":
        raise UserError(f"model.kind={model_cfg.kind!r}; an AR prior needs 'ar_prior' "
                        "(use e.g. --config shapes:ar_prior)")
    return ARPrior(
        width=model_cfg.width, layers=model_cfg.layers, heads=model_cfg.heads,
        embed_dim=model_cfg.embed_dim, text_width=model_cfg.text_width,
        text_len=model_cfg.text_len, pca_components=model_cfg.pca_components,
        num_buckets=model_cfg.num_buckets, dot_buckets=model_cfg.dot_buckets,
        mlp_ratio=model_cfg.mlp_ratio, dropout=model_cfg.dropout, remat=model_cfg.remat,
        dtype=compute_dtype(model_cfg.dtype))


def dummy_inputs(model: ARPrior, batch: int = 1) -> tuple:
    """Zero inputs of the right shapes for `model.init(key, *dummy_inputs(model))`."""
    return (jnp.zeros((batch, model.pca_components + 1), jnp.int32),
            jnp.ones((batch, model.embed_dim)),
            jnp.zeros((batch, model.text_len, model.text_width)),
            jnp.ones((batch, model.text_len), bool))


def ar_loss(logits, tokens):
    """Mean cross-entropy (nats per token) of logits [B, K, nb] against tokens[:, 1:] [B, K]."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), tokens[:, 1:]))


# ----------------------------------------------------------------------------- sampling


def _doubled(cond: Mapping[str, Any], guidance_scale: float):
    """The model's conditioning inputs (z_t, text_states, text_mask, drop_text).

    guidance_scale == 1: cond as given, drop_text None (batch B). Otherwise every array is
    doubled to 2B rows for one batched call, rows [:B] conditional and rows [B:] with
    drop_text True (the learned null caption), as `classifier_free_guidance` expects.
    """
    z_t, text, mask = cond["z_t"], cond["text_states"], cond["text_mask"]
    if guidance_scale == 1.0:
        return z_t, text, mask, None
    B = z_t.shape[0]
    drop = jnp.concatenate([jnp.zeros((B,), bool), jnp.ones((B,), bool)])
    return _twice(z_t), _twice(text), _twice(mask), drop


def _twice(a):
    """[B, ...] → [2B, ...] (the batch stacked on itself)."""
    return jnp.concatenate([a, a], axis=0)


def _guide(out, guidance_scale: float):
    """Model output [B', ...] float32 → guided [B, ...]: unchanged when guidance_scale == 1
    (B' = B); else B' = 2B rows [cond; uncond] combined by
    `diffusion.guidance.classifier_free_guidance` (uncond + s·(cond − uncond))."""
    if guidance_scale == 1.0:
        return out
    B = out.shape[0] // 2
    return classifier_free_guidance(lambda *_: out, guidance_scale)(
        out[:B], jnp.zeros((B,), jnp.int32))


def _guided_logits(params, model, tokens, cond, guidance_scale):
    """Full-forward logits [B, K, nb] for tokens [B, K+1]; with guidance_scale != 1 one batched
    [cond; uncond] call combined by `_guide`."""
    z_t, text, mask, drop = _doubled(cond, guidance_scale)
    if drop is not None:
        tokens = _twice(tokens)
    return _guide(model.apply(params, tokens, z_t, text, mask, drop), guidance_scale)


def _pick(logits, key, k, temperature: float):
    """Component k's token [B] int32 from its logits [B, nb]: argmax at temperature 0, else a
    draw from softmax(logits / temperature) with key fold_in(key, k)."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(jax.random.fold_in(key, k), logits / temperature,
                                  axis=-1).astype(jnp.int32)


# ----------------------------------------------------------------------------- KV cache


def init_cache(model: ARPrior, batch: int) -> tuple:
    """An empty key/value cache: a tuple over the model's layers of (k, v), each
    [batch, heads, S, width / heads] zeros in the compute dtype (S = L + 1 + K positions)."""
    S = model.text_len + 1 + model.pca_components
    shape = (batch, model.heads, S, model.width // model.heads)
    return tuple((jnp.zeros(shape, model.dtype), jnp.zeros(shape, model.dtype))
                 for _ in range(model.layers))


def cache_mask(valid, start, length: int):
    """Mask [B, 1, T=length, S] of the new query positions start..start+T−1 over all S keys:
    causal, keys at padded text (valid [B, S] False) hidden, each query sees itself — rows
    start..start+T−1 of `prior.prefix_causal_mask(valid)`. start may be traced."""
    q = start + jnp.arange(length)[:, None]                        # [T, 1]
    k = jnp.arange(valid.shape[1])[None, :]                        # [1, S]
    return (k <= q)[None, None] & (valid[:, None, None, :] | (k == q)[None, None])


def _cached_block(p, x, kv, mask, start, model: ARPrior):
    """`layers.TransformerBlock` (pre-LN, deterministic) over T new positions, keys and values of
    the earlier ones read from the cache. Built from the same layers applied to the block's
    parameter subtree p, so the parameter tree is the one `ARPrior` creates.

    x [B, T, W] (compute dtype), kv = (k, v) [B, H, S, W/H], mask [B, 1, T, S] (`cache_mask`)
    → (x [B, T, W], (k, v) with positions start..start+T−1 written).
    """
    dt, W, H = model.dtype, model.width, model.heads
    B, T, _ = x.shape
    sub = lambda module, params, y: module.apply({"params": params}, y)
    attn = p["self_attn"]
    h = sub(LayerNorm(dtype=dt), p["layer_norm1"], x)
    q, k, v = (sub(dense(W, ("embed", "heads"), None, dt), attn[n], h).reshape(B, T, H, W // H)
               for n in ("q_proj", "k_proj", "v_proj"))
    # the cache is kept heads-major [B, H, S, W/H], the layout attention's batched matmuls
    # read, so a step writes T rows instead of transposing the whole cache
    k, v = (jax.lax.dynamic_update_slice_in_dim(c, a.swapaxes(1, 2), start, axis=2)
            for c, a in zip(kv, (k, v)))
    out = dot_product_attention(q, k.swapaxes(1, 2), v.swapaxes(1, 2), mask, dt).reshape(B, T, W)
    x = x + sub(dense(W, ("heads", "embed"), None, dt), attn["out_proj"], out)
    h = sub(LayerNorm(dtype=dt), p["layer_norm2"], x)
    x = x + sub(MLP(int(W * model.mlp_ratio), "gelu", dt), p["mlp"], h)
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), (k, v)


def extend(params, model: ARPrior, x, valid, cache, start):
    """The causal stack (`prior.CausalStack`) over T new positions of the sequence, with the
    keys/values of positions < start read from the cache.

    params: the ARPrior's variables; x [B, T, W] the new positions' inputs (before positional
    embeddings); valid [B, S] key validity of the whole sequence; cache from `init_cache`;
    start: int or traced scalar.
    → (hidden [B, T, W] float32 after the final LayerNorm, cache with start..start+T−1 filled).
    """
    p = nn.meta.unbox(params)["params"]["stack"]
    T = x.shape[1]
    pos = jax.lax.dynamic_slice_in_dim(p["pos_embed"], start, T, axis=0)
    x = (x + pos.astype(model.dtype)[None]).astype(model.dtype)
    mask = cache_mask(valid, start, T)
    filled = []
    for i, kv in enumerate(cache):
        x, kv = _cached_block(p["transformer"][f"layers_{i}"], x, kv, mask, start, model)
        filled.append(kv)
    return LayerNorm(dtype=jnp.float32).apply({"params": p["final_ln"]}, x), tuple(filled)


def _embed(params, model: ARPrior, table: str, tokens):
    """tokens [B, T] int → [B, T, W] through ARPrior's 'dot_embed' or 'token_embed' table."""
    n = model.dot_buckets if table == "dot_embed" else model.num_buckets
    p = nn.meta.unbox(params)["params"][table]
    return _table(n, model.width, model.dtype).apply({"params": p}, tokens)


# ----------------------------------------------------------------------------- sampling loops


@functools.partial(jax.jit, static_argnums=(1, 5, 6, 7))
def _sample_cached(params, model, cond, dot, key, temperature, guidance_scale, return_logits):
    """KV-cached loop: a prefill over [text, z_t, dot] (L + 2 positions), then K − 1 one-position
    `extend` steps. → tokens [B, K+1] (and the guided logits [B, K, nb] each token was drawn
    from, with return_logits)."""
    K, L = model.pca_components, model.text_len
    B = dot.shape[0]
    p = nn.meta.unbox(params)["params"]
    z_t, text, mask, drop = _doubled(cond, guidance_scale)
    rows = (lambda a: a) if drop is None else _twice            # B → the model's batch
    prefix, valid = TextConditioning(model.width, L, model.dtype).apply(
        {"params": p["cond"]}, z_t, text, mask, drop)
    x = jnp.concatenate([prefix.astype(model.dtype),
                         _embed(params, model, "dot_embed", rows(dot)[:, None])], axis=1)
    valid = jnp.concatenate([valid, jnp.ones((valid.shape[0], K), bool)], axis=1)   # [B', S]
    # hidden [B', W] → guided logits [B, nb]
    head = lambda h: _guide(_head(model.num_buckets).apply({"params": p["head"]}, h),
                            guidance_scale)
    hidden, cache = extend(params, model, x, valid, init_cache(model, x.shape[0]), 0)
    buf = jnp.zeros((B, K + 1), jnp.int32).at[:, 0].set(dot)
    seen = jnp.zeros((B, K, model.num_buckets), jnp.float32) if return_logits else None

    def draw(k, buf, logits, seen):          # component k from its logits [B, nb]
        tok = _pick(logits, key, k, temperature)
        buf = jax.lax.dynamic_update_index_in_dim(buf, tok[:, None], k + 1, axis=1)
        if return_logits:
            seen = jax.lax.dynamic_update_index_in_dim(seen, logits[:, None], k, axis=1)
        return tok, buf, seen

    def body(k, carry):
        buf, cache, logits, seen = carry
        tok, buf, seen = draw(k, buf, logits, seen)
        x = _embed(params, model, "token_embed", rows(tok)[:, None])        # position L+2+k
        hidden, cache = extend(params, model, x, valid, cache, L + 2 + k)
        return buf, cache, head(hidden[:, 0]), seen

    buf, _, logits, seen = jax.lax.fori_loop(0, K - 1, body,
                                             (buf, cache, head(hidden[:, -1]), seen))
    _, buf, seen = draw(K - 1, buf, logits, seen)
    return (buf, seen) if return_logits else buf


@functools.partial(jax.jit, static_argnums=(1, 5, 6))
def _sample_full(params, model, cond, dot, key, temperature, guidance_scale):
    """Reference loop without a cache: every step re-runs the full forward over a fixed
    [B, K+1] buffer (the causal mask makes the not-yet-written entries irrelevant), K forwards
    in all. → tokens [B, K+1]."""
    K = model.pca_components
    B = dot.shape[0]
    buf = jnp.zeros((B, K + 1), jnp.int32).at[:, 0].set(dot)

    def body(k, buf):
        logits = _guided_logits(params, model, buf, cond, guidance_scale)
        tok = _pick(jax.lax.dynamic_index_in_dim(logits, k, axis=1, keepdims=False), key, k,
                    temperature)
        return jax.lax.dynamic_update_index_in_dim(buf, tok[:, None], k + 1, axis=1)

    return jax.lax.fori_loop(0, K, body, buf)


def sample_tokens(params, model: ARPrior, cond: Mapping[str, Any], dot, key,
                  temperature: float = 1.0, guidance_scale: float = 1.0, *,
                  kv_cache: bool = True, return_logits: bool = False):
    """Component tokens after the given dot tokens, one compiled loop.

    cond = {'z_t': [B, D], 'text_states': [B, L, Wt], 'text_mask': [B, L] bool}, dot [B] int.
    Component k is drawn from the (guided) logits at position k with fold_in(key, k), so the
    cached loop (default) and the full-recompute reference (kv_cache=False) draw the same
    tokens. → tokens [B, K+1] int32 (dot first); with return_logits (cached loop only) also
    the guided logits [B, K, nb] float32 each component was drawn from.
    """
    dot = jnp.asarray(dot, jnp.int32)
    if kv_cache:
        return _sample_cached(params, model, cond, dot, key, float(temperature),
                              float(guidance_scale), bool(return_logits))
    if return_logits:
        raise UserError("return_logits needs kv_cache=True; for the reference loop take "
                        "_guided_logits of its tokens")
    return _sample_full(params, model, cond, dot, key, float(temperature), float(guidance_scale))


def ar_sample(params, model: ARPrior, codec, cond: Mapping[str, Any], key,
              temperature: float = 1.0, guidance_scale: float = 1.0, dot_quantile: float = 0.5,
              *, kv_cache: bool = True):
    """Sample z_i autoregressively in one compiled loop.

    cond = {'z_t': [B, D], 'text_states': [B, L, Wt], 'text_mask': [B, L] bool}. The dot token
    is drawn from the top (1 − dot_quantile) of its training distribution, then K component
    tokens one at a time (`sample_tokens`: with a key/value cache, or kv_cache=False for the
    full-recompute reference; same tokens). temperature 0 decodes greedily.
    Returns (z_i [B, D] float32 from decode_tokens, tokens [B, K+1] int32).
    """
    if temperature < 0:
        raise UserError(f"temperature={temperature} must be ≥ 0 (0 = greedy)")
    if guidance_scale < 0:
        raise UserError(f"guidance_scale={guidance_scale} must be ≥ 0 (1 = no guidance)")
    check_codec(codec, model)
    B = cond["z_t"].shape[0]
    dot = sample_dot_tokens(jax.random.fold_in(key, 0), B, model.dot_buckets, dot_quantile)
    tokens = sample_tokens(params, model, cond, dot, jax.random.fold_in(key, 1), temperature,
                           guidance_scale, kv_cache=kv_cache)
    return decode_tokens(codec, tokens[:, 1:]), tokens

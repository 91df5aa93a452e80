"""Shared Flax layers with logical-axis annotations (see `unclip_jax.parallel`).

Used by CLIP, both priors and the UNet's attention. Parameter names follow the Hugging Face
CLIP layout (`q_proj`, `layer_norm1`, `fc1`, ...) so checkpoint importers map names 1:1.

Shapes: B batch, L sequence length, W width, H heads, D = W / H head dim.
Precision: parameters float32; matmuls in `dtype`; softmax and layer norms in float32.
"""
from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype


def quick_gelu(x):
    """CLIP's x·σ(1.702x)."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable] = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
}


def get_activation(name: str) -> Callable:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


def dense(features: int, axes: tuple[str | None, str | None], name: str, dtype=jnp.float32,
          use_bias: bool = True, kernel_init=None) -> nn.Dense:
    """nn.Dense whose kernel [in, out] carries logical axes `axes` and bias axes `(axes[1],)`."""
    kernel_init = kernel_init or nn.initializers.lecun_normal()
    return nn.Dense(
        features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name,
        kernel_init=nn.with_logical_partitioning(kernel_init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
    )


class LayerNorm(nn.Module):
    """LayerNorm computed in float32, output cast to `dtype`. Params `scale`, `bias` [W]."""
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm(
            epsilon=self.epsilon, dtype=jnp.float32, param_dtype=jnp.float32,
            use_bias=self.use_bias, use_scale=self.use_scale,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
            name="ln")(x.astype(jnp.float32))
        return y.astype(self.dtype)


def dot_product_attention(q, k, v, mask=None, dtype=jnp.float32):
    """Scaled dot-product attention, softmax in float32.

    q [B, Lq, H, D], k/v [B, Lk, H, D], mask broadcastable to [B, H, Lq, Lk] (True = attend).
    Returns [B, Lq, H, D] in `dtype`.

    Computed heads-major ([B, H, L, D], `attention_heads_major`): with the batch and head axes
    leading, both products are plain batched GEMMs. Contracting the [B, L, H, D] layout
    directly made XLA's CPU backend run them ~9× slower (decoder attention at 16 px: 285 → 32
    ms forward, docs/benchmarks.md); the transposes here are cheap beside that.
    """
    out = attention_heads_major(*(jnp.swapaxes(a, 1, 2) for a in (q, k, v)), mask, dtype)
    return jnp.swapaxes(out, 1, 2)


def attention_heads_major(q, k, v, mask=None, dtype=jnp.float32):
    """`dot_product_attention` on q [B, H, Lq, D], k/v [B, H, Lk, D] → [B, H, Lq, D]."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    return jnp.einsum("bhqk,bhkd->bhqd", weights, v.astype(dtype))


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections (HF CLIP names).

    __call__(x [B, Lq, W], context [B, Lk, Wc] | None, mask [B|1, 1|H, Lq, Lk] | None)
    → [B, Lq, W]. With `context=None` it is self-attention.
    """
    width: int
    num_heads: int
    dtype: Dtype = jnp.float32
    use_bias: bool = True

    @nn.compact
    def __call__(self, x, context=None, mask=None):
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        context = x if context is None else context
        B, Lq, _ = x.shape
        Lk = context.shape[1]
        H, D = self.num_heads, self.width // self.num_heads
        q = dense(self.width, ("embed", "heads"), "q_proj", self.dtype, self.use_bias)(x)
        k = dense(self.width, ("embed", "heads"), "k_proj", self.dtype, self.use_bias)(context)
        v = dense(self.width, ("embed", "heads"), "v_proj", self.dtype, self.use_bias)(context)
        q, k, v = (a.reshape(a.shape[0], a.shape[1], H, D) for a in (q, k, v))
        out = dot_product_attention(q, k, v, mask, self.dtype).reshape(B, Lq, self.width)
        return dense(x.shape[-1], ("heads", "embed"), "out_proj", self.dtype, self.use_bias)(out)


class MLP(nn.Module):
    """fc1 → activation → fc2. [B, L, W] → [B, L, W]."""
    hidden: int
    activation: str = "gelu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = dense(self.hidden, ("embed", "mlp"), "fc1", self.dtype)(x)
        h = get_activation(self.activation)(h)
        return dense(x.shape[-1], ("mlp", "embed"), "fc2", self.dtype)(h)


class TransformerBlock(nn.Module):
    """Pre-LN block: x + attn(ln1(x)); x + mlp(ln2(x)). [B, L, W] → [B, L, W]."""
    width: int
    num_heads: int
    mlp_ratio: float = 4.0
    activation: str = "gelu"
    epsilon: float = 1e-5
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None, deterministic: bool = True):
        h = LayerNorm(self.epsilon, self.dtype, name="layer_norm1")(x)
        h = MultiHeadAttention(self.width, self.num_heads, self.dtype, name="self_attn")(h, mask=mask)
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        x = x + h
        h = LayerNorm(self.epsilon, self.dtype, name="layer_norm2")(x)
        h = MLP(int(self.width * self.mlp_ratio), self.activation, self.dtype, name="mlp")(h)
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        x = x + h
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Transformer(nn.Module):
    """A stack of `TransformerBlock`s named `layers_{i}`, optionally rematerialised.

    __call__(x [B, L, W], mask [B|1, 1, L, L] | None, deterministic) → (x, hidden_states)
    where hidden_states is the tuple of inputs to every block plus the final output.
    """
    width: int
    layers: int
    num_heads: int
    mlp_ratio: float = 4.0
    activation: str = "gelu"
    epsilon: float = 1e-5
    dropout: float = 0.0
    remat: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None, deterministic: bool = True):
        block_cls = nn.remat(TransformerBlock, static_argnums=(3,)) if self.remat else TransformerBlock
        hidden = [x]
        for i in range(self.layers):
            x = block_cls(self.width, self.num_heads, self.mlp_ratio, self.activation, self.epsilon,
                          self.dropout, self.dtype, name=f"layers_{i}")(x, mask, deterministic)
            hidden.append(x)
        return x, tuple(hidden)


def causal_mask(length: int):
    """[1, 1, L, L] boolean lower-triangular mask (True = may attend)."""
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


def padding_mask(valid):
    """valid [B, Lk] bool → [B, 1, 1, Lk] attention mask over keys."""
    return valid[:, None, None, :]


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
    """Sinusoidal embedding of (possibly fractional) timesteps, ADM convention.

    t [B] → [B, dim] float32 = [cos(t·f_0..f_{h-1}), sin(t·f_0..f_{h-1})] with
    f_i = max_period^(-i/h), h = dim // 2 (a zero column is appended when dim is odd).
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb

"""Building blocks of the ADM/GLIDE UNet (see `unclip_jax.models.unet` for the whole model).

All activations are NHWC: x [B, H, W, C]. Parameters are float32 and carry logical axes
(`unclip_jax.parallel`): conv kernels [kh, kw, in, out] → (None, None, 'conv_in', 'conv_out'),
time-embedding projections ('embed', 'conv_out'), attention projections ('embed', 'heads') /
('heads', 'embed'), norm scale/bias ('norm',). Convolutions and matmuls run in `dtype`;
GroupNorm, the scale-shift modulation and the attention softmax run in float32.

Module names follow the diffusers `UNet2DConditionModel` / `UNet2DModel` layout that Karlo's
public weights use, so a converter maps names one to one (torch `a.0.b.weight` ↔ `a_0/b/kernel`):

  ResBlock        norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut (if channels change)
  AttentionBlock  group_norm, to_q, to_k, to_v, add_k_proj, add_v_proj (with context), to_out
  Downsample      conv (3×3, stride 2)            Upsample  conv (3×3 after nearest ×2)
  DownBlock       resnets_{j}, attentions_{j}, downsamplers_0
  MidBlock        resnets_0, attentions_0, resnets_1
  UpBlock         resnets_{j}, attentions_{j}, upsamplers_0
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from unclip_jax.models.layers import dense, dot_product_attention

Dtype = Any
CONV_AXES = (None, None, "conv_in", "conv_out")
ACT_AXES = ("batch", "height", "width", "channels")


def constrain(x):
    """Logical sharding constraint on an NHWC activation."""
    return nn.with_logical_constraint(x, ACT_AXES)


def conv(features: int, kernel: int, name: str, dtype: Dtype = jnp.float32, *, stride: int = 1,
         zero_init: bool = False, axes: tuple = CONV_AXES) -> nn.Conv:
    """k×k convolution with symmetric padding k//2 (PyTorch `padding=k//2`), logical axes `axes`.

    Kernel [k, k, C_in, features], bias [features]. `zero_init` zeroes the kernel (output convs).
    """
    kernel_init = nn.initializers.zeros if zero_init else nn.initializers.lecun_normal()
    pad = kernel // 2
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
        dtype=dtype, param_dtype=jnp.float32, name=name,
        kernel_init=nn.with_logical_partitioning(kernel_init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[-1],)))


def group_norm(x, scale, bias, num_groups: int, epsilon: float = 1e-5):
    """GroupNorm of x [B, ..., C] (float32) with per-channel `scale`, `bias` [C] → [B, ..., C].

    Statistics per (example, group) over the spatial axes and the group's C / num_groups
    channels, as in `flax.linen.GroupNorm` (biased variance, `epsilon` inside the root).
    Written as per-channel spatial sums followed by a sum within each group (two passes: mean,
    then the centred second moment), and the normalisation folded into one per-channel
    multiply-add. XLA fuses each pass into a single reduction over the contiguous channel axis
    instead of reducing a [B, H, W, G, C/G] view, which is 2–4× faster on the CPU and equal to
    the reference up to float32 rounding.
    """
    B, C = x.shape[0], x.shape[-1]
    axes = tuple(range(1, x.ndim - 1))
    per_group = C // num_groups
    count = per_group
    for a in axes:
        count *= x.shape[a]
    bshape = (B,) + (1,) * len(axes) + (C,)

    def group_mean(per_channel_sum):        # [B, C] → [B, C]: the group's mean, per channel
        g = per_channel_sum.reshape(B, num_groups, per_group).sum(-1) / count
        return jnp.repeat(g, per_group, axis=1)

    centred = x - group_mean(jnp.sum(x, axes)).reshape(bshape)
    var = group_mean(jnp.sum(jnp.square(centred), axes))
    mult = jax.lax.rsqrt(var + epsilon) * scale
    return centred * mult.reshape(bshape) + bias.reshape((1,) * (x.ndim - 1) + (C,))


class GroupNormParams(nn.Module):
    """The `scale` (ones) and `bias` (zeros) [C] of a GroupNorm, logical axis 'norm'."""
    channels: int

    @nn.compact
    def __call__(self):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                           (self.channels,), jnp.float32)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
                          (self.channels,), jnp.float32)
        return scale, bias


class GroupNorm(nn.Module):
    """GroupNorm over the channel axis computed in float32; returns float32.

    x [..., C] → [..., C]; C must be divisible by `num_groups`. Params `norm/scale`,
    `norm/bias` [C] (the layout of `flax.linen.GroupNorm` named 'norm'); math in `group_norm`.
    """
    num_groups: int = 32
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        if channels % self.num_groups:
            raise ValueError(
                f"GroupNorm: {channels} channels are not divisible by {self.num_groups} groups; "
                f"set model.norm_groups to a divisor of every level's width "
                f"(model_channels × channel_mult)")
        scale, bias = GroupNormParams(channels, name="norm")()
        return group_norm(x.astype(jnp.float32), scale, bias, self.num_groups, self.epsilon)


def upsample_nearest(x):
    """[B, H, W, C] → [B, 2H, 2W, C], nearest neighbour."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def downsample_avg(x):
    """[B, H, W, C] → [B, H/2, W/2, C], 2×2 average pooling."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class ResBlock(nn.Module):
    """ADM residual block, optionally changing resolution (`up`: nearest ×2, `down`: avg-pool 2).

    __call__(x [B, H, W, C_in], emb [B, E], deterministic) → [B, H', W', out_channels].

    h = conv1(resample(SiLU(norm1(x)))); e = time_emb_proj(SiLU(emb));
    scale-shift: h = SiLU(norm2(h)·(1+scale) + shift) with (scale, shift) = split(e),
    otherwise h = SiLU(norm2(h + e)); h = conv2(dropout(h)) (conv2 zero-initialised);
    out = shortcut(resample(x)) + h, shortcut a 1×1 conv when C_in ≠ out_channels.
    """
    out_channels: int
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    norm_groups: int = 32
    up: bool = False
    down: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, emb, deterministic: bool = True):
        h = nn.silu(GroupNorm(self.norm_groups, name="norm1")(x)).astype(self.dtype)
        if self.up:
            h, x = upsample_nearest(h), upsample_nearest(x)
        elif self.down:
            h, x = downsample_avg(h), downsample_avg(x)
        h = conv(self.out_channels, 3, "conv1", self.dtype)(h)

        n = 2 * self.out_channels if self.use_scale_shift_norm else self.out_channels
        e = dense(n, ("embed", "conv_out"), "time_emb_proj", self.dtype)(nn.silu(emb))
        e = e.astype(jnp.float32)[:, None, None, :]
        if self.use_scale_shift_norm:
            scale, shift = jnp.split(e, 2, axis=-1)
            h = GroupNorm(self.norm_groups, name="norm2")(h) * (1.0 + scale) + shift
        else:
            h = GroupNorm(self.norm_groups, name="norm2")(h.astype(jnp.float32) + e)
        h = nn.silu(h).astype(self.dtype)
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        h = conv(self.out_channels, 3, "conv2", self.dtype, zero_init=True)(h)

        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, "conv_shortcut", self.dtype)(x)
        return constrain(x.astype(self.dtype) + h)


class AttentionBlock(nn.Module):
    """GLIDE attention over the spatial tokens, with encoder key/values when context is given.

    __call__(x [B, H, W, C], context [B, L, C_ctx] | None, context_mask [B, L] bool | None)
    → [B, H, W, C] = x + to_out(attn(q, [k_ctx; k], [v_ctx; v])).

    Queries/keys/values come from GroupNorm(x); context tokens are projected by add_k_proj /
    add_v_proj and placed before the spatial keys. `context_mask` (True = attend) hides context
    tokens; spatial keys are always visible. Heads have `num_head_channels` channels each.
    to_out is zero-initialised, so a new block starts as the identity.
    """
    num_head_channels: int = 64
    norm_groups: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context=None, context_mask=None):
        B, H, W, C = x.shape
        if C % self.num_head_channels:
            raise ValueError(
                f"attention width {C} is not divisible by num_head_channels "
                f"{self.num_head_channels}; change model.num_head_channels or model_channels")
        heads, hd = C // self.num_head_channels, self.num_head_channels
        h = GroupNorm(self.norm_groups, name="group_norm")(x).astype(self.dtype)
        h = h.reshape(B, H * W, C)
        proj = lambda name: dense(C, ("embed", "heads"), name, self.dtype)  # noqa: E731
        split = lambda a: a.reshape(B, a.shape[1], heads, hd)  # noqa: E731
        q, k, v = split(proj("to_q")(h)), split(proj("to_k")(h)), split(proj("to_v")(h))
        mask = None
        if context is not None:
            context = context.astype(self.dtype)
            k = jnp.concatenate([split(proj("add_k_proj")(context)), k], axis=1)
            v = jnp.concatenate([split(proj("add_v_proj")(context)), v], axis=1)
            if context_mask is not None:
                spatial = jnp.ones((B, H * W), dtype=bool)
                mask = jnp.concatenate([context_mask.astype(bool), spatial], axis=1)
                mask = mask[:, None, None, :]
        out = dot_product_attention(q, k, v, mask, self.dtype).reshape(B, H * W, C)
        out = dense(C, ("heads", "embed"), "to_out", self.dtype,
                    kernel_init=nn.initializers.zeros)(out)
        return constrain(x.astype(self.dtype) + out.reshape(B, H, W, C))


class Downsample(nn.Module):
    """3×3 stride-2 convolution (ADM `conv_resample` without resblock_updown). [B,H,W,C]→[B,H/2,W/2,C]."""
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, emb=None, deterministic: bool = True):
        return constrain(conv(x.shape[-1], 3, "conv", self.dtype, stride=2)(x))


class Upsample(nn.Module):
    """Nearest ×2 then 3×3 convolution. [B,H,W,C]→[B,2H,2W,C]."""
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, emb=None, deterministic: bool = True):
        return constrain(conv(x.shape[-1], 3, "conv", self.dtype)(upsample_nearest(x)))


class BlockSettings(nn.Module):
    """Fields shared by the level blocks (not used on its own)."""
    out_channels: int
    num_res_blocks: int = 1
    attention: bool = False
    num_head_channels: int = 64
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    norm_groups: int = 32
    resblock_updown: bool = True
    remat: bool = False
    dtype: Dtype = jnp.float32

    def res(self, name, **kw):
        cls = nn.remat(ResBlock, static_argnums=(3,)) if self.remat else ResBlock
        return cls(self.out_channels, self.dropout, self.use_scale_shift_norm, self.norm_groups,
                   dtype=self.dtype, name=name, **kw)

    def attn(self, name):
        cls = nn.remat(AttentionBlock) if self.remat else AttentionBlock
        return cls(self.num_head_channels, self.norm_groups, self.dtype, name=name)


class DownBlock(BlockSettings):
    """One encoder level: `num_res_blocks` × (ResBlock [+ attention]), then (if `downsample`)
    a down ResBlock (resblock_updown) or a stride-2 conv.

    __call__(h, emb, context, context_mask, deterministic) → (h, skips) where skips is the tuple
    of every sub-block's output (the UNet's skip connections, in order).
    """
    downsample: bool = True

    @nn.compact
    def __call__(self, h, emb, context=None, context_mask=None, deterministic: bool = True):
        skips = []
        for j in range(self.num_res_blocks):
            h = self.res(f"resnets_{j}")(h, emb, deterministic)
            if self.attention:
                h = self.attn(f"attentions_{j}")(h, context, context_mask)
            skips.append(h)
        if self.downsample:
            if self.resblock_updown:
                h = self.res("downsamplers_0", down=True)(h, emb, deterministic)
            else:
                h = Downsample(self.dtype, name="downsamplers_0")(h)
            skips.append(h)
        return h, tuple(skips)


class MidBlock(BlockSettings):
    """ResBlock – attention (if `attention`) – ResBlock at the lowest resolution."""

    @nn.compact
    def __call__(self, h, emb, context=None, context_mask=None, deterministic: bool = True):
        h = self.res("resnets_0")(h, emb, deterministic)
        if self.attention:
            h = self.attn("attentions_0")(h, context, context_mask)
        return self.res("resnets_1")(h, emb, deterministic)


class UpBlock(BlockSettings):
    """One decoder level: `num_res_blocks + 1` × (concat skip → ResBlock [+ attention]), then
    (if `upsample`) an up ResBlock (resblock_updown) or nearest ×2 + conv.

    __call__(h, skips, emb, context, context_mask, deterministic) → h; `skips` holds this
    level's skip tensors in the order they are consumed (latest first).
    """
    upsample: bool = True

    @nn.compact
    def __call__(self, h, skips: Sequence[jax.Array], emb, context=None, context_mask=None,
                 deterministic: bool = True):
        for j, skip in enumerate(skips):
            h = jnp.concatenate([h, skip.astype(h.dtype)], axis=-1)
            h = self.res(f"resnets_{j}")(h, emb, deterministic)
            if self.attention:
                h = self.attn(f"attentions_{j}")(h, context, context_mask)
        if self.upsample:
            if self.resblock_updown:
                h = self.res("upsamplers_0", up=True)(h, emb, deterministic)
            else:
                h = Upsample(self.dtype, name="upsamplers_0")(h)
        return h

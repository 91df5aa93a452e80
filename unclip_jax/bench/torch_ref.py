"""The same prior / decoder configurations in diffusers' PyTorch unCLIP components, timed on
the same CPU for a side-by-side ratio.

  prior    diffusers `PriorTransformer` (width = heads × head_dim, layers, embedding dim, text
           length, 4 additional tokens, time-MLP width) ↔ `models.prior.DiffusionPrior`
  decoder  `UNet2DConditionModel` (ResnetDownsampleBlock2D / SimpleCrossAttn*Block2D per
           level as our attention resolutions say, UNetMidBlock2DSimpleCrossAttn, scale-shift
           norm, same channels, blocks, head width, groups) + `UnCLIPTextProjModel` for the
           z_i → time-embedding / context-token conditioning ↔ `models.unet.UNet`
  upsampler  `UNet2DModel` (ResnetDownsampleBlock2D / ResnetUpsampleBlock2D, a mid block
           without attention, scale-shift norm) on [x_t; bilinear-upsampled low_res] (6 input
           channels) ↔ the conv-only `models.unet.UNet` with `low_res_channels=3`

Training step: forward on the noised batch, MSE (on x0 for the prior, on ε for the decoder —
our decoder's hybrid loss adds a VLB term whose cost is negligible beside the UNet),
backward, global-norm clipping, `torch.optim.AdamW`. Sampling: classifier-free guidance as one
forward over [cond; uncond] (2B rows) and diffusers' `DDIMScheduler.step`.
Tensors are NCHW / [B, D] float32; `torch.set_num_threads` is set by the caller.
"""
from __future__ import annotations

import numpy as np

from unclip_jax.errors import UserError


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise UserError(msg)


def torch_prior(model_cfg):
    """`PriorTransformer` matching a prior `model` config section."""
    from diffusers import PriorTransformer
    from unclip_jax.models.prior import time_hidden_width
    m = model_cfg
    _require(int(m.text_width) == int(m.embed_dim),
             f"diffusers' PriorTransformer projects text states of width embedding_dim; set "
             f"--config.model.text_width={int(m.embed_dim)} (= model.embed_dim) to compare")
    _require(float(m.mlp_ratio) == 4.0, "diffusers' prior MLP is 4× wide; set "
             "--config.model.mlp_ratio=4.0 to compare")
    width, heads = int(m.width), int(m.heads)
    return PriorTransformer(
        num_attention_heads=heads, attention_head_dim=width // heads, num_layers=int(m.layers),
        embedding_dim=int(m.embed_dim), num_embeddings=int(m.text_len), additional_embeddings=4,
        dropout=float(m.dropout), time_embed_dim=time_hidden_width(
            width, float(m.get("time_mlp_ratio", 4.0)), int(m.get("time_embed_dim", 0))),
        norm_in_type="layer" if m.get("norm_in", False) else None)


def unet_block_types(model) -> dict:
    """diffusers block types for our UNet's levels (attention where ours has it)."""
    levels = len(model.channel_mult)
    attn = [model.level_attention(i) for i in range(levels)]
    down = tuple("SimpleCrossAttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attn)
    up = tuple("SimpleCrossAttnUpBlock2D" if a else "ResnetUpsampleBlock2D"
               for a in reversed(attn))
    return {"down_block_types": down, "up_block_types": up,
            "mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}


def torch_decoder(model_cfg):
    """(`UNet2DConditionModel`, `UnCLIPTextProjModel`) matching a decoder `model` section."""
    from diffusers import UNet2DConditionModel
    from diffusers.pipelines.deprecated.unclip import UnCLIPTextProjModel
    from unclip_jax.models.unet import UNet
    ours = UNet.from_config(model_cfg)
    _require(bool(ours.embed_dim) and bool(ours.attention_resolutions),
             "the PyTorch comparison covers the conditional decoder (model.embed_dim > 0 and "
             "attention); use --config shapes:decoder")
    _require(ours.text_width == ours.embed_dim,
             f"UnCLIPTextProjModel projects text states of width clip_embeddings_dim; set "
             f"--config.model.text_width={ours.embed_dim} to compare")
    mc = ours.model_channels
    unet = UNet2DConditionModel(
        sample_size=ours.image_size, in_channels=ours.in_channels,
        out_channels=ours.out_channels, block_out_channels=tuple(mc * k for k in ours.channel_mult),
        layers_per_block=ours.num_res_blocks, attention_head_dim=ours.num_head_channels,
        cross_attention_dim=ours.context_dim, class_embed_type="identity",
        resnet_time_scale_shift="scale_shift" if ours.use_scale_shift_norm else "default",
        norm_num_groups=ours.norm_groups, dropout=ours.dropout, **unet_block_types(ours))
    text_proj = UnCLIPTextProjModel(
        clip_extra_context_tokens=ours.clip_tokens, clip_embeddings_dim=ours.embed_dim,
        time_embed_dim=4 * mc, cross_attention_dim=ours.context_dim)
    return unet, text_proj


def torch_upsampler(model_cfg):
    """`UNet2DModel` matching an upsampler `model` section (no attention anywhere)."""
    from diffusers import UNet2DModel
    from unclip_jax.models.unet import UNet
    ours = UNet.from_config(model_cfg)
    _require(ours.low_res_channels > 0 and not ours.attention_resolutions,
             "the PyTorch upsampler twin covers the conv-only upsamplers "
             "(shapes:upsampler1 or shapes:upsampler2)")
    levels, mc = len(ours.channel_mult), ours.model_channels
    return UNet2DModel(
        sample_size=ours.image_size, in_channels=ours.in_channels + ours.low_res_channels,
        out_channels=ours.out_channels, block_out_channels=tuple(mc * k for k in ours.channel_mult),
        layers_per_block=ours.num_res_blocks, down_block_types=("ResnetDownsampleBlock2D",) * levels,
        up_block_types=("ResnetUpsampleBlock2D",) * levels, mid_block_type="UNetMidBlock2D",
        add_attention=False, resnet_time_scale_shift="scale_shift" if ours.use_scale_shift_norm
        else "default", norm_num_groups=ours.norm_groups, dropout=ours.dropout)


def count_torch_params(*modules) -> int:
    return int(sum(p.numel() for m in modules for p in m.parameters()))


def _scheduler(diffusion_cfg, predict: str):
    from diffusers import DDIMScheduler
    return DDIMScheduler(num_train_timesteps=int(diffusion_cfg.timesteps),
                         beta_schedule="squaredcos_cap_v2" if diffusion_cfg.schedule == "cosine"
                         else "linear", prediction_type=predict, clip_sample=False)


class TorchWorkload:
    """Train step and guided sampler of the PyTorch twin of a stage config for a host batch
    (the `Workload.batch` dict: numpy, NHWC images)."""

    def __init__(self, config, batch: dict, sample_inputs: dict | None = None, seed: int = 0):
        import torch
        torch.manual_seed(seed)
        self.torch = torch
        self.stage = config.stage
        self.config = config
        t = lambda k: torch.from_numpy(np.ascontiguousarray(batch[k]))
        nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
        self.B = len(batch["key_data"])
        if self.stage in ("upsampler1", "upsampler2"):
            self.modules = [torch_upsampler(config.model)]
            self.x0, self.low_res = nchw(batch["image"]), nchw(batch["low_res"])
            self.sample_x0 = nchw(sample_inputs["x_T"])
            self.sample_low_res = nchw(sample_inputs["low_res"])
            predict = "v_prediction" if config.diffusion.predict == "v" else "epsilon"
        elif self.stage == "prior":
            self.text_states, self.text_mask = t("text_states"), t("text_mask")
            self.z_i = t("z_i")
            self.modules = [torch_prior(config.model)]
            self.z_t = t("z_t")
            self.x0 = self.z_i * float(config.model.get("embed_scale", 1.0))
            predict = "sample"
        else:
            self.text_states, self.text_mask = t("text_states"), t("text_mask")
            self.z_i = t("z_i")
            self.modules = list(torch_decoder(config.model))
            self.x0 = t("image").permute(0, 3, 1, 2).contiguous()
            predict = "epsilon"
        self.predict = predict
        for m in self.modules:
            m.train()
        tc = config.train
        self.params = [p for m in self.modules for p in m.parameters()]
        self.opt = torch.optim.AdamW(self.params, lr=float(tc.lr), betas=(float(tc.b1), float(tc.b2)),
                                     eps=float(tc.eps), weight_decay=float(tc.weight_decay))
        self.grad_clip = float(tc.grad_clip)
        self.sched = _scheduler(config.diffusion, predict)
        self.guidance = float(config.diffusion.guidance_scale)

    def num_params(self) -> int:
        return count_torch_params(*self.modules)

    # ---------------------------------------------------------------------- model calls
    def _forward(self, x_t, t, doubled: bool, low_res=None):
        """Model output for x_t [(2)B, ...]; `doubled` = rows [:B] cond, [B:] uncond.
        Upsamplers take `low_res` (NCHW) instead, resized bilinearly to x_t's size."""
        torch = self.torch
        if low_res is not None:
            up = torch.nn.functional.interpolate(low_res, size=x_t.shape[-2:], mode="bilinear",
                                                 align_corners=False)
            return self.modules[0](torch.cat([x_t, up], 1), t).sample
        two = (lambda a: torch.cat([a, a])) if doubled else (lambda a: a)
        if self.stage == "prior":
            out = self.modules[0](x_t, t, proj_embedding=two(self.z_t),
                                  encoder_hidden_states=two(self.text_states),
                                  attention_mask=two(self.text_mask))
            return out.predicted_image_embedding
        unet, text_proj = self.modules
        enc, additive = text_proj(image_embeddings=self.z_i, prompt_embeds=two(self.z_i),
                                  text_encoder_hidden_states=two(self.text_states),
                                  do_classifier_free_guidance=doubled)
        n = enc.shape[1] - self.text_mask.shape[1]
        mask = torch.cat([torch.ones(x_t.shape[0], n, dtype=torch.bool), two(self.text_mask)], 1)
        return unet(x_t, t, encoder_hidden_states=enc, class_labels=additive,
                    attention_mask=mask).sample

    def train_step(self) -> float:
        """One forward + backward + AdamW update on the batch → loss."""
        torch = self.torch
        t = torch.randint(0, int(self.config.diffusion.timesteps), (self.B,))
        noise = torch.randn_like(self.x0)
        x_t = self.sched.add_noise(self.x0, noise, t)
        out = self._forward(x_t, t, doubled=False, low_res=getattr(self, "low_res", None))
        if self.stage == "prior":
            target = self.x0
        elif self.predict == "v_prediction":
            target = self.sched.get_velocity(self.x0, noise, t)
        else:
            target = noise
        loss = torch.mean((out[:, :target.shape[1]] - target) ** 2)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.opt.step()
        return float(loss.detach())

    def sample(self, steps: int):
        """Guided DDIM (η = 0) over `steps` steps from fixed noise → x0 (upsamplers: unguided,
        the whole image from its low-res version)."""
        torch = self.torch
        self.sched.set_timesteps(steps)
        if hasattr(self, "low_res"):
            x = self.sample_x0.clone()
            with torch.no_grad():
                for t in self.sched.timesteps:
                    out = self._forward(x, t.repeat(self.B), False, self.sample_low_res)
                    x = self.sched.step(out, t, x).prev_sample
            return x
        x = torch.randn_like(self.x0, generator=torch.Generator().manual_seed(1))
        c = self.x0.shape[1]
        with torch.no_grad():
            for t in self.sched.timesteps:
                out = self._forward(torch.cat([x, x]), t.repeat(2 * self.B), doubled=True)
                cond, uncond = out[:self.B, :c], out[self.B:, :c]
                x = self.sched.step(uncond + self.guidance * (cond - uncond), t, x).prev_sample
        return x


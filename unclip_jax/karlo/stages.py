"""Karlo v1-alpha (kakaobrain's public unCLIP, diffusers unCLIP layout) as unclip-jax stage
configs: the published architecture (REFERENCE.md) and diffusers' `UnCLIPPipeline` sampling
defaults. `unclip_jax.karlo.diffusers_config.from_diffusers` starts from these stages and reads
the architecture from a diffusers directory's config.json files; the `karlo` preset
(configs/karlo.py) serves them as `--config karlo:STAGE`.

CLIP ViT-L/14 (embedding 768, text width 768, 77 tokens); prior width 2048 / 20 layers / 32
heads; decoder 64 px, 320 channels, 3 res blocks, mult (1,2,3,4), attention at 32/16/8 with
64-channel heads, scale-shift norm, learned σ, context width 1536 (CLIP token states
projected, 4 extra tokens from z_i); super-res 64→256, 320 channels, 3 res blocks, mult
(1,2,3,4), no attention. Super-res split: `super_res_first` (upsampler1) runs every super-res
step but the last, `super_res_last` (upsampler2, `diffusion.final_steps` = 1) the last one.
Training sections are the schema's defaults (`unclip_jax.config_schema`): these stages are
for converted weights.
"""
from __future__ import annotations

import ml_collections as mlc

from unclip_jax import config_schema as schema
from unclip_jax.karlo.sampling import TRAIN_TIMESTEPS, karlo_timesteps

EMBED_DIM = 768          # CLIP ViT-L/14 joint embedding
TEXT_WIDTH = 768         # CLIP ViT-L/14 text transformer width
TEXT_LEN = 77
TIMESTEPS = TRAIN_TIMESTEPS

PRIOR_STEPS, DECODER_STEPS, SUPER_RES_STEPS = 25, 25, 7
PRIOR_GUIDANCE, DECODER_GUIDANCE = 4.0, 8.0
PRIOR_CLAMP = 5.0        # diffusers' prior_scheduler clip_sample_range (Karlo's own code: 10)
SUPER_RES_LAST_STEPS = 1  # super_res_last runs the final super-res step
UNCOND = "empty_caption"  # guidance's unconditional branch: the CLIP encoding of ""


def clip_model(text_layers=12, text_heads=12):
    """CLIP ViT-L/14 `model` section (Karlo ships only the text tower,
    CLIPTextModelWithProjection)."""
    return schema.clip_model(
        embed_dim=EMBED_DIM,
        text=dict(vocab_size=49408, context_length=TEXT_LEN, width=TEXT_WIDTH,
                  layers=text_layers, heads=text_heads, mlp_ratio=4.0, activation="quick_gelu",
                  eos_token_id=2, pad_token_id=1),
        vision=dict(image_size=224, patch_size=14, width=1024, layers=24, heads=16,
                    mlp_ratio=4.0, activation="quick_gelu"))


def clip():
    return schema.stage_config("clip", clip_model(), data=schema.data(224))


def _diffusion(predict, variance, steps, guidance=1.0, clip_range=1.0, loss="mse"):
    d = schema.diffusion(schedule="cosine", timesteps=TIMESTEPS, predict=predict,
                         variance=variance, loss=loss, sampler="ddpm", guidance_scale=guidance,
                         clip_denoised=True, clip_range=clip_range)
    # "N" (Improved-DDPM spacing) visits exactly UnCLIPScheduler.set_timesteps(N)'s
    # timesteps, `karlo_timesteps(N)` (tests/test_karlo.py checks every N ≤ 1000)
    d.sample_steps = str(steps)
    return d


def _train(**drops):
    """The schema's train section with unCLIP's classifier-free-guidance drop rates (paper:
    the prior drops the caption 10% of the time; the decoder the caption 50% and z_i 10%)."""
    cfg = schema.train()
    cfg.update(drops)
    return cfg


def prior():
    model = schema.diffusion_prior(
        width=2048, layers=20, heads=32, embed_dim=EMBED_DIM, text_width=TEXT_WIDTH,
        text_len=TEXT_LEN, normalize="meanstd", clamp=PRIOR_CLAMP, sample_candidates=1,
        normalize_z_t=False,             # Karlo projects the raw CLIP text embedding
        time_mlp_ratio=1.0)              # TimestepEmbedding(width → width → width)
    d = _diffusion("x0", "fixed_small", PRIOR_STEPS, PRIOR_GUIDANCE, PRIOR_CLAMP)
    d.uncond = UNCOND                    # guidance's uncond half: CLIP encoding of ""
    return schema.stage_config("prior", model, diffusion_cfg=d,
                               clip=schema.clip_ref(clip_model()), data=schema.data(224),
                               train_cfg=_train(text_drop=0.1))


def decoder():
    model = schema.unet(64, 320, (1, 2, 3, 4), 3, (32, 16, 8), out_channels=6,
                        embed_dim=EMBED_DIM, text_width=TEXT_WIDTH, text_len=TEXT_LEN,
                        context_dim=1536)
    model.update(dict(num_head_channels=64, clip_tokens=4, dropout=0.1, norm_groups=32))
    model.text_embed_dim = EMBED_DIM          # z_t also added to the time embedding
    model.learned_null_image_embed = True     # text_proj's learned guidance embedding
    d = _diffusion("eps", "learned_range", DECODER_STEPS, DECODER_GUIDANCE, loss="hybrid")
    d.uncond = UNCOND                         # uncond: learned null z_i + the text of ""
    return schema.stage_config("decoder", model, diffusion_cfg=d,
                               clip=schema.clip_ref(clip_model()), data=schema.data(64),
                               train_cfg=_train(text_drop=0.5, image_embed_drop=0.1))


def _super_res(stage):
    model = schema.unet(256, 320, (1, 2, 3, 4), 3, (), out_channels=3, embed_dim=EMBED_DIM,
                        text_width=TEXT_WIDTH, text_len=TEXT_LEN, low_res=True,
                        conditional=False)
    model.dropout = 0.0
    d = _diffusion("eps", "fixed_small", SUPER_RES_STEPS)
    d.low_res_upscale = "bicubic"     # 64 px → 256 px before the UNet
    # > 0: run inside the previous upsampler's loop for its final steps (super_res_last)
    d.final_steps = SUPER_RES_LAST_STEPS if stage == "upsampler2" else 0
    return schema.stage_config(stage, model, diffusion_cfg=d, data=schema.data(
        256, low_res_size=64, crop_size=64, degradation="blur"))


def upsampler1():
    """Karlo's super_res_first: every super-res step but the last."""
    return _super_res("upsampler1")


def upsampler2():
    """Karlo's super_res_last: the final super-res step (also 64→256, not 256→1024)."""
    return _super_res("upsampler2")


def sampling():
    """diffusers UnCLIPPipeline defaults as one preset (timesteps are original-schedule indices)."""
    cfg = mlc.ConfigDict(dict(
        prior_steps=PRIOR_STEPS, decoder_steps=DECODER_STEPS, super_res_steps=SUPER_RES_STEPS,
        prior_timesteps=karlo_timesteps(PRIOR_STEPS),
        decoder_timesteps=karlo_timesteps(DECODER_STEPS),
        super_res_timesteps=karlo_timesteps(SUPER_RES_STEPS),
        prior_guidance=PRIOR_GUIDANCE, decoder_guidance=DECODER_GUIDANCE,
        prior_clamp=PRIOR_CLAMP,          # clip predicted x0 of the prior to ±5 (normalised)
        prior_candidates=1,               # the pipeline keeps its one sample (no best-of)
        decoder_clip_range=1.0, super_res_clip_range=1.0,
        super_res_last_steps=SUPER_RES_LAST_STEPS,   # upsampler2 (super_res_last): final step
        low_res_upscale="bicubic",        # decoder output → 256 px before super-res
    ))
    cfg.lock()
    return cfg


BUILDERS = dict(decoder=decoder, prior=prior, upsampler1=upsampler1, upsampler2=upsampler2,
                clip=clip, sampling=sampling, karlo=sampling)


def get_stage(name: str) -> mlc.ConfigDict:
    """Karlo's config `name` (a stage, or 'sampling'); UserError for another name."""
    return schema.pick(name, BUILDERS)

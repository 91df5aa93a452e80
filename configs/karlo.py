"""Karlo v1-alpha (kakaobrain's public unCLIP, diffusers unCLIP layout) as unclip-jax stages.

`--config karlo:STAGE` with STAGE one of decoder, prior, upsampler1, upsampler2,
clip, or `sampling` (alias `karlo`): the sampling preset that reproduces diffusers'
`UnCLIPPipeline` (timestep spacing of `UnCLIPScheduler.set_timesteps`, prior clamp,
guidance 4.0 / 8.0, the super-res split).

The stage configs hold Karlo's published architecture (REFERENCE.md): CLIP ViT-L/14
(embedding 768, text width 768, 77 tokens); prior width 2048 / 20 layers / 32 heads; decoder
64 px, 320 channels, 3 res blocks, mult (1,2,3,4), attention at 32/16/8 with 64-channel heads,
scale-shift norm, learned σ, context width 1536 (CLIP token states projected, 4 extra tokens
from z_i); super-res 64→256, 320 channels, 3 res blocks, mult (1,2,3,4), no attention.

`unclip_jax.karlo.diffusers_config.from_diffusers(src)` starts from these stages and reads the
architecture from a diffusers directory's config.json files (`unclip-jax convert-karlo`).

Super-res split: Karlo runs `super_res_first` for every super-res step but the last and
`super_res_last` for the final step (t = 0). The converter writes them as `upsampler1` and
`upsampler2`; both are 64→256 models (`model.image_size` 256, `data.low_res_size` 64), and
`sampling.super_res_last_steps` = 1 says how many final steps use upsampler2.

What the sampler (`unclip_jax.sample.unclip.UnCLIP`) reads from these stage configs, so a
converted checkpoint samples like diffusers' UnCLIPPipeline with no Karlo special case:
  diffusion.sample_steps / guidance_scale   25 / 25 / 7 steps ("N" = UnCLIPScheduler's
                                            spacing), guidance 4.0 (prior) and 8.0 (decoder)
  prior model.clamp, sample_candidates      x0 clipped to ±5; one candidate (no best-of)
  diffusion.uncond = 'empty_caption'        (prior, decoder) guidance's unconditional half
                                            is the CLIP encoding of "" (decoder: with the
                                            learned null image embedding), not a drop path
  diffusion.low_res_upscale = 'bicubic'     (super-res) 64 px → 256 px before the UNet
  diffusion.final_steps = 1                 (upsampler2) runs the last step of upsampler1's
                                            loop instead of being a further stage
"""
from __future__ import annotations

import ml_collections as mlc

from unclip_jax.configs import common, shapes
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


# ----------------------------------------------------------------------------- stages

def clip_model(text_layers=12, text_heads=12):
    """CLIP ViT-L/14 `model` section. Karlo ships only the text tower (CLIPTextModelWithProjection)."""
    cfg = shapes.clip_model()
    cfg.embed_dim = EMBED_DIM
    cfg.text.update(dict(vocab_size=49408, context_length=TEXT_LEN, width=TEXT_WIDTH,
                         layers=text_layers, heads=text_heads, activation="quick_gelu",
                         eos_token_id=2, pad_token_id=1))
    cfg.vision.update(dict(image_size=224, patch_size=14, width=1024, layers=24, heads=16,
                           activation="quick_gelu"))
    return cfg


def clip():
    cfg = shapes.clip()
    with cfg.unlocked():
        cfg.model = clip_model()
        cfg.data.image_size = 224
    return cfg


def _diffusion(predict, variance, steps, guidance=1.0, clip_range=1.0, loss="mse"):
    d = common.diffusion(schedule="cosine", timesteps=TIMESTEPS, predict=predict,
                         variance=variance, loss=loss, sampler="ddpm", guidance_scale=guidance,
                         clip_denoised=True, clip_range=clip_range)
    # "N" (Improved-DDPM spacing) visits exactly UnCLIPScheduler.set_timesteps(N)'s
    # timesteps, `karlo_timesteps(N)` (tests/test_karlo.py checks every N ≤ 1000)
    d.sample_steps = str(steps)
    return d


def prior():
    cfg = shapes.prior()
    with cfg.unlocked():
        cfg.model.update(dict(width=2048, layers=20, heads=32, embed_dim=EMBED_DIM,
                              text_width=TEXT_WIDTH, text_len=TEXT_LEN, mlp_ratio=4.0,
                              normalize="meanstd", clamp=PRIOR_CLAMP, sample_candidates=1))
        cfg.model.normalize_z_t = False    # Karlo projects the raw CLIP text embedding
        cfg.model.time_mlp_ratio = 1.0     # TimestepEmbedding(width → width → width)
        cfg.model.norm_in = False
        cfg.diffusion = _diffusion("x0", "fixed_small", PRIOR_STEPS, PRIOR_GUIDANCE,
                                   PRIOR_CLAMP)
        cfg.diffusion.uncond = UNCOND     # guidance's uncond half: CLIP encoding of ""
        cfg.clip.model = clip_model()
        cfg.data.image_size = 224
    return cfg


def decoder():
    cfg = shapes.decoder()
    with cfg.unlocked():
        cfg.model = shapes.unet(64, 320, (1, 2, 3, 4), 3, (32, 16, 8), out_channels=6,
                                context_dim=1536)
        cfg.model.update(dict(num_head_channels=64, embed_dim=EMBED_DIM, text_width=TEXT_WIDTH,
                              text_len=TEXT_LEN, clip_tokens=4, dropout=0.1, norm_groups=32))
        cfg.model.text_embed_dim = EMBED_DIM          # z_t also added to the time embedding
        cfg.model.learned_null_image_embed = True     # text_proj's learned guidance embedding
        cfg.diffusion = _diffusion("eps", "learned_range", DECODER_STEPS, DECODER_GUIDANCE,
                                   loss="hybrid")
        cfg.diffusion.uncond = UNCOND     # uncond: learned null z_i + the text of ""
        cfg.clip.model = clip_model()
        cfg.data.image_size = 64
    return cfg


def _super_res(stage):
    cfg = shapes.upsampler1()
    with cfg.unlocked():
        cfg.stage = stage
        cfg.model = shapes.unet(256, 320, (1, 2, 3, 4), 3, (), out_channels=3, low_res=True,
                                conditional=False)
        cfg.model.dropout = 0.0
        cfg.diffusion = _diffusion("eps", "fixed_small", SUPER_RES_STEPS)
        cfg.diffusion.low_res_upscale = "bicubic"   # 64 px → 256 px before the UNet
        # > 0: run inside the previous upsampler's loop for its final steps (super_res_last)
        cfg.diffusion.final_steps = SUPER_RES_LAST_STEPS if stage == "upsampler2" else 0
        cfg.data.update(dict(image_size=256, low_res_size=64, crop_size=64,
                             degradation="blur"))
    return cfg


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


def get_config(arg=None):
    return common.pick(arg, BUILDERS)

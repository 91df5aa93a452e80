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

The stages are defined in the library (`unclip_jax.karlo.stages`), where
`unclip_jax.karlo.diffusers_config.from_diffusers(src)` starts from them and reads the
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
from unclip_jax.karlo.stages import BUILDERS, get_stage  # noqa: F401  (the preset's variants)


def get_config(arg=None):
    return get_stage(arg or next(iter(BUILDERS)))

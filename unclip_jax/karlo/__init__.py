"""Karlo (kakaobrain's public unCLIP, diffusers unCLIP layout) in unclip-jax.

`convert_karlo(src, dst)` imports the weights (`unclip_jax.karlo.convert`);
`unclip_jax.karlo.diffusers_config` reads a diffusers directory's config.json files into stage
configs, starting from Karlo's stages (`unclip_jax.karlo.stages`: architecture, sampling
defaults; the `karlo` preset serves them);
`unclip_jax.karlo.sampling` has the pieces of diffusers' UnCLIPPipeline semantics that are
Karlo-specific (its timesteps).
CLI: `unclip-jax convert-karlo SRC DST`.
"""
from unclip_jax.karlo.convert import convert_karlo  # noqa: F401
from unclip_jax.karlo.sampling import karlo_schedule  # noqa: F401

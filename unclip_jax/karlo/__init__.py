"""Karlo (kakaobrain's public unCLIP, diffusers unCLIP layout) in unclip-jax.

`convert_karlo(src, dst)` imports the weights (see `unclip_jax.karlo.convert`);
`configs/karlo.py` holds the architecture and the sampling preset; `unclip_jax.karlo.sampling`
has the pieces of diffusers' UnCLIPPipeline semantics that are Karlo-specific.
CLI: `unclip-jax convert-karlo SRC DST`.
"""
from unclip_jax.karlo.convert import add_arguments, convert_karlo, run  # noqa: F401
from unclip_jax.karlo.sampling import karlo_schedule, super_res_model_fn  # noqa: F401

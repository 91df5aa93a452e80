"""TRANSITIONAL (#16): the stage-config schema lives in the library (`unclip_jax.config_schema`);
this module goes once configs/shapes.py imports it from there."""
from unclip_jax.config_schema import STAGES, diffusion, mesh, pick, stage_config, train  # noqa: F401

"""unclip-jax: unCLIP (DALL·E 2) in JAX/Flax — CLIP, priors, decoder, upsamplers, samplers.

    from unclip_jax import UnCLIP
    model = UnCLIP.from_directory()          # the bundled shapes model

Importing the package applies the XLA CPU settings of `unclip_jax.runtime` (before JAX starts
its backends) and nothing else; `UnCLIP` is imported on first access.
"""
from unclip_jax import runtime as _runtime

__version__ = "0.1.0"
__all__ = ["UnCLIP", "__version__"]

_runtime.apply_xla_cpu_defaults()


def __getattr__(name):
    if name == "UnCLIP":
        from unclip_jax.sample.unclip import UnCLIP
        return UnCLIP
    raise AttributeError(f"module 'unclip_jax' has no attribute {name!r}")

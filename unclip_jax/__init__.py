"""unclip-jax: unCLIP (DALL·E 2) in JAX/Flax — CLIP, priors, decoder, upsamplers, samplers."""

__version__ = "0.1.0"

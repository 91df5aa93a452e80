"""Flax Linen models: shared layers, diffusion prior, AR prior, ADM UNet."""

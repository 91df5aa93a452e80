"""Evaluation: metrics (CLIP score, Fréchet distance, diversity, prior metrics, bootstrap
intervals), the `unclip_shapes` attribute classifier, `evaluate` and `unclip-jax eval`."""

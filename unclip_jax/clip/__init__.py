"""Flax CLIP (text + vision transformers), preprocessing, tokenizers, HF import and loss.

Submodules are imported lazily by callers (`from unclip_jax.clip.model import CLIP`), so
importing this package stays cheap (no transformers / torch).
"""

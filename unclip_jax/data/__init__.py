"""Datasets and input pipelines: TFDS builders (captioned shapes, image-caption folders),
degradations, tf.data pipelines per stage and CLIP-embedding precompute.

TensorFlow is only an input library here: importing this package hides every GPU/TPU from it
so that JAX keeps the accelerators.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

for _kind in ("GPU", "TPU"):
    try:
        tf.config.set_visible_devices([], _kind)
    except (RuntimeError, ValueError):  # already initialised, or no such device type
        pass

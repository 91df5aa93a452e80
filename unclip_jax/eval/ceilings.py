"""Stage ceilings on REAL images: how much of each attribute a base resolution can carry.

For each candidate resolution S, a classifier is trained on real train images downsampled to S
and scored on real validation images at S: the attribute classifier (colour, shape, position,
size of single-object scenes, `eval.attributes`) and an object-count classifier (1–3 objects,
every scene). A decoder sampling at S cannot be read more accurately than this.

    unclip-jax eval-ceilings --data-dir DATA --sizes 16,24,32,48,64 --out DIR

writes DIR/ceiling_S.json per size (`resolution_ceiling`: {'attributes': {...}, 'count': acc,
'seconds': ...}) and the attribute classifier of each size to DIR/classifier_S
(`unclip_jax.cli.eval_ceilings`).
"""
from __future__ import annotations

import time
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from unclip_jax.data import hard_negatives as hn
from unclip_jax.data import sources
from unclip_jax.eval.data import load_examples, resolve_dataset
from unclip_jax.eval.fit import adamw_trainer
from unclip_jax.models.layers import dense
from unclip_jax.models.unet_blocks import conv


class CountNet(nn.Module):
    """images [B, S, S, 3] in [-1, 1] → logits [B, 3] for 1, 2, 3 objects: a conv stack
    (3×3 conv + stride-2 conv per level), its flattened map and spatial max through a hidden
    layer."""
    channels: Sequence[int] = (16, 32, 64)
    hidden: int = 128

    @nn.compact
    def __call__(self, x):
        h = x.astype(jnp.float32)
        for i, ch in enumerate(self.channels):
            h = nn.silu(conv(ch, 3, f"conv{i}_a", jnp.float32)(h))
            h = nn.silu(conv(ch, 3, f"conv{i}_b", jnp.float32, stride=2)(h))
        f = jnp.concatenate([h.reshape(h.shape[0], -1), h.max(axis=(1, 2))], axis=-1)
        f = nn.silu(dense(self.hidden, ("embed", "mlp"), "hidden", jnp.float32)(f))
        return dense(hn.MAX_OBJECTS, ("mlp", "vocab"), "head", jnp.float32)(f)


def count_loss(params, model, images, counts):
    """Mean softmax cross-entropy of CountNet's logits; counts int32 [B] (0, 1, 2 for 1–3
    objects)."""
    return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, images),
                                                           counts).mean()


def _counts(data_dir: str, name: str, split: str, index: np.ndarray) -> np.ndarray:
    seed = int(sources.builder_for(name, data_dir).builder_config.seed)
    return np.array([len(hn.scene(seed, split, int(i))[0]) - 1 for i in index], np.int32)


def train_count_classifier(data_dir: str, *, image_size: int, dataset: str | None = None,
                           steps: int = 1500, batch_size: int = 64, learning_rate: float = 2e-3,
                           max_train: int = 20000, seed: int = 0) -> dict:
    """Train CountNet on real train scenes at `image_size`; → {'accuracy' on validation,
    'num_train', 'num_validation', 'seconds'}."""
    name = resolve_dataset(data_dir, dataset)
    train = load_examples(data_dir, "train", image_size=image_size, dataset=name,
                          single_object=False, limit=max_train)
    val = load_examples(data_dir, "validation", image_size=image_size, dataset=name,
                        single_object=False)
    y_train = _counts(data_dir, name, "train", train["index"])
    y_val = _counts(data_dir, name, "validation", val["index"])
    model = CountNet()
    params, opt, step = adamw_trainer(model, count_loss, image_size, steps=steps,
                                      learning_rate=learning_rate, weight_decay=1e-4, seed=seed)
    predict = jax.jit(lambda p, x: model.apply(p, x).argmax(-1))
    rng = np.random.default_rng(seed)
    start = time.time()
    n = len(y_train)
    for _ in range(int(steps)):
        idx = rng.integers(0, n, batch_size)
        x = train["image"][idx].astype(np.float32) / 127.5 - 1.0
        params, opt, _ = step(params, opt, x, y_train[idx])
    pred = np.concatenate([np.asarray(predict(params, val["image"][i:i + 256].astype(np.float32)
                                              / 127.5 - 1.0))
                           for i in range(0, len(y_val), 256)])
    return {"accuracy": float(np.mean(pred == y_val)), "num_train": n,
            "num_validation": len(y_val), "seconds": time.time() - start}


def resolution_ceiling(data_dir: str, image_size: int, *, dataset: str | None = None,
                       steps: int = 1500, classifier_dir: str | None = None) -> dict:
    """Attribute and count classifiers trained and scored at `image_size` (real images); the
    attribute classifier is saved to `classifier_dir` when given (`unclip-jax eval
    --classifier` reads it)."""
    from unclip_jax.eval.attributes import train_attribute_classifier
    start = time.time()
    att = train_attribute_classifier(data_dir, dataset=dataset, image_size=image_size,
                                     steps=steps, out_dir=classifier_dir)
    cnt = train_count_classifier(data_dir, dataset=dataset, image_size=image_size, steps=steps)
    return {"image_size": image_size, "steps": steps, "attributes": att["validation_accuracy"],
            "num_validation_single": att["num_validation"], "count": cnt["accuracy"],
            "num_validation_all": cnt["num_validation"], "seconds": time.time() - start}


"""Attribute classifier for `unclip_shapes` single-object images: colour, shape, position and
size heads on a compact CNN, trained with optax on the dataset's labels.

It scores generated images: a sample for "a small red circle on the left" is correct in
colour if the classifier calls it red, and so on. Its own accuracy on real validation images
is the ceiling to read generated-image accuracies against.

    clf_dir = train_attribute_classifier(data_dir, out_dir='clf/', image_size=64)['directory']
    clf = AttributeClassifier.load(clf_dir)
    pred = clf.predict(images)         # images uint8 or [-1, 1] float [N, H, W, 3], any size
    pred['colour']                     # int32 [N] (class ids in `data.ATTRIBUTES` order)

Checkpoint: `unclip_jax.export` layout with config.stage = 'attributes', extra.json holding
the classifier's validation accuracy and class names.
"""
from __future__ import annotations

import time
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax

from unclip_jax import export
from unclip_jax.errors import UserError
from unclip_jax.eval.data import ATTRIBUTES, load_examples
from unclip_jax.eval.fit import adamw_trainer
from unclip_jax.models.layers import dense
from unclip_jax.models.unet_blocks import conv

STAGE = "attributes"


class AttributeNet(nn.Module):
    """images [B, S, S, 3] in [-1, 1] → ({head: logits [B, classes]}, features [B, F]).

    Two paths. Pixel path: two 1×1 convs on each pixel and its difference from the image's
    border median (the background), pooled by spatial mean and max — a per-pixel colour code.
    Conv path: per level a 3×3 conv and a stride-2 3×3 conv (SiLU), then the spatial mean and
    max of the last level. Colour is read from the pixel code alone; shape and size from both
    pooled codes (translation invariant); position from the flattened conv map through a
    hidden layer. features is the concatenation of all (F = 2·pixel + 2·channels[-1] +
    hidden).
    """
    channels: Sequence[int] = (16, 32, 64)
    hidden: int = 128
    pixel: int = 32
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        dt = jnp.dtype(self.dtype)
        x = x.astype(jnp.float32)
        colour, pooled, h = image_codes(x, border_background(x), self.channels, self.pixel, dt)
        where = nn.silu(dense(self.hidden, ("embed", "mlp"), "hidden", dt)(
            h.reshape(h.shape[0], -1)))
        logits = {k: dense(len(names), ("mlp", "vocab"), f"head_{k}", dt)(
            {"position": where, "colour": colour}.get(k, pooled)).astype(jnp.float32)
            for k, names in ATTRIBUTES.items()}
        return logits, jnp.concatenate([pooled, where.astype(jnp.float32)], axis=-1)


def border_background(x) -> jnp.ndarray:
    """images [B, S, S, 3] → the per-channel median of their border pixels [B, 1, 1, 3]."""
    border = jnp.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1)
    return jnp.median(border, axis=1)[:, None, None, :]


def image_codes(x, background, channels: Sequence[int], pixel: int, dt):
    """The pixel and conv paths of `AttributeNet`, called inside a compact module (it creates
    the layers pixel_a, pixel_b, conv{i}_a, conv{i}_b there).

    x [B, S, S, 3] float32 in [-1, 1], background [B, 1, 1, 3] → (colour code [B, 2·pixel],
    pooled code [B, 2·pixel + 2·channels[-1]], last conv map [B, S/2^L, S/2^L, channels[-1]]).
    """
    p = jnp.concatenate([x, x - background], axis=-1).astype(dt)
    p = nn.silu(conv(pixel, 1, "pixel_a", dt)(p))
    p = nn.silu(conv(pixel, 1, "pixel_b", dt)(p)).astype(jnp.float32)
    h = x.astype(dt)
    for i, ch in enumerate(channels):
        h = nn.silu(conv(ch, 3, f"conv{i}_a", dt)(h))
        h = nn.silu(conv(ch, 3, f"conv{i}_b", dt, stride=2)(h))
    h = h.astype(jnp.float32)
    colour = jnp.concatenate([p.mean(axis=(1, 2)), p.max(axis=(1, 2))], axis=-1)
    pooled = jnp.concatenate([colour, h.mean(axis=(1, 2)), h.max(axis=(1, 2))], axis=-1)
    return colour, pooled, h


def model_config(image_size: int = 64, channels: Sequence[int] = (16, 32, 64),
                 hidden: int = 128, pixel: int = 32) -> mlc.ConfigDict:
    """The `model` section of a classifier config (image_size: input resolution in pixels)."""
    return mlc.ConfigDict(dict(image_size=int(image_size), channels=tuple(channels),
                               hidden=int(hidden), pixel=int(pixel), dtype="float32"))


def from_config(m) -> AttributeNet:
    return AttributeNet(channels=tuple(m.channels), hidden=int(m.hidden), pixel=int(m.pixel),
                        dtype=str(m.dtype))


def resize_images(images, size: int) -> jnp.ndarray:
    """uint8 [0, 255] or float [-1, 1] images [N, H, W, 3] → float32 [N, size, size, 3] in
    [-1, 1] (antialiased linear resize)."""
    x = jnp.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise UserError(f"images must be [N, H, W, 3], got shape {tuple(x.shape)}")
    x = x.astype(jnp.float32) / 127.5 - 1.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
    if x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, 3), "linear", antialias=True)
    return x


def loss_fn(params, model, images, labels):
    """Sum over heads of the mean softmax cross-entropy; images [B,S,S,3], labels {head: [B]}."""
    logits, _ = model.apply(params, images)
    return sum(optax.softmax_cross_entropy_with_integer_labels(logits[k], labels[k]).mean()
               for k in ATTRIBUTES)


def accuracy(predictions: dict, labels: dict) -> dict[str, float]:
    """{head: fraction correct} plus 'all' (every head right), from int arrays [N]."""
    correct = {k: np.asarray(predictions[k]) == np.asarray(labels[k]) for k in ATTRIBUTES}
    out = {k: float(v.mean()) for k, v in correct.items()}
    out["all"] = float(np.all(np.stack(list(correct.values())), axis=0).mean())
    return out


class LoadedNet:
    """A network of an `export` directory of stage `STAGE`: params, config, extra, the model
    `build(config.model)` gives, its jitted apply and its input size config.model.image_size."""
    STAGE = ""

    def __init__(self, params, config: mlc.ConfigDict, extra: dict | None = None):
        self.params = params
        self.config = config
        self.extra = extra or {}
        self.image_size = int(config.model.image_size)
        self.model = self.build(config.model)
        self._apply = jax.jit(lambda p, x: self.model.apply(p, x))

    @staticmethod
    def build(model_config) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def load(cls, directory: str):
        params, config, extra = export.load(directory, expect_stage=cls.STAGE)
        return cls(params, config, extra)


class AttributeClassifier(LoadedNet):
    """A loaded classifier: `predict(images)` → {head: int32 [N]}, `features(images)`."""
    STAGE = STAGE
    build = staticmethod(from_config)

    def _run(self, images, batch_size: int = 256):
        logits, feats = [], []
        for i in range(0, len(images), batch_size):
            lg, f = self._apply(self.params, resize_images(images[i:i + batch_size],
                                                           self.image_size))
            logits.append({k: np.asarray(v) for k, v in lg.items()})
            feats.append(np.asarray(f))
        return ({k: np.concatenate([lg[k] for lg in logits]) for k in ATTRIBUTES},
                np.concatenate(feats))

    def predict(self, images) -> dict[str, np.ndarray]:
        """images [N, H, W, 3] (uint8 or [-1, 1] float) → {head: predicted class id int32 [N]}."""
        logits, _ = self._run(images)
        return {k: v.argmax(-1).astype(np.int32) for k, v in logits.items()}

    def features(self, images) -> np.ndarray:
        """images → penultimate features [N, hidden] (a feature space for Fréchet distances)."""
        return self._run(images)[1]


def train_attribute_classifier(data_dir: str, *, out_dir: str | None = None,
                               dataset: str | None = None, image_size: int = 64,
                               steps: int = 1500, batch_size: int = 64,
                               learning_rate: float = 2e-3, weight_decay: float = 1e-4,
                               channels: Sequence[int] = (16, 32, 64), hidden: int = 128,
                               max_train: int = 30000, seed: int = 0,
                               log_every: int = 0) -> dict:
    """Train on the single-object train images of `data_dir`'s unclip_shapes build, resized to
    `image_size`; measure accuracy on its single-object validation images.

    Returns {'params', 'config', 'validation_accuracy': {head: acc, 'all'}, 'num_train',
    'num_validation', 'seconds', 'directory' (when out_dir is given: saved with export.save)}.
    """
    if int(steps) < 1 or int(batch_size) < 1:
        raise UserError(f"steps={steps} and batch_size={batch_size} must be positive")
    train = load_examples(data_dir, "train", image_size=image_size, dataset=dataset,
                          limit=max_train)
    val = load_examples(data_dir, "validation", image_size=image_size, dataset=dataset)
    cfg = mlc.ConfigDict(dict(
        stage=STAGE, model=model_config(image_size, channels, hidden),
        data=dict(dataset=dataset or "", data_dir=data_dir, num_train=len(train["image"])),
        train=dict(steps=int(steps), batch_size=int(batch_size), lr=float(learning_rate),
                   weight_decay=float(weight_decay), seed=int(seed))))
    params, opt_state, step = adamw_trainer(
        from_config(cfg.model), loss_fn, image_size, steps=steps, learning_rate=learning_rate,
        weight_decay=weight_decay, seed=seed)
    n = len(train["image"])
    rng = np.random.default_rng(seed)
    bs = min(int(batch_size), n)
    start = time.time()
    order = rng.permutation(n)
    pos = 0
    for i in range(int(steps)):
        if pos + bs > n:
            order, pos = rng.permutation(n), 0
        idx = order[pos:pos + bs]
        pos += bs
        images = train["image"][idx].astype(np.float32) / 127.5 - 1.0
        params, opt_state, loss = step(params, opt_state, images,
                                       {k: train[k][idx] for k in ATTRIBUTES})
        if log_every and (i + 1) % log_every == 0:
            print(f"attributes step {i + 1}/{steps} loss {float(loss):.4f}", flush=True)
    clf = AttributeClassifier(jax.device_get(params), cfg)
    acc = accuracy(clf.predict(val["image"]), val)
    out = {"params": clf.params, "config": cfg, "validation_accuracy": acc,
           "num_train": n, "num_validation": len(val["image"]),
           "seconds": time.time() - start}
    if out_dir is not None:
        extra = {"validation_accuracy": acc, "num_train": n, "num_validation": out["num_validation"],
                 "classes": {k: list(v) for k, v in ATTRIBUTES.items()}}
        out["directory"] = export.save(out_dir, clf.params, cfg, extra=extra)
    return out

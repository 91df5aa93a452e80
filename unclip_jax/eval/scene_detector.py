"""Per-cell scene detector for `unclip_shapes` images: for each of the 3×3 grid cells, empty or
an object, and for an object its colour, shape and size.

The scenes put at most one object in each cell of a 3×3 grid (`render.POSITIONS`, row-major:
cell c = 3·row + col). The detector cuts the (resized) image into the 9 cells and reads each
with the attribute classifier's pixel and conv paths (`attributes.image_codes`), the
background taken from the whole image's border; one set of heads is shared by all cells.
From its output come object count, position, colour–shape binding and relative positions
(`geneval_scores`).

    out = train_scene_detector(out_dir='detector/', steps=1500)   # renders its own scenes
    det = SceneDetector.load(out['directory'])
    pred = det.predict(images)     # images uint8 or [-1, 1] float [N, H, W, 3], any size
    pred['object']                 # bool [N, 9]; pred['colour'|'shape'|'size'] int32 [N, 9]

Training scenes are drawn by `training_scene(seed, split, index)` (0–6 objects, every
colour–shape pair including `render.HELDOUT_PAIRS`, every background) and rendered with
`render.render` at a resolution from `TRAIN_RESOLUTIONS`; train and validation scenes come
from different seed sequences. Checkpoint: `unclip_jax.export` layout with config.stage =
'scene_detector'; extra.json holds the validation accuracy per head and per render size.
"""
from __future__ import annotations

import os
import time
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax

from unclip_jax import export
from unclip_jax.data import render
from unclip_jax.errors import UserError
from unclip_jax.eval.attributes import LoadedNet, border_background, image_codes, resize_images
from unclip_jax.eval.fit import adamw_trainer
from unclip_jax.models.layers import dense

STAGE = "scene_detector"
BUNDLED_DETECTOR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets",
                                "scene_detector")
NUM_CELLS = 9
# head → class names; 'object' is empty (0) / object (1), the others describe an object
HEADS: dict[str, tuple[str, ...]] = {
    "object": ("empty", "object"), "colour": tuple(render.COLOURS),
    "shape": tuple(render.SHAPES), "size": tuple(render.SIZES),
}
ATTRIBUTE_HEADS = ("colour", "shape", "size")
CELL_NAMES = tuple(render.POSITIONS)              # cell c ↔ its position name (row-major)
TRAIN_RESOLUTIONS = (32, 48, 64, 96, 128)
SPLIT_IDS = {"train": 0, "validation": 1}
_SCENE_STREAM = 7919                             # separates these scenes from the dataset's


class CellNet(nn.Module):
    """images [B, S, S, 3] in [-1, 1] (S divisible by 3) → {head: logits [B, 9, classes]}.

    Each cell crop [S/3, S/3] goes through `attributes.image_codes` (pixel path against the
    whole image's border median, conv path), then a hidden layer and the heads of `HEADS`.
    """
    channels: Sequence[int] = (16, 32, 64)
    hidden: int = 64
    pixel: int = 32
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        dt = jnp.dtype(self.dtype)
        x = x.astype(jnp.float32)
        b, s = x.shape[0], x.shape[1]
        c = s // 3
        background = jnp.repeat(border_background(x), NUM_CELLS, axis=0)
        cells = x[:, :3 * c, :3 * c].reshape(b, 3, c, 3, c, 3).transpose(0, 1, 3, 2, 4, 5)
        cells = cells.reshape(b * NUM_CELLS, c, c, 3)
        colour, pooled, _ = image_codes(cells, background, self.channels, self.pixel, dt)
        h = nn.silu(dense(self.hidden, ("embed", "mlp"), "hidden", dt)(pooled))
        inputs = {"colour": jnp.concatenate([colour, h], axis=-1)}
        return {k: dense(len(names), ("mlp", "vocab"), f"head_{k}", dt)(inputs.get(k, h))
                .astype(jnp.float32).reshape(b, NUM_CELLS, len(names))
                for k, names in HEADS.items()}


def model_config(image_size: int = 72, channels: Sequence[int] = (16, 32, 64),
                 hidden: int = 64, pixel: int = 32) -> mlc.ConfigDict:
    """The `model` section of a detector config (image_size: input pixels, divisible by 3)."""
    if int(image_size) % 3 or int(image_size) < 3 * 2 ** len(channels):
        raise UserError(f"detector image_size={image_size} must be divisible by 3 and at least "
                        f"{3 * 2 ** len(channels)} px")
    return mlc.ConfigDict(dict(image_size=int(image_size), channels=tuple(channels),
                               hidden=int(hidden), pixel=int(pixel), dtype="float32"))


def from_config(m) -> CellNet:
    return CellNet(channels=tuple(m.channels), hidden=int(m.hidden), pixel=int(m.pixel),
                   dtype=str(m.dtype))


def training_scene(seed: int, split: str, index: int) -> dict:
    """A detector scene, a pure function of (seed, split, index): 0–6 objects in distinct
    cells, any colour–shape pair, size, background; jitter and angle as in the dataset."""
    if split not in SPLIT_IDS:
        raise UserError(f"detector split {split!r}; choose one of {', '.join(SPLIT_IDS)}")
    rng = np.random.default_rng([_SCENE_STREAM, seed, SPLIT_IDS[split], index])
    n = int(rng.integers(0, 7))
    cells = rng.choice(NUM_CELLS, size=n, replace=False)
    objects = [dict(shape=render.SHAPES[int(rng.integers(len(render.SHAPES)))],
                    colour=HEADS["colour"][int(rng.integers(len(render.COLOURS)))],
                    size=HEADS["size"][int(rng.integers(len(render.SIZES)))],
                    position=CELL_NAMES[int(cell)],
                    jitter=rng.uniform(-0.02, 0.02, size=2),
                    angle=float(rng.uniform(-0.25, 0.25))) for cell in cells]
    background = tuple(render.BACKGROUNDS)[int(rng.integers(len(render.BACKGROUNDS)))]
    return dict(objects=objects, background=background)


def cell_targets(scene: dict) -> dict[str, np.ndarray]:
    """Labels of a scene's 9 cells: {'object': int32 [9] (1 = object), 'colour', 'shape',
    'size': int32 [9] class ids in `HEADS` order, −1 in empty cells}. Two objects in one cell
    are refused (the scenes never have them)."""
    out = {k: np.full(NUM_CELLS, -1, np.int32) for k in ATTRIBUTE_HEADS}
    out["object"] = np.zeros(NUM_CELLS, np.int32)
    for obj in scene["objects"]:
        c = CELL_NAMES.index(obj["position"])
        if out["object"][c]:
            raise ValueError(f"two objects in cell {obj['position']!r}")
        out["object"][c] = 1
        for k in ATTRIBUTE_HEADS:
            out[k][c] = HEADS[k].index(obj[k])
    return out


def render_batch(seed: int, split: str, indices, resolution: int) -> dict[str, np.ndarray]:
    """Scenes `indices` rendered at `resolution` px: {'image': uint8 [B, r, r, 3], head:
    int32 [B, 9]}."""
    scenes = [training_scene(seed, split, int(i)) for i in indices]
    targets = [cell_targets(s) for s in scenes]
    out = {k: np.stack([t[k] for t in targets]) for k in HEADS}
    out["image"] = np.stack([render.render(s, resolution) for s in scenes])
    return out


def loss_fn(params, model, images, labels):
    """Cross-entropy of 'object' over all cells plus, per attribute head, its mean over the
    cells that hold an object. images [B, S, S, 3], labels {head: int32 [B, 9]} (−1 empty)."""
    logits = model.apply(params, images)
    total = optax.softmax_cross_entropy_with_integer_labels(logits["object"],
                                                            labels["object"]).mean()
    mask = labels["object"].astype(jnp.float32)
    for k in ATTRIBUTE_HEADS:
        ce = optax.softmax_cross_entropy_with_integer_labels(logits[k],
                                                             jnp.maximum(labels[k], 0))
        total = total + (ce * mask).sum() / jnp.maximum(mask.sum(), 1.0)
    return total


def accuracy(pred: dict, labels: dict) -> dict[str, float]:
    """Detector accuracy: 'object' over all cells; colour/shape/size over the cells that truly
    hold an object; 'scene' the fraction of images with all 9 cells right (emptiness and, for
    objects, every attribute). pred from `SceneDetector.predict`, labels int [N, 9]."""
    has = np.asarray(labels["object"]) == 1
    obj_ok = np.asarray(pred["object"]).astype(np.int32) == np.asarray(labels["object"])
    out = {"object": float(obj_ok.mean())}
    cell_ok = obj_ok.copy()
    for k in ATTRIBUTE_HEADS:
        ok = np.asarray(pred[k]) == np.asarray(labels[k])
        out[k] = float(ok[has].mean()) if has.any() else float("nan")
        cell_ok &= ok | ~has
    out["scene"] = float(cell_ok.all(axis=1).mean())
    return out


class SceneDetector(LoadedNet):
    """A loaded detector (`SceneDetector.load(dir)`): `predict(images)` → per-cell detections."""
    STAGE = STAGE
    build = staticmethod(from_config)

    def predict(self, images, batch_size: int = 128) -> dict[str, np.ndarray]:
        """images [N, H, W, 3] (uint8, or float in [−1, 1]) → {'object_prob': float32 [N, 9],
        'object': bool [N, 9] (prob > 0.5), 'colour'|'shape'|'size': int32 [N, 9] class ids
        (read in every cell; meaningful where 'object')}."""
        logits = []
        for i in range(0, len(images), batch_size):
            lg = self._apply(self.params, resize_images(images[i:i + batch_size],
                                                        self.image_size))
            logits.append({k: np.asarray(v) for k, v in lg.items()})
        lg = {k: np.concatenate([x[k] for x in logits]) for k in HEADS}
        prob = np.asarray(jax.nn.softmax(lg["object"], axis=-1))[..., 1]
        out = {k: lg[k].argmax(-1).astype(np.int32) for k in ATTRIBUTE_HEADS}
        out.update(object_prob=prob.astype(np.float32), object=prob > 0.5)
        return out


def accuracy_on_renders(detector: SceneDetector, resolutions: Sequence[int], *,
                        num_scenes: int = 512, seed: int = 0) -> dict[str, dict[str, float]]:
    """{resolution: `accuracy`} on `num_scenes` validation scenes rendered at each resolution
    (the ceiling for reading generated images of that size)."""
    idx = np.arange(int(num_scenes))
    out = {}
    for r in resolutions:
        batch = render_batch(seed, "validation", idx, int(r))
        out[str(int(r))] = accuracy(detector.predict(batch["image"]), batch)
    return out


def train_scene_detector(*, out_dir: str | None = None, image_size: int = 72,
                         steps: int = 1500, batch_size: int = 32,
                         learning_rate: float = 2e-3, weight_decay: float = 1e-4,
                         channels: Sequence[int] = (16, 32, 64), hidden: int = 64,
                         resolutions: Sequence[int] = TRAIN_RESOLUTIONS,
                         eval_resolutions: Sequence[int] = (32, 64, 256),
                         num_validation: int = 512, seed: int = 0,
                         log_every: int = 0) -> dict:
    """Train on freshly rendered `training_scene(seed, 'train', i)` scenes (batch b holds
    scenes b·batch_size … at resolution `resolutions[b % len]`, resized to `image_size`);
    measure on `num_validation` validation scenes at each of `eval_resolutions`.

    Returns {'params', 'config', 'validation_accuracy': {resolution: {head: acc}},
    'seconds', 'directory' (when out_dir is given: saved with export.save)}.
    """
    if int(steps) < 1 or int(batch_size) < 1 or int(num_validation) < 1:
        raise UserError(f"steps={steps}, batch_size={batch_size} and num_validation="
                        f"{num_validation} must be positive")
    cfg = mlc.ConfigDict(dict(
        stage=STAGE, model=model_config(image_size, channels, hidden),
        data=dict(resolutions=tuple(int(r) for r in resolutions), seed=int(seed)),
        train=dict(steps=int(steps), batch_size=int(batch_size), lr=float(learning_rate),
                   weight_decay=float(weight_decay))))
    params, opt_state, step = adamw_trainer(
        from_config(cfg.model), loss_fn, image_size, steps=steps, learning_rate=learning_rate,
        weight_decay=weight_decay, seed=seed)
    start = time.time()
    bs = int(batch_size)
    for i in range(int(steps)):
        batch = render_batch(seed, "train", range(i * bs, (i + 1) * bs),
                             int(resolutions[i % len(resolutions)]))
        images = resize_images(batch["image"], image_size)
        params, opt_state, loss = step(params, opt_state, images,
                                       {k: batch[k] for k in HEADS})
        if log_every and (i + 1) % log_every == 0:
            print(f"scene detector step {i + 1}/{steps} loss {float(loss):.4f} "
                  f"({time.time() - start:.0f} s)", flush=True)
    det = SceneDetector(jax.device_get(params), cfg)
    acc = accuracy_on_renders(det, eval_resolutions, num_scenes=num_validation, seed=seed)
    out = {"params": det.params, "config": cfg, "validation_accuracy": acc,
           "seconds": time.time() - start}
    if out_dir is not None:
        extra = {"validation_accuracy": acc, "num_validation": int(num_validation),
                 "train_scenes": int(steps) * bs, "classes": {k: list(v) for k, v in HEADS.items()},
                 "cells": list(CELL_NAMES)}
        out["directory"] = export.save(out_dir, det.params, cfg, extra=extra)
    return out

"""Real examples of a prepared `unclip_shapes` split for evaluation: images, captions and the
attribute labels of single-object scenes.

    ex = load_examples(data_dir, 'validation', image_size=64, limit=500)
    ex['image']    uint8 [N, S, S, 3]  (resized from the stored 256 px with area averaging)
    ex['caption']  list of N str
    ex['colour'], ex['shape'], ex['size'], ex['position']   int32 [N] label ids (render order)
    ex['index']    int64 [N] example index within the split
"""
from __future__ import annotations

import os

import numpy as np

from unclip_jax.data import render, sources
from unclip_jax.errors import UserError

# attribute head → class names, in the dataset's ClassLabel order
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": tuple(render.COLOURS), "shape": tuple(render.SHAPES),
    "position": tuple(render.POSITIONS), "size": tuple(render.SIZES),
}
EVAL_SPLITS = ("validation", "test_heldout")


def resolve_dataset(data_dir: str, dataset: str | None = None) -> str:
    """'unclip_shapes/CONFIG' built in `data_dir`: `dataset` if given, else the only prepared
    config found there (UserError if none or several)."""
    if dataset:
        return dataset if "/" in dataset else f"unclip_shapes/{dataset}"
    if not os.path.isdir(data_dir):
        raise UserError(f"data_dir {data_dir} does not exist; build the dataset first: "
                        f"`unclip-jax data build shapes --data_dir {data_dir}`")
    root = os.path.join(data_dir, "unclip_shapes")
    found = sorted(c for c in (os.listdir(root) if os.path.isdir(root) else [])
                   if not c.startswith(".") and os.path.isdir(os.path.join(root, c)))
    if not found:
        raise UserError(f"no unclip_shapes dataset in {data_dir}; build one with "
                        f"`unclip-jax data build shapes --data_dir {data_dir} --config small`")
    if len(found) > 1:
        raise UserError(f"{data_dir} holds several unclip_shapes configs {found}; pick one with "
                        f"--dataset unclip_shapes/CONFIG")
    return f"unclip_shapes/{found[0]}"


def load_examples(data_dir: str, split: str, *, image_size: int, dataset: str | None = None,
                  single_object: bool = True, limit: int | None = None) -> dict:
    """The first `limit` examples (stored order) of `split`; with `single_object`, only scenes
    with one object. Attribute labels are those of the scene's first object (its only one with
    `single_object`). See the module docstring."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    name = resolve_dataset(data_dir, dataset)
    builder = sources.builder_for(name, data_dir)
    sources.num_examples(builder, split)          # raises a clear error for unknown splits
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            read_config=tfds.ReadConfig(try_autocache=False))
    if single_object:
        ds = ds.filter(lambda ex: ex["num_objects"] == 1)
    if limit is not None:
        ds = ds.take(int(limit))

    def prepare(ex):
        img = tf.image.resize(ex["image"], (image_size, image_size), method="area",
                              antialias=True)
        out = {"image": tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8),
               "caption": ex["caption"], "index": ex["index"]}
        for k in ATTRIBUTES:
            out[k] = tf.cast(ex["objects"][k][0], tf.int32)
        return out

    rows = {k: [] for k in ("image", "caption", "index", *ATTRIBUTES)}
    for batch in ds.map(prepare).batch(256).as_numpy_iterator():
        for k in rows:
            rows[k].append(batch[k])
    if not rows["image"]:
        raise UserError(f"split {split!r} of {name} has no "
                        f"{'single-object ' if single_object else ''}examples")
    out = {k: np.concatenate(v) for k, v in rows.items()}
    out["caption"] = [c.decode("utf-8") for c in out["caption"]]
    return out

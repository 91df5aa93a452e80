"""Resolve `config.data.name` / `data_dir` to a prepared TFDS builder, with clear errors."""
from __future__ import annotations

import tensorflow_datasets as tfds

from unclip_jax import paths
from unclip_jax.errors import UserError

DATASETS = ("unclip_shapes", "folder", "synthetic")


def builder_for(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """The prepared builder for `name` ('unclip_shapes[/CONFIG]' or 'folder') in `data_dir`
    (a local path or a gs:// URL, read by TFDS/tf.data directly; see `unclip_jax.paths`)."""
    base, _, config = name.partition("/")
    if base not in DATASETS:
        raise UserError(f"unknown dataset {name!r} in config.data.name; choose one of "
                        f"{list(DATASETS)} (unclip_shapes may name a config: 'unclip_shapes/small')")
    if base == "synthetic":
        raise UserError("the 'synthetic' dataset has no builder")
    if not data_dir:
        raise UserError(f"config.data.data_dir is empty; set it to the directory the {base} "
                        f"dataset was built into (`unclip-jax data build ... --data_dir DIR`)")
    data_dir = paths.resolve(data_dir, "config.data.data_dir")
    if not paths.isdir(data_dir):
        raise UserError(f"data_dir {data_dir} does not exist; build the dataset first: "
                        f"`unclip-jax data build {'shapes' if base == 'unclip_shapes' else 'folder SRC'}"
                        f" --data_dir {data_dir}`")
    if base == "unclip_shapes":
        from unclip_jax.data.shapes import UnclipShapes as cls
        kwargs = {"config": config or "default"}
        hint = f"`unclip-jax data build shapes --data_dir {data_dir} --config {config or 'default'}`"
    else:
        from unclip_jax.data.folder import ImageCaptionFolder as cls
        kwargs = {}
        hint = f"`unclip-jax data build folder SRC --data_dir {data_dir}`"
    builder = cls(data_dir=data_dir, **kwargs)
    if not builder.is_prepared():
        raise UserError(f"dataset {name!r} is not built in {data_dir}; run {hint}")
    return builder


def num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
    splits = builder.info.splits
    if split not in splits:
        raise UserError(f"split {split!r} does not exist in {builder.name}; choose one of "
                        f"{sorted(splits.keys())}")
    return int(splits[split].num_examples)


def read_records(builder: tfds.core.DatasetBuilder, split: str):
    """The split in stored order as a tf.data.Dataset of {image: encoded bytes, caption, index}."""
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()},
                            read_config=tfds.ReadConfig(try_autocache=False))
    return ds.map(lambda ex: {"image": ex["image"], "caption": ex["caption"], "index": ex["index"]})

"""`unclip_shapes`: a TFDS dataset of captioned geometric scenes, generated locally (no download).

Each example: a 256×256 PNG `image`, a `caption`, the structured `objects` (a Sequence of
shape / colour / size / position ClassLabels), the `background` ClassLabel, `num_objects` and
the example `index` within its split. Scenes are a pure function of (seed, split, index)
(`unclip_jax.data.render`), so any sharded or re-run generation is reproducible.

Splits: `train`, `validation`, and `test_heldout` — whose scenes each contain one of the
colour–shape pairs in `render.HELDOUT_PAIRS`, which never occur in train or validation.
Configs: `default` (100k / 5k / 5k), `medium` (20k / 1k / 1k, what the embedded shapes model
was trained on) and `small` (384 / 64 / 64, for tests and CI).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from unclip_jax.data import render

IMAGE_SIZE = 256


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
    """Split sizes and generation seed."""
    num_train: int = 100_000
    num_validation: int = 5_000
    num_test: int = 5_000
    seed: int = 0


class UnclipShapes(tfds.core.GeneratorBasedBuilder):
    """Captioned shapes for CPU-scale unCLIP."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        ShapesConfig(name="default", description="100k train, 5k validation, 5k held-out test"),
        ShapesConfig(name="small", description="384 / 64 / 64 examples for tests and CI",
                     num_train=384, num_validation=64, num_test=64),
        ShapesConfig(name="medium", description="20k / 1k / 1k: the shipped CPU model's data",
                     num_train=20_000, num_validation=1_000, num_test=1_000),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        label = tfds.features.ClassLabel
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
                                             encoding_format="png"),
                "caption": tfds.features.Text(),
                "objects": tfds.features.Sequence({
                    "shape": label(names=list(render.SHAPES)),
                    "colour": label(names=list(render.COLOURS)),
                    "size": label(names=list(render.SIZES)),
                    "position": label(names=list(render.POSITIONS)),
                }),
                "background": label(names=list(render.BACKGROUNDS)),
                "num_objects": tfds.features.Scalar(dtype=np.int32),
                "index": tfds.features.Scalar(dtype=np.int64),
            }),
            supervised_keys=None,
            homepage="https://github.com/unclip-jax/unclip-jax",
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        return {
            "train": self._generate_examples("train", cfg.num_train),
            "validation": self._generate_examples("validation", cfg.num_validation),
            "test_heldout": self._generate_examples("test_heldout", cfg.num_test),
        }

    def _generate_examples(self, split: str, num: int):
        seed = self.builder_config.seed
        for index in range(num):
            scene = render.sample_scene(seed, split, index)
            yield index, {
                "image": render.png_bytes(render.render(scene, IMAGE_SIZE)),
                "caption": scene["caption"],
                "objects": [{k: o[k] for k in ("shape", "colour", "size", "position")}
                            for o in scene["objects"]],
                "background": scene["background"],
                "num_objects": len(scene["objects"]),
                "index": index,
            }


def build(data_dir: str, config: str = "small") -> tfds.core.DatasetBuilder:
    """Generate (or reuse) `unclip_shapes/<config>` under `data_dir`; returns the builder."""
    names = [c.name for c in UnclipShapes.BUILDER_CONFIGS]
    if config not in names:
        raise ValueError(f"unknown unclip_shapes config {config!r}; choose one of {names}")
    builder = UnclipShapes(data_dir=data_dir, config=config)
    builder.download_and_prepare()      # renders locally: nothing is downloaded
    return builder

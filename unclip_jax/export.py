"""Inference checkpoints: one directory per stage, read by the pipeline and the converters.

Layout of `DIR`:
  config.json   the stage's full config (`ConfigDict.to_json_best_effort()`), with `stage`
  params/       Orbax PyTree checkpoint of the parameters (plain arrays, no optimizer state)
  extra.json    optional small metadata (e.g. normalisation statistics, source, commit)

Training checkpoints (train state, iterator state) live under a workdir and are handled by
`unclip_jax.train.checkpoint`; `export_params` turns one of those into this format.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
import orbax.checkpoint as ocp

from unclip_jax.errors import CheckpointError


def save(directory: str, params: Any, config: mlc.ConfigDict, extra: dict | None = None,
         dtype: str | None = None) -> str:
    """Write params (optionally cast, e.g. dtype='float16' for shipping) and config to `directory`."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    if dtype is not None:
        params = jax.tree.map(lambda a: np.asarray(a).astype(dtype), params)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(directory, "params"), params, force=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    if extra is not None:
        with open(os.path.join(directory, "extra.json"), "w") as f:
            json.dump(extra, f, indent=2)
    return directory


def load_config(directory: str) -> mlc.ConfigDict:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{directory} is not an unclip-jax checkpoint (no config.json); pass the directory "
            "written by `unclip-jax train`, `convert-clip` or `convert-karlo`")
    with open(path) as f:
        return mlc.ConfigDict(json.load(f))


def load(directory: str, expect_stage: str | tuple[str, ...] | None = None,
         dtype: str | None = "float32") -> tuple[Any, mlc.ConfigDict, dict]:
    """Read `(params, config, extra)`; params are host numpy arrays cast to `dtype`.

    Raises CheckpointError when the directory is missing, not a checkpoint, or of another stage.
    """
    if not os.path.isdir(directory):
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    config = load_config(directory)
    if expect_stage is not None:
        stages = (expect_stage,) if isinstance(expect_stage, str) else tuple(expect_stage)
        if config.get("stage") not in stages:
            raise CheckpointError(
                f"{directory} holds a {config.get('stage')!r} checkpoint but a "
                f"{' or '.join(stages)} checkpoint is needed here")
    params_dir = os.path.join(os.path.abspath(directory), "params")
    if not os.path.isdir(params_dir):
        raise CheckpointError(f"{directory} has no params/ (half-written checkpoint?)")
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(params_dir)
    if dtype is not None:
        params = jax.tree.map(lambda a: np.asarray(a).astype(dtype), params)
    extra = {}
    if os.path.isfile(os.path.join(directory, "extra.json")):
        with open(os.path.join(directory, "extra.json")) as f:
            extra = json.load(f)
    return params, config, extra

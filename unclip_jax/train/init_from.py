"""Start a new training run from an exported stage (`train.init_from`): fine-tuning, or a
longer schedule for a model whose training checkpoints are gone.

`train.init_from` names a stage directory in the inference format (what `unclip-jax package`
or `export` writes: `config.json`, `params/`, checksums) or `bundled` (this stage of the model
embedded in the package). Its weights become both the params and the EMA params of step 0;
the optimizer state starts fresh and the step counter at 0, so `train.steps`, warmup and the
learning-rate schedule are those of the new run. It is read only when the workdir has no
checkpoint: a resumed run continues from its own checkpoint.

A UNet export may start a DEEPER UNet: when the only model setting that differs is
`model.num_res_blocks` (larger now), the export's weights are placed in the deeper tree so that
it computes what the export did (`models/unet_deepen.py`) and training goes on from there.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable

import jax
import numpy as np

from unclip_jax.errors import CheckpointError
from unclip_jax.train.checkpoint import config_differences, path_name, tree_differences

BUNDLED = "bundled"
log = logging.getLogger(__name__)


def resolve(value: str, stage: str) -> str:
    """The stage directory `value` names (`bundled` → the bundled model's `stage/`)."""
    if value == BUNDLED:
        from unclip_jax.sample.loading import BUNDLED_MODEL
        return os.path.join(BUNDLED_MODEL, stage)
    return os.path.expanduser(value)


def load_initial(value: str, config, abstract_params: Any,
                 fresh: Callable[[], Any] | None = None) -> tuple[Any, dict, str]:
    """`(params, extras, directory)` for `config.train.init_from = value`.

    params: host float32 arrays in the tree of `abstract_params`; extras: the export's fitted
    statistics (e.g. the AR prior's PCA basis, which its weights were trained against), {} when
    it has none. fresh: a random init of this model (host arrays in the abstract tree), needed
    only to deepen a UNet export (its new blocks). Raises CheckpointError when the directory is
    not an export of this stage, when its model config differs from `config.model` (other than
    a deeper UNet), or when any array's path or shape differs.
    """
    from unclip_jax import export
    directory = resolve(value, config.stage)
    params, saved, extra = export.load(directory, expect_stage=config.stage, dtype="float32")
    where = f"train.init_from={value} ({directory})"
    as_json = lambda d: json.loads(json.dumps(d))      # tuples and lists compare equal
    saved_model = as_json(saved.to_dict().get("model", {}))
    diffs = config_differences({"model": saved_model},
                               {"model": as_json(config.model.to_dict())})
    by_name = {path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    if diffs and _only_deeper(saved_model, config.model) and fresh is not None:
        from unclip_jax.models import unet_deepen
        fresh_named = {path_name(p): np.asarray(x)
                       for p, x in jax.tree_util.tree_flatten_with_path(fresh())[0]}
        try:
            by_name = unet_deepen.deepen(by_name, fresh_named, int(saved_model["num_res_blocks"]),
                                         int(config.model.num_res_blocks))
        except ValueError as e:
            raise CheckpointError(f"{where} cannot be deepened into this model: {e}") from None
        log.info("%s: %d → %d residual blocks per level (new blocks start as identities)",
                 where, saved_model["num_res_blocks"], config.model.num_res_blocks)
        diffs = []
    if diffs:
        raise CheckpointError(f"{where} was trained with another model config: "
                              + "; ".join(diffs[:5]).replace("in the checkpoint", "in the export")
                              + " — start from an export of the same model, or change "
                              "config.model to match it")
    mismatch = tree_differences({n: tuple(np.shape(x)) for n, x in by_name.items()},
                                abstract_params)
    if mismatch:
        raise CheckpointError(f"{where} does not fit this model: "
                              + "; ".join(mismatch[:5]).replace("the checkpoint", "the export"))
    # same paths and shapes: rebuild in the abstract tree's structure (dict order, containers)
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract_params)
    leaves = [np.asarray(by_name[path_name(p)], dtype=a.dtype) for p, a in flat]
    return jax.tree_util.tree_unflatten(treedef, leaves), export.fitted_extras(extra), directory


def _only_deeper(saved_model: dict, model) -> bool:
    """True when a UNet export differs from `model` only by having fewer residual blocks."""
    now = json.loads(json.dumps(model.to_dict()))
    if now.get("kind", "unet") != "unet" or saved_model.get("kind", "unet") != "unet":
        return False
    rest = lambda d: {k: v for k, v in d.items() if k != "num_res_blocks"}  # noqa: E731
    return (rest(saved_model) == rest(now) and "num_res_blocks" in saved_model
            and int(saved_model["num_res_blocks"]) < int(now.get("num_res_blocks", 0)))

"""Start a new training run from an exported stage (`train.init_from`): fine-tuning, or a
longer schedule for a model whose training checkpoints are gone.

`train.init_from` names a stage directory in the inference format (what `unclip-jax package`
or `export` writes: `config.json`, `params/`, checksums) or `bundled` (this stage of the model
embedded in the package). Its weights become both the params and the EMA params of step 0;
the optimizer state starts fresh and the step counter at 0, so `train.steps`, warmup and the
learning-rate schedule are those of the new run. It is read only when the workdir has no
checkpoint: a resumed run continues from its own checkpoint.

A UNet export may start a GROWN UNet, one that computes what the export did at step 0 and
trains on from there:
  - a DEEPER one: `model.num_res_blocks` larger now; the export's weights are placed in the
    deeper tree and the new blocks start as identities (`models/unet_deepen.py`);
  - one with its own CAPTION ENCODER: `model.caption_vocab` > 0 now and 0 (or absent) in the
    export, with `caption_len` / `caption_layers` set; the encoder starts from the random init
    with its zero output projection (`models/caption_encoder.py`).
Both may be combined; any other model setting that differs is an error.
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
    growth = _growth(saved_model, config.model) if diffs else set()
    exported = set(by_name)
    if growth and fresh is not None:
        fresh_named = {path_name(p): np.asarray(x)
                       for p, x in jax.tree_util.tree_flatten_with_path(fresh())[0]}
        if "deeper" in growth:
            from unclip_jax.models import unet_deepen
            try:
                by_name = unet_deepen.deepen(by_name, fresh_named,
                                             int(saved_model["num_res_blocks"]),
                                             int(config.model.num_res_blocks))
            except ValueError as e:
                raise CheckpointError(f"{where} cannot be deepened into this model: {e}") from None
            log.info("%s: %d → %d residual blocks per level (new blocks start as identities)",
                     where, saved_model["num_res_blocks"], config.model.num_res_blocks)
        if "caption_encoder" in growth:
            new = {n: x for n, x in fresh_named.items() if _in_caption_encoder(n)}
            if not new or any(n in exported for n in new):
                raise CheckpointError(f"{where}: cannot add a caption encoder to this export "
                                      "(its tree already has one, or this model has none)")
            by_name = {**by_name, **new}
            log.info("%s: a new caption encoder (%d arrays, zero output projection)", where,
                     len(new))
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


_GROWN_KEYS = ("num_res_blocks", "caption_vocab", "caption_len", "caption_layers")


def _growth(saved_model: dict, model) -> set[str]:
    """How `model` grows the UNet export's model config `saved_model`: a subset of {'deeper',
    'caption_encoder'} (see the module docstring), or the empty set when it is not a growth
    (another difference, or fewer blocks, or a caption encoder changed or removed)."""
    now = json.loads(json.dumps(model.to_dict()))
    if now.get("kind", "unet") != "unet" or saved_model.get("kind", "unet") != "unet":
        return set()
    rest = lambda d: {k: v for k, v in d.items() if k not in _GROWN_KEYS}  # noqa: E731
    if rest(saved_model) != rest(now) or "num_res_blocks" not in saved_model:
        return set()
    out = set()
    old_blocks, new_blocks = int(saved_model["num_res_blocks"]), int(now.get("num_res_blocks", 0))
    if new_blocks < old_blocks:
        return set()
    if new_blocks > old_blocks:
        out.add("deeper")
    caption = {k: saved_model.get(k) for k in _GROWN_KEYS[1:]} != \
        {k: now.get(k) for k in _GROWN_KEYS[1:]}
    if caption:
        if int(saved_model.get("caption_vocab", 0) or 0) or not int(now.get("caption_vocab", 0)):
            return set()
        out.add("caption_encoder")
    return out


def _in_caption_encoder(name: str) -> bool:
    """Whether the parameter path name (`checkpoint.path_name`) is in the caption encoder."""
    return "caption_encoder" in name.split(".")

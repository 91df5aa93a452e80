"""Stage registry: each training stage is data, not a subclass.

A `Stage` says how to build the Flax module from `config.model`, what dummy inputs its init
needs, its loss `(params, batch, key, model, config, extras) -> (loss, metrics)`, and
optionally: a data source, extras fitted once before training (e.g. AR-prior PCA), and a
cheap sampler for PNG grids. `loop.train` looks the stage up by `config.stage`; adding a stage
means writing a loss and calling `register`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from unclip_jax.errors import UserError

LossFn = Callable[..., tuple[Any, dict]]


def default_data(config, split, *, process_index, process_count, seed):
    """`unclip_jax.data.pipeline.make_pipeline` (per-process slice of the global batch)."""
    from unclip_jax.data.pipeline import make_pipeline
    return make_pipeline(config, split, process_index=process_index,
                         process_count=process_count, seed=seed)


@dataclasses.dataclass(frozen=True)
class Stage:
    """What the generic trainer needs to know about one stage.

    build_model(config) -> nn.Module (compute dtype from `config.train.dtype`)
    init_inputs(config) -> kwargs for `model.init` (tiny dummy batch, shapes only matter)
    loss(params, batch, key, model, config, extras) -> (scalar loss, {name: scalar})
      `batch` is a dict of global arrays; `key` a typed per-step key; `extras` a dict.
    make_data(config, split, *, process_index, process_count, seed) -> iterator of numpy
      dicts with get_state()/set_state(dict)
    prepare(config, make_iter) -> extras dict (numpy arrays / JSON values), fitted once
      before training from `make_iter()` (a fresh training iterator); stored in checkpoints
    sample(params, key, model, config, batch, extras) -> images [N, H, W, C] in [-1, 1]
    """
    name: str
    build_model: Callable[[Any], nn.Module]
    init_inputs: Callable[[Any], dict]
    loss: LossFn
    make_data: Callable[..., Any] = default_data
    prepare: Optional[Callable[[Any, Callable[[], Any]], dict]] = None
    sample: Optional[Callable[..., Any]] = None


REGISTRY: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    """Add (or replace) a stage in the registry."""
    REGISTRY[stage.name] = stage
    return stage


def get_stage(name: str) -> Stage:
    _register_builtin()
    if name not in REGISTRY:
        raise UserError(f"unknown stage {name!r}; set config.stage to one of {sorted(REGISTRY)}")
    return REGISTRY[name]


def compute_dtype(config):
    """jnp dtype named by `config.train.dtype` (falls back to `config.model.dtype`)."""
    name = config.train.get("dtype", None) or config.model.get("dtype", "float32")
    try:
        return jnp.dtype(name)
    except TypeError:
        raise UserError(f"train.dtype={name!r}: use 'float32' or 'bfloat16'") from None


_BUILTIN_DONE = False


def _register_builtin() -> None:
    """Register the unCLIP stages (imports are lazy: only the chosen stage's modules load)."""
    global _BUILTIN_DONE
    if _BUILTIN_DONE:
        return
    _BUILTIN_DONE = True
    from unclip_jax.train import losses
    for stage in losses.builtin_stages():
        REGISTRY.setdefault(stage.name, stage)

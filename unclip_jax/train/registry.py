"""The training-stage registry: each stage is data, not a subclass.

A `TrainStage` says how to build the Flax module from `config.model`, what dummy inputs its init
needs, its loss `(params, batch, key, model, config, extras) -> (loss, metrics)`, and
optionally: a data source, extras fitted once before training (e.g. AR-prior PCA), and a
cheap sampler for PNG grids. `loop.train` looks the stage up by `config.stage`; adding a stage
means writing a loss and calling `register`. The built-in entries pair the models of
`unclip_jax.stages` with the losses (`train.losses`), dummy init inputs (`train.init_inputs`),
fitted extras (`train.extras`) and preview sampler (`train.previews`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn

from unclip_jax import stages
from unclip_jax.errors import UserError
from unclip_jax.train import extras, init_inputs, losses, previews

LossFn = Callable[..., tuple[Any, dict]]


def default_data(config, split, *, process_index, process_count, seed):
    """`unclip_jax.data.pipeline.make_pipeline` (per-process slice of the global batch)."""
    from unclip_jax.data.pipeline import make_pipeline
    return make_pipeline(config, split, process_index=process_index,
                         process_count=process_count, seed=seed)


@dataclasses.dataclass(frozen=True)
class TrainStage:
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


REGISTRY: dict[str, TrainStage] = {}


def register(stage: TrainStage) -> TrainStage:
    """Add (or replace) a stage in the registry."""
    REGISTRY[stage.name] = stage
    return stage


def get_stage(name: str) -> TrainStage:
    _register_builtin()
    if name not in REGISTRY:
        raise UserError(f"unknown stage {name!r}; set config.stage to one of {sorted(REGISTRY)}")
    return REGISTRY[name]


def model_section(config):
    """`config.model` with `dtype` set to the compute dtype `config.train.dtype`."""
    mc = config.model.copy_and_resolve_references()
    with mc.unlocked():
        mc.dtype = str(config.train.get("dtype", None) or mc.get("dtype", "float32"))
    return mc


def model_builder(name: str) -> Callable[[Any], nn.Module]:
    """config → the stage's module (`unclip_jax.stages.build_model`) in the compute dtype."""
    return lambda config: stages.build_model(name, model_section(config))


def builtin_stages() -> list[TrainStage]:
    """The unCLIP stages, in `unclip_jax.stages.STAGES` order."""
    unet = dict(init_inputs=init_inputs.unet_inputs, loss=losses.unet_loss,
                sample=previews.unet_sample)
    builtin = {
        "clip": dict(init_inputs=init_inputs.clip_inputs, loss=losses.clip_loss),
        "prior": dict(init_inputs=init_inputs.prior_inputs, loss=losses.prior_loss,
                      prepare=extras.fit_prior_stats),
        "ar_prior": dict(init_inputs=init_inputs.ar_prior_inputs, loss=losses.ar_prior_loss,
                         prepare=extras.fit_ar_codec),
        "decoder": unet, "upsampler1": unet, "upsampler2": unet,
    }
    return [TrainStage(name, model_builder(name), **builtin[name]) for name in stages.STAGES]


_BUILTIN_DONE = False


def _register_builtin() -> None:
    """Register the unCLIP stages (model and loss code loads when a stage first uses it)."""
    global _BUILTIN_DONE
    if _BUILTIN_DONE:
        return
    _BUILTIN_DONE = True
    for stage in builtin_stages():
        REGISTRY.setdefault(stage.name, stage)

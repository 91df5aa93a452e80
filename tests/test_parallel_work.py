"""Data parallelism splits the work: on a mesh of N devices each device's compiled program
does 1/N of the batch's FLOPs (XLA cost analysis), for the trainer's step and the benchmark's
per-example-keyed step alike, for a Transformer (prior) and a UNet (decoder)."""
import functools

import jax
import numpy as np
import pytest

from unclip_jax.configs import shapes
from unclip_jax import parallel
from unclip_jax.bench import measure
from unclip_jax.bench import modes as modes_lib
from unclip_jax.bench.workload import build_workload, synthetic_batch
from unclip_jax.train import loop
from unclip_jax.train.state import state_shardings

BATCH = 64
N = 8
# Per-device FLOPs within ±10% of (one device's FLOPs) / N. Under data=N the AdamW and EMA
# updates run on every device's full copy of the parameters (that is data parallelism); the
# batch is large enough here that this replicated part stays a few per cent of the step.
TOL = 0.10


def small(stage):
    cfg = shapes.get_config(stage)
    with cfg.unlocked():
        if stage == "prior":
            cfg.model.update(dict(width=32, layers=2, heads=2))
        else:
            cfg.model.update(dict(model_channels=16, channel_mult=(1, 2), norm_groups=4,
                                  attention_resolutions=(8,), num_head_channels=16))
    return cfg


# the UNet's SPMD compiles take minutes on 2 cores: the decoder runs with `pytest -m slow`
STAGES = [pytest.param("prior", marks=pytest.mark.slow), pytest.param("decoder", marks=pytest.mark.slow)]   # ~30 s each


def trainer_step_flops(config, devices, mesh_cfg) -> float:
    """FLOPs per device of the trainer's compiled step (`train.loop.make_step_fn`, jitted
    with the trainer's shardings) for a global batch of BATCH."""
    with config.unlocked():
        config.mesh.update(mesh_cfg)
    stage, mesh, rules, model, tx, lr_fn = loop.build(config, devices)
    abstract, shardings = state_shardings(loop._init_fn(stage, model, config, jax.random.key(0)),
                                          tx, mesh, rules)
    batch = {k: v for k, v in synthetic_batch(config, BATCH).items() if k != "key_data"}
    if config.stage == "prior":
        batch.pop("image", None)
    step = loop.make_step_fn(stage, model, tx, config, {}, lr_fn)
    rep = parallel.replicated(mesh)
    with parallel.activate(mesh, rules):
        gbatch = parallel.global_batch(batch, mesh)
        batch_sh = jax.tree.map(lambda a: a.sharding, gbatch)
        compiled = jax.jit(step, in_shardings=(shardings, batch_sh, rep),
                           out_shardings=(shardings, rep)).lower(
            abstract, gbatch, jax.random.key(1)).compile()
    return measure.device_flops(compiled)


def bench_step_flops(config, devices, kind) -> float:
    w = build_workload(config, BATCH)
    return measure.device_flops(modes_lib.setup(w, devices, kind).train)


@pytest.mark.parametrize("stage", STAGES)
def test_trainer_step_splits_the_batch(devices8, stage):
    one = trainer_step_flops(small(stage), devices8[:1], {"data": -1, "fsdp": 1, "tensor": 1})
    for mesh_cfg in ({"data": -1, "fsdp": 1, "tensor": 1}, {"data": 1, "fsdp": -1, "tensor": 1}):
        per = trainer_step_flops(small(stage), devices8, mesh_cfg)
        assert per == pytest.approx(one / N, rel=TOL), (mesh_cfg, per, one)


@pytest.mark.slow       # the trainer test above stays in the default suite
@pytest.mark.parametrize("stage", STAGES)
def test_benchmark_step_splits_the_batch(devices8, stage):
    """The benchmark's loss vmaps over examples (one key each); the vmap must keep the batch
    sharded (`parallel.vmap_examples`), not replicate it onto every device."""
    one = bench_step_flops(small(stage), devices8[:1], "dp")
    for kind in ("dp", "fsdp"):
        per = bench_step_flops(small(stage), devices8, kind)
        assert per == pytest.approx(one / N, rel=TOL), (kind, per, one)


@pytest.mark.slow   # ~16 s
def test_plain_vmap_of_constrained_code_replicates_the_batch(devices8):
    """Why `vmap_examples` exists: the same per-example loss under a plain `jax.vmap` makes
    every device do the whole batch's work."""
    w = build_workload(small("prior"), BATCH)
    plain = functools.partial(jax.vmap)
    real = parallel.vmap_examples
    try:
        parallel.vmap_examples = lambda fn, in_axes=0: plain(fn, in_axes=in_axes)
        per = measure.device_flops(modes_lib.setup(w, devices8, "dp").train)
    finally:
        parallel.vmap_examples = real
    one = bench_step_flops(small("prior"), devices8[:1], "dp")
    assert per > 0.5 * one

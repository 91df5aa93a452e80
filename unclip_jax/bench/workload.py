"""What the benchmark runs for one stage config (prior or decoder): model, optimizer,
synthetic batch, the per-example-keyed loss, the training step and the guided sampler.

Every mode (pmap, jit data-parallel, jit FSDP) runs these same pure functions, so a
difference in loss or updated parameters between modes can only come from partitioning.

Randomness is per example: the batch carries one key per example (`key_data` [B, 2] uint32)
and the stage's own training loss (`unclip_jax.train.losses`) is evaluated per example under
`jax.vmap`, so the timesteps, noise and dropout an example sees do not depend on how the
batch is split across devices. The batch loss is the mean of the per-example losses; under
pmap each device takes the mean of its shard and `lax.pmean` averages those (equal shards).

Sampling is deterministic DDIM (η = 0) from a given x_T with classifier-free guidance as one
batched model call (the project's `prior_model_fn` / `sample.stage_fns.decoder_sample`), so the three
modes' samples can be compared too.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from unclip_jax import parallel
from unclip_jax.errors import UserError

STAGES = ("prior", "decoder", "upsampler1", "upsampler2")
UPSAMPLERS = ("upsampler1", "upsampler2")


@dataclasses.dataclass(frozen=True)
class Workload:
    """One stage's benchmark pieces (all pure; no arrays on devices).

    boxed_init() → params tree with logical-partitioning boxes (for shardings)
    params: host (numpy) float32 params, identical for every mode
    batch: host numpy dict, leading axis = global batch; includes 'key_data' [B, 2] uint32
    sample_inputs: host numpy dict for `sample_fn` (conditioning and x_T)
    loss_fn(params, batch) → scalar mean loss of the (local) batch
    sample_fn(params, inputs, steps) → x0, `steps` a static int of DDIM steps
    """
    name: str
    config: Any
    model: nn.Module
    tx: optax.GradientTransformation
    boxed_init: Callable[[], Any]
    params: Any
    batch: dict
    sample_inputs: dict
    loss_fn: Callable
    sample_fn: Callable


def bench_config(config):
    """A copy of a stage config made fit for benchmarking: no LR warm-up (so the first update
    is not a zero step). Raises UserError for a stage the benchmark does not cover."""
    if config.stage not in STAGES:
        raise UserError(f"config.stage={config.stage!r}: `unclip-jax bench` covers {STAGES}; "
                        "pass --config shapes:prior or shapes:decoder")
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.train.warmup = 0
        if cfg.train.lr_schedule == "cosine" and int(cfg.train.steps) < 1:
            cfg.train.steps = 1
    return cfg


def synthetic_batch(config, batch_size: int, seed: int = 0) -> dict:
    """Random training batch for the stage (numpy; shapes from config.model / config.data).

    prior:      z_i, z_t [B, D]; text_states [B, L, W]; text_mask [B, L]
    decoder:    image [B, S, S, 3] in [-1, 1] plus the prior's conditioning keys
    upsamplers: image [B, c, c, 3] (the training crop c = data.crop_size or S) and low_res
                [B, c/r, c/r, 3] (r = S / data.low_res_size), both in [-1, 1]
    All carry key_data [B, 2] uint32 (one PRNG key per example).
    """
    m = config.model
    rng = np.random.default_rng(seed)
    keys = np.asarray(jax.random.key_data(jax.random.split(jax.random.key(seed), batch_size)))
    if config.stage in UPSAMPLERS:
        S, low = int(config.data.image_size), int(config.data.low_res_size)
        crop = int(config.data.get("crop_size", 0) or S)
        image = lambda n: rng.uniform(-1, 1, (batch_size, n, n, 3)).astype(np.float32)  # noqa: E731
        return {"image": image(crop), "low_res": image(crop * low // S), "key_data": keys}
    D, L, W = int(m.embed_dim), int(m.text_len), int(m.text_width)
    unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    lengths = rng.integers(1, L + 1, batch_size)
    batch = {"z_i": unit(rng.standard_normal((batch_size, D))),
             "z_t": unit(rng.standard_normal((batch_size, D))),
             "text_states": rng.standard_normal((batch_size, L, W)).astype(np.float32),
             "text_mask": np.arange(L)[None] < lengths[:, None]}
    if config.stage == "decoder":
        S = int(config.data.image_size)
        batch["image"] = rng.uniform(-1, 1, (batch_size, S, S, 3)).astype(np.float32)
        del batch["z_t"]
    batch["key_data"] = keys
    return batch


def per_example_loss(stage, model, config, extras=None) -> Callable:
    """`loss_fn(params, batch) → scalar`: mean over examples of the stage loss, each example
    evaluated alone with its own key (`batch['key_data']`) under `jax.vmap`."""
    extras = extras or {}

    def loss_fn(params, batch):
        keys = jax.random.wrap_key_data(batch["key_data"])
        data = {k: v for k, v in batch.items() if k != "key_data"}

        def one(example, key):
            example = jax.tree.map(lambda a: a[None], example)
            return stage.loss(params, example, key, model, config, extras)[0]

        return jnp.mean(parallel.vmap_examples(one)(data, keys))

    return loss_fn


def train_step(params, opt_state, batch, *, loss_fn: Callable, tx, axis_name: str | None = None):
    """Loss + gradient + optimizer update. With `axis_name` (pmap) the loss and gradients are
    averaged over that axis with `lax.pmean` before the update.
    → (params, opt_state, loss)."""
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    if axis_name is not None:
        loss, grads = jax.lax.pmean((loss, grads), axis_name)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def _sample_fn(config, model) -> Callable:
    from unclip_jax.sample import stage_fns
    from unclip_jax.diffusion import samplers, schedules
    from unclip_jax.models.prior import prior_model_fn
    d = config.diffusion
    scale = float(d.guidance_scale)

    def sample(params, inputs, steps: int):
        sched = schedules.from_config(d, str(steps))
        if config.stage in UPSAMPLERS:
            return stage_fns.upsample(params, model, d, inputs["low_res"], None, sched=sched,
                                      size=inputs["x_T"].shape[1], ddim=True, eta=0.0,
                                      x_T=inputs["x_T"])
        if config.stage == "prior":
            fn = prior_model_fn({"params": params}, model, inputs["z_t"], inputs["text_states"],
                                inputs["text_mask"], guidance_scale=scale,
                                clamp=config.model.get("clamp", None) or None)
            return samplers.ddim_sample(fn, sched, inputs["x_T"].shape, None, predict=d.predict,
                                        clip_denoised=False, x_T=inputs["x_T"])
        return stage_fns.decoder_sample(params, model, d, inputs["z_i"], inputs["text_states"],
                                        inputs["text_mask"], inputs["x_T"], None, sched=sched,
                                        guidance=scale, ddim=True, eta=0.0, use_text=True)

    return sample


def build_workload(config, batch_size: int, seed: int = 0) -> Workload:
    """Model, optimizer (`train.optim.make_optimizer`), params and batches for a stage config."""
    from unclip_jax.train.optim import make_optimizer
    from unclip_jax.train.registry import get_stage
    config = bench_config(config)
    stage = get_stage(config.stage)
    model = stage.build_model(config)
    tx, _ = make_optimizer(config.train)
    inputs = stage.init_inputs(config)
    pkey, dkey = jax.random.split(jax.random.key(seed))

    def boxed_init():
        return model.init({"params": pkey, "dropout": dkey}, **inputs)["params"]

    params = jax.tree.map(np.asarray, nn.meta.unbox(jax.jit(boxed_init)()))
    batch = synthetic_batch(config, batch_size, seed)
    sample_inputs = sampling_inputs(config, batch, seed + 1)
    return Workload(config.stage, config, model, tx, boxed_init, params, batch, sample_inputs,
                    per_example_loss(stage, model, config), _sample_fn(config, model))


def sampling_inputs(config, batch: dict, seed: int) -> dict:
    """Conditioning and x_T for the guided sampler. Upsamplers sample the WHOLE image
    (x_T [B, S, S, 3] from low_res [B, S/r, S/r, 3]), not the training crop."""
    rng = np.random.default_rng(seed)
    if config.stage in UPSAMPLERS:
        B, S = len(batch["key_data"]), int(config.data.image_size)
        low = int(config.data.low_res_size)
        return {"low_res": rng.uniform(-1, 1, (B, low, low, 3)).astype(np.float32),
                "x_T": rng.standard_normal((B, S, S, 3)).astype(np.float32)}
    cond = ("z_i",) if config.stage == "decoder" else ("z_t",)
    inputs = {k: batch[k] for k in cond + ("text_states", "text_mask")}
    x_shape = batch["image"].shape if "image" in batch else batch["z_i"].shape
    inputs["x_T"] = rng.standard_normal(x_shape).astype(np.float32)
    return inputs


def count_params(params) -> int:
    """Number of scalars in a params tree (arrays or `jax.ShapeDtypeStruct`s)."""
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))

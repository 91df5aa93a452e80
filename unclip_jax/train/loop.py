"""`train(config, workdir)`: the one training loop for every stage.

Mesh from `config.mesh` → abstract init → NamedShardings → jitted sharded init; a jitted train
step with donated state and explicit in/out shardings; global batches assembled from each
process's slice; per-step key `fold_in(key, step)`. The same code runs on one CPU, simulated
CPU devices, several processes (`jax.distributed`) and TPU pods.
"""
from __future__ import annotations

import logging
import math
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import optax

from unclip_jax import parallel, paths
from unclip_jax.errors import NonFiniteError, UserError
from unclip_jax.train import init_from
from unclip_jax.train import metrics as metrics_lib
from unclip_jax.train.checkpoint import Checkpointer
from unclip_jax.train.optim import make_optimizer
from unclip_jax.train.registry import TrainStage, get_stage
from unclip_jax.train.state import TrainState, create_state, state_shardings

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the step
def ema_update(ema: Any, params: Any, decay: float) -> Any:
    """ema ← decay·ema + (1 − decay)·params, leaf-wise."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def make_step_fn(stage: TrainStage, model, tx: optax.GradientTransformation, config, extras: dict,
                 lr_fn):
    """Pure `step(state, batch, key) -> (state, metrics)`.

    Gradients are averaged over `train.grad_accum` micro-batches (a `lax.scan`); EMA is updated
    in the step; when the loss or gradient norm is not finite the returned state is the input
    state unchanged (the host then stops the run), so a bad update is never kept.
    """
    accum = int(config.train.get("grad_accum", 1) or 1)
    decay = float(config.train.ema_decay)

    def loss_fn(params, batch, key):
        return stage.loss(params, batch, key, model, config, extras)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch: dict, base_key):
        key = jax.random.fold_in(base_key, state.step)
        if accum == 1:
            (loss, aux), grads = grad_fn(state.params, batch, key)
        else:
            def split(x):
                return x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
            micro = jax.tree.map(split, batch)

            def body(g_sum, inp):
                i, mb = inp
                (l, m), g = grad_fn(state.params, mb, jax.random.fold_in(key, i))
                return jax.tree.map(jnp.add, g_sum, g), (l, m)

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            g_sum, (losses, auxes) = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
            grads = jax.tree.map(lambda g: g / accum, g_sum)
            loss = losses.mean()
            aux = jax.tree.map(lambda m: jnp.nanmean(m, axis=0), auxes)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = TrainState(step=state.step + 1, params=params,
                         ema_params=ema_update(state.ema_params, params, decay),
                         opt_state=opt_state)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
        out = {"loss": loss, "grad_norm": grad_norm, "lr": lr_fn(state.step), **aux}
        return new, jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), out)

    return step


# ---------------------------------------------------------------------------- helpers
class _Preemption:
    """Sets a flag on SIGTERM (main thread only); the loop saves and exits cleanly."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _first_non_finite(pending: list[tuple[int, dict]]) -> tuple[int, str, float] | None:
    for step, m in pending:
        for name in ["loss", "grad_norm", *sorted(k for k in m if k not in ("loss", "grad_norm"))]:
            if name in ("loss", "grad_norm") and not math.isfinite(m[name]):
                return step, name, m[name]
    return None


def _mean_metrics(pending: list[tuple[int, dict]]) -> dict:
    keys = pending[-1][1].keys()
    out = {}
    for k in keys:
        vals = np.asarray([m[k] for _, m in pending if k in m], np.float64)
        vals = vals[np.isfinite(vals)]
        out[k] = float(vals.mean()) if vals.size else float("nan")
    return out


def _init_fn(stage: TrainStage, model, config, key):
    """Zero-argument boxed init (the 'params' collection of `model.init`)."""
    inputs = stage.init_inputs(config)
    pkey, dkey = jax.random.split(key)

    def init():
        return model.init({"params": pkey, "dropout": dkey}, **inputs)["params"]
    return init


def _fit_extras(stage: TrainStage, config, workdir: str) -> dict:
    if stage.prepare is None:
        return {}
    def make_iter():
        return stage.make_data(config, "train", process_index=jax.process_index(),
                               process_count=jax.process_count(), seed=int(config.seed) + 7919)
    extras = stage.prepare(config, make_iter)
    _save_extras(extras, workdir)
    return extras


def _save_extras(extras: dict, workdir: str) -> None:
    """workdir/extras.json: the fitted extras the run trains against (for inspection)."""
    if jax.process_index() == 0:
        from unclip_jax import atomic
        from unclip_jax.export import extras_to_json
        paths.makedirs(workdir)
        atomic.write_json(paths.join(workdir, "extras.json"), extras_to_json(extras),
                          indent=None)


def build(config, devices=None):
    """`(stage, mesh, rules, model, tx, lr_fn)` for a config (no arrays allocated)."""
    stage = get_stage(config.stage)
    mesh = parallel.make_mesh(config.mesh, devices)
    rules = parallel.rules_from_config(config)
    model = stage.build_model(config)
    tx, lr_fn = make_optimizer(config.train)
    return stage, mesh, rules, model, tx, lr_fn


# ------------------------------------------------------------------------------ train
def train(config, workdir: str, *, devices=None, max_steps: int | None = None,
          progress: bool = True) -> dict:
    """Train `config.stage` in `workdir` (resuming from its latest checkpoint if any).

    devices: devices for the mesh (default all). max_steps: stop after this many steps in this
    call (the run can be resumed later). Returns {'state', 'step', 'metrics', 'mesh',
    'extras', 'flops_per_step', 'preempted'}.
    Raises NonFiniteError naming the step when the loss/gradients become NaN/Inf; the last
    good checkpoint is kept and nothing after it is saved.
    """
    workdir = paths.resolve(workdir, "workdir")
    tc = config.train
    batch_size = int(tc.batch_size)
    pcount, pindex = jax.process_count(), jax.process_index()
    accum = int(tc.get("grad_accum", 1) or 1)
    if batch_size % pcount or batch_size % accum:
        raise UserError(f"train.batch_size={batch_size} must be divisible by the number of "
                        f"processes ({pcount}) and train.grad_accum ({accum})")
    stage, mesh, rules, model, tx, lr_fn = build(config, devices)
    n_batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if (batch_size // accum) % n_batch_shards:
        raise UserError(f"train.batch_size/grad_accum={batch_size // accum} must be divisible "
                        f"by mesh data×fsdp={n_batch_shards}; change train.batch_size or config.mesh")

    key = jax.random.key(int(config.seed))
    init_key, step_key, sample_key = jax.random.split(key, 3)
    boxed_init = _init_fn(stage, model, config, init_key)
    ckpt = Checkpointer(workdir, tc)
    data = stage.make_data(config, "train", process_index=pindex, process_count=pcount,
                           seed=int(config.seed))

    abstract, shardings = state_shardings(boxed_init, tx, mesh, rules)
    try:
        restored = ckpt.restore_latest(abstract, config)
    except BaseException:
        ckpt.close()      # let Orbax's background threads finish before the error surfaces
        raise
    if restored is not None:
        start, state, _, data_state, extras = restored
        data.set_state(data_state)
        log.info("resumed %s from step %d", workdir, start)
    else:
        start = 0
        initial, extras = None, {}
        if tc.get("init_from"):
            def fresh():       # a random init on the host (new blocks of a deepened UNet),
                # replicated so that every process can read all of it
                replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
                with parallel.activate(mesh, rules):
                    return jax.device_get(jax.jit(lambda: nn.meta.unbox(boxed_init()),
                                                  out_shardings=replicated)())
            initial, extras, source = init_from.load_initial(tc.init_from, config,
                                                             abstract.params, fresh)
            log.info("starting %s from the weights of %s", workdir, source)
        if extras:                      # the export's fitted extras: its weights match them
            _save_extras(extras, workdir)
        else:
            extras = _fit_extras(stage, config, workdir)
        state, _ = create_state(boxed_init, tx, mesh, rules, initial_params=initial)

    step_py = make_step_fn(stage, model, tx, config, extras, lr_fn)
    writer = metrics_lib.MetricWriter(workdir, resume_step=start)
    total = int(tc.steps)
    stop_at = total if max_steps is None else min(total, start + int(max_steps))
    log_every = max(int(tc.get("log_every", 10) or 10), 1)
    ckpt_every = max(int(tc.get("ckpt_every", 0) or 0), 0)
    sample_every = int(tc.get("sample_every", 0) or 0)

    compiled = None
    flops = None
    pending: list[tuple[int, Any]] = []
    last_saved = start if restored is not None else None
    last_metrics: dict = {}
    preempted = False
    pbar = None
    if progress and pindex == 0:
        from tqdm import tqdm
        pbar = tqdm(total=total, initial=start, desc=f"train {config.stage}", dynamic_ncols=True)
    t_last, steps_since = time.perf_counter(), 0

    def flush(step):
        nonlocal pending, last_metrics, t_last, steps_since
        if not pending:
            return
        host = [(s, {k: float(v) for k, v in jax.device_get(m).items()}) for s, m in pending]
        bad = _first_non_finite(host)
        if bad is not None:
            bstep, name, value = bad
            where = (f"the last good checkpoint is step {last_saved} in {ckpt.directory}"
                     if last_saved is not None else "no checkpoint had been written yet")
            raise NonFiniteError(f"non-finite {name} ({value}) at step {bstep}; training stopped "
                                 f"without saving that state — {where}")
        dt = time.perf_counter() - t_last
        row = _mean_metrics(host)
        row["steps_per_s"] = steps_since / dt if dt > 0 else float("nan")
        row["examples_per_s"] = row["steps_per_s"] * batch_size
        if flops:
            row["flops_per_s"] = row["steps_per_s"] * flops
        writer.write(step, row)
        last_metrics = row
        if pbar is not None:
            pbar.set_postfix(loss=f"{row['loss']:.4g}", refresh=False)
        pending, t_last, steps_since = [], time.perf_counter(), 0

    try:
        with _Preemption() as preempt, parallel.activate(mesh, rules):
            for step in range(start, stop_at):
                local = next(data)
                batch = parallel.global_batch(local, mesh)
                if compiled is None:
                    _compiling_notice(pbar, f"train {config.stage}")
                    batch_sh = jax.tree.map(lambda x: x.sharding, batch)
                    jitted = jax.jit(step_py, in_shardings=(shardings, batch_sh,
                                                            parallel.replicated(mesh)),
                                     out_shardings=(shardings, parallel.replicated(mesh)),
                                     donate_argnums=(0,))
                    compiled = jitted.lower(state, batch, step_key).compile()
                    flops = metrics_lib.compiled_flops(compiled, mesh.devices.size)
                    t_last = time.perf_counter()
                    if pbar is not None:
                        pbar.set_description_str(f"train {config.stage}")
                state, m = compiled(state, batch, step_key)
                done = step + 1
                pending.append((done, m))
                steps_since += 1
                if pbar is not None:
                    pbar.update(1)
                will_save = (ckpt_every and done % ckpt_every == 0) or done == total
                stop = preempt.requested or ckpt.manager.reached_preemption(done)
                if done % log_every == 0 or will_save or stop or done == stop_at:
                    flush(done)
                if sample_every and stage.sample is not None and done % sample_every == 0:
                    _write_samples(stage, state, model, config, batch, extras, done, workdir,
                                   writer, sample_key)
                if will_save or stop:
                    ckpt.save(done, state, config, data.get_state(), extras)
                    last_saved = done
                if stop:
                    preempted = True
                    log.warning("preemption requested: saved step %d and stopping", done)
                    break
        step_now = int(jax.device_get(state.step))
    finally:
        if pbar is not None:
            pbar.close()
        writer.close()
        ckpt.close()
    return {"state": state, "step": step_now, "metrics": last_metrics, "mesh": mesh,
            "extras": extras, "flops_per_step": flops, "preempted": preempted}


def _compiling_notice(pbar, desc: str) -> None:
    """Say that the first step is compiling (tens of seconds on a CPU, with no step to show):
    on the progress bar when there is one, else in the log."""
    if pbar is None:
        log.info("%s: compiling the training step…", desc)
        return
    pbar.set_description_str(f"{desc} (compiling the training step…)")
    pbar.refresh()


def _write_samples(stage, state, model, config, batch, extras, step, workdir, writer, key):
    from jax.experimental import multihost_utils
    images = stage.sample(state.ema_params, jax.random.fold_in(key, step), model, config,
                          batch, extras)
    images = np.asarray(multihost_utils.process_allgather(images, tiled=True))
    if jax.process_index() == 0:
        metrics_lib.save_png_grid(images, paths.join(workdir, "samples", f"step_{step:07d}.png"))
        writer.write_images(step, "samples", images)


# ----------------------------------------------------------------------------- export
def restore_for_inference(workdir: str, config=None, step: int | None = None):
    """`(ema_params, config, extras, step)` from a workdir's latest (or given) checkpoint,
    restored onto this process's devices."""
    import ml_collections as mlc
    from unclip_jax.errors import CheckpointError
    workdir = paths.resolve(workdir, "workdir")
    ckpt_dir = paths.join(workdir, "checkpoints")
    if config is None:
        if not paths.isdir(ckpt_dir):
            raise CheckpointError(f"{workdir} has no checkpoints/; train first or pass the "
                                  "workdir used by `unclip-jax train`")
        reader = Checkpointer(workdir, mlc.ConfigDict(), async_save=False)
        try:
            steps = reader.steps()
            if not steps:
                raise CheckpointError(f"{ckpt_dir} holds no checkpoint steps")
            config = mlc.ConfigDict(reader.saved_config(step or steps[-1]))
        finally:
            reader.close()
    stage, mesh, rules, model, tx, _ = build(config)
    boxed_init = _init_fn(stage, model, config, jax.random.key(0))
    abstract, _ = state_shardings(boxed_init, tx, mesh, rules)
    ckpt = Checkpointer(workdir, config.train, async_save=False)
    try:
        if step is None:
            found = ckpt.restore_latest(abstract, config)
            if found is None:
                raise CheckpointError(f"no usable checkpoint in {ckpt.directory}")
            step, state, _, _, extras = found
        else:
            state, _, _, extras = ckpt.restore(step, abstract)
    finally:
        ckpt.close()
    return state.ema_params, config, extras, step


def export_from_workdir(workdir: str, out_dir: str, step: int | None = None,
                        dtype: str | None = None, overwrite: bool = False) -> str:
    """Write the EMA params of a training run in the inference format (`unclip_jax.export`;
    an existing export in `out_dir` is replaced only with `overwrite`)."""
    from unclip_jax import export
    export.check_destination(out_dir, overwrite)
    params, config, extras, step = restore_for_inference(workdir, step=step)
    from unclip_jax.export import extras_to_json
    host = jax.tree.map(lambda a: np.asarray(jax.device_get(a)), params)
    extra = {"source": paths.resolve(workdir, "workdir"), "step": int(step),
             **extras_to_json(extras)}
    return export.save(out_dir, host, config, extra=extra, dtype=dtype, overwrite=overwrite)

"""The three ways the benchmark runs a workload on N devices.

  pmap   `jax.pmap` over a leading device axis; parameters and optimizer state replicated
         (one full copy per device), gradients averaged with `lax.pmean`. The legacy way; this
         is the only place in the project that uses pmap.
  dp     `jax.jit` on a mesh data=N: batch split over devices, parameters replicated.
  fsdp   `jax.jit` on a mesh fsdp=N: batch split, parameters and optimizer state sharded by the
         logical-axis rules (`unclip_jax.parallel`), gathered by XLA where they are used.

Each `setup_*` places the workload's host params/batches on the devices and returns a `Mode`
whose `train` and `sample(steps)` are compiled programs (so XLA's cost analysis is at hand).
`train` donates params and optimizer state: call it as
`mode.params, mode.opt_state, loss = mode.train(mode.params, mode.opt_state, mode.batch)`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from unclip_jax import parallel
from unclip_jax.bench.workload import Workload, train_step

MODES = ("pmap", "dp", "fsdp")
MESHES = {"dp": {"data": -1, "fsdp": 1, "tensor": 1}, "fsdp": {"data": 1, "fsdp": -1, "tensor": 1}}


@dataclasses.dataclass
class Mode:
    """A workload placed on devices in one mode; see the module docstring."""
    name: str
    num_devices: int
    train: Any                      # compiled (params, opt_state, batch) → (params, opt_state, loss)
    compile_sample: Callable[[int], Any]   # steps → compiled (params, inputs) → x0
    params: Any
    opt_state: Any
    batch: Any
    sample_inputs: Any
    unstack: Callable[[Any], Any]   # device result → host numpy with the global layout

    def loss_value(self, loss) -> float:
        """Scalar loss from the train output (pmap returns one per device, all equal)."""
        return float(np.asarray(loss).reshape(-1)[0])

    def state_bytes(self) -> int:
        """Largest number of bytes of params + optimizer state held by one device."""
        per = parallel.bytes_per_device((self.params, self.opt_state))
        return max(per.values())

    def host_params(self):
        return self.unstack(self.params)


def _check_batch(batch_size: int, n: int) -> None:
    if batch_size % n:
        raise ValueError(f"batch size {batch_size} is not divisible by the {n} devices; pass "
                         f"--batch-size as a multiple of {n}")


# ----------------------------------------------------------------------------- pmap
def setup_pmap(w: Workload, devices: Sequence[jax.Device]) -> Mode:
    devices = list(devices)
    n = len(devices)
    _check_batch(len(w.batch["key_data"]), n)

    stacked = NamedSharding(Mesh(np.asarray(devices), ("batch",)), P("batch"))

    def split(tree):        # [B, ...] → [n, B/n, ...], row d on device d
        return jax.tree.map(lambda a: jax.device_put(
            np.asarray(a).reshape(n, -1, *np.shape(a)[1:]), stacked), tree)

    def replicate(tree):    # one full copy per device: [n, ...]
        return jax.tree.map(lambda a: jax.device_put(
            np.broadcast_to(np.asarray(a)[None], (n, *np.shape(a))), stacked), tree)

    params = replicate(w.params)
    opt_state = jax.pmap(w.tx.init, devices=devices)(params)
    batch, inputs = split(w.batch), split(w.sample_inputs)
    step = jax.pmap(functools.partial(train_step, loss_fn=w.loss_fn, tx=w.tx, axis_name="batch"),
                    axis_name="batch", devices=devices, donate_argnums=(0, 1))
    compiled = step.lower(params, opt_state, batch).compile()

    def compile_sample(steps: int):
        fn = jax.pmap(lambda p, x: w.sample_fn(p, x, steps), devices=devices)
        return fn.lower(params, inputs).compile()

    def unstack(tree):
        """Replicated [n, ...] leaves → the first device's copy (host numpy)."""
        return jax.tree.map(lambda a: np.asarray(a.addressable_shards[0].data)[0], tree)

    return Mode("pmap", n, compiled, compile_sample, params, opt_state, batch, inputs, unstack)


def merge_device_axis(x) -> np.ndarray:
    """pmap output [n, b, ...] → [n·b, ...] (the global batch order)."""
    x = np.asarray(x)
    return x.reshape(-1, *x.shape[2:])


# ----------------------------------------------------------------------------- jit
def setup_jit(w: Workload, devices: Sequence[jax.Device], kind: str) -> Mode:
    """kind 'dp' (mesh data=N) or 'fsdp' (mesh fsdp=N); shardings from the logical rules."""
    from unclip_jax.train.state import state_shardings
    devices = list(devices)
    n = len(devices)
    _check_batch(len(w.batch["key_data"]), n)
    mesh = parallel.make_mesh(MESHES[kind], devices)
    rules = parallel.rules_from_config(w.config)
    _, sh = state_shardings(w.boxed_init, w.tx, mesh, rules)
    rep = parallel.replicated(mesh)
    with parallel.activate(mesh, rules):
        params = jax.device_put(w.params, sh.params)
        opt_state = jax.jit(w.tx.init, out_shardings=sh.opt_state)(params)
        batch = parallel.global_batch(w.batch, mesh)
        inputs = parallel.global_batch(w.sample_inputs, mesh)
        batch_sh = jax.tree.map(lambda a: a.sharding, batch)
        in_sh = jax.tree.map(lambda a: a.sharding, inputs)
        step = jax.jit(functools.partial(train_step, loss_fn=w.loss_fn, tx=w.tx),
                       in_shardings=(sh.params, sh.opt_state, batch_sh),
                       out_shardings=(sh.params, sh.opt_state, rep), donate_argnums=(0, 1))
        compiled = step.lower(params, opt_state, batch).compile()

    def compile_sample(steps: int):
        fn = jax.jit(lambda p, x: w.sample_fn(p, x, steps), in_shardings=(sh.params, in_sh),
                     out_shardings=parallel.batch_sharding(mesh, inputs["x_T"].ndim))
        with parallel.activate(mesh, rules):
            return fn.lower(params, inputs).compile()

    def unstack(tree):
        return jax.tree.map(lambda a: np.asarray(jax.device_get(a)), tree)

    return Mode(kind, n, compiled, compile_sample, params, opt_state, batch, inputs, unstack)


def setup(w: Workload, devices: Sequence[jax.Device], mode: str) -> Mode:
    """Place `w` on `devices` in `mode` ('pmap' | 'dp' | 'fsdp') and compile its train step."""
    if mode == "pmap":
        return setup_pmap(w, devices)
    if mode in MESHES:
        return setup_jit(w, devices, mode)
    raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")


def sample_output(mode: Mode, out) -> np.ndarray:
    """Sampler output in global batch order on the host."""
    return merge_device_axis(out) if mode.name == "pmap" else np.asarray(jax.device_get(out))

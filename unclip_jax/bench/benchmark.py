"""`benchmark_stage`: one stage config through every mode (and the PyTorch twin) → results dict.

Per mode (see `modes`): training step (loss + grad + AdamW) and sampling (one guided DDIM
step, and a short guided DDIM loop) — median wall seconds of `iters` calls after `warmup`,
examples/s, XLA FLOPs per device per call, achieved FLOP/s per device and its ratio to the
measured matmul peak, and bytes of params + optimizer state on the fullest device. Before
timing, the first training step of every mode is compared (loss and updated parameters) with
the first mode's, and the guided samples likewise; a mismatch raises `ModeMismatch`.

For the PyTorch comparison the same workload also runs with `jax.jit` on ONE device (the
whole batch on the CPU's thread pool, like PyTorch) beside diffusers' components.
"""
from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np

from unclip_jax.bench import measure
from unclip_jax.bench import modes as modes_lib
from unclip_jax.bench.workload import Workload, count_params

RTOL, ATOL = 1e-4, 1e-5        # loss / parameter / sample agreement between modes


class ModeMismatch(AssertionError):
    """Two modes computed different results for the same batch and parameters."""


def max_abs_diff(a, b) -> float:
    """Largest |a − b| over two pytrees of arrays with the same structure."""
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def check_close(name: str, a, b, what: str, atol: float = ATOL) -> float:
    """max |a − b|; raises ModeMismatch unless every leaf is allclose(RTOL, atol)."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if not np.allclose(np.asarray(x), np.asarray(y), rtol=RTOL, atol=atol):
            raise ModeMismatch(f"{what} of mode {name} differs from the reference mode "
                               f"(max |diff| {max_abs_diff(a, b):.3g})")
    return max_abs_diff(a, b)


def first_step(mode: modes_lib.Mode) -> tuple[float, object]:
    """Run one training step in place → (loss, updated params on the host)."""
    mode.params, mode.opt_state, loss = mode.train(mode.params, mode.opt_state, mode.batch)
    return mode.loss_value(loss), mode.host_params()


def _rates(flops, seconds, peak, examples) -> dict:
    out = {"seconds": seconds, "examples_per_s": examples / seconds, "flops_per_device": flops}
    if flops:
        rate = measure.flops_per_second_per_device(flops, seconds)
        out["flops_per_s_per_device"] = rate
        out["fraction_of_peak"] = rate / peak if peak else None
    return out


def time_mode(mode: modes_lib.Mode, batch_size: int, peak: float | None, *, warmup: int,
              iters: int, loop_steps: int) -> dict:
    """Timings of one placed mode (its train step keeps updating its own state)."""
    def step():
        mode.params, mode.opt_state, loss = mode.train(mode.params, mode.opt_state, mode.batch)
        jax.block_until_ready(loss)

    train_s = measure.median(measure.time_calls(step, warmup=warmup, iters=iters))
    out = {"train": _rates(measure.device_flops(mode.train), train_s, peak, batch_size),
           "state_bytes_per_device": mode.state_bytes()}
    for key, steps in (("sample_step", 1), ("sample_loop", loop_steps)):
        compiled = mode.compile_sample(steps)
        secs = measure.median(measure.time_calls(
            lambda: jax.block_until_ready(compiled(mode.params, mode.sample_inputs)),
            warmup=warmup, iters=iters))
        out[key] = {**_rates(measure.device_flops(compiled), secs, peak, batch_size),
                    "steps": steps}
    return out


def compare_modes(w: Workload, devices: Sequence[jax.Device], names: Sequence[str],
                  loop_steps: int) -> tuple[dict, dict]:
    """Place every mode, check first-step loss/params and samples agree → (modes, check)."""
    placed, ref, check = {}, None, {}
    for name in names:
        mode = modes_lib.setup(w, devices, name)
        sample = modes_lib.sample_output(mode, mode.compile_sample(loop_steps)(
            mode.params, mode.sample_inputs))
        loss, params = first_step(mode)
        placed[name] = mode
        if ref is None:
            ref = (name, loss, params, sample)
            check[name] = {"loss": loss}
            continue
        check[name] = {"loss": loss,
                       "loss_diff": check_close(name, loss, ref[1], "the first-step loss"),
                       "param_diff": check_close(name, params, ref[2], "the updated parameters"),
                       # a guided multi-step sample amplifies summation-order rounding:
                       # absolute tolerance relative to the sample's scale
                       "sample_diff": check_close(name, sample, ref[3], "the guided sample",
                                                  atol=RTOL * max(1.0, float(np.max(np.abs(
                                                      ref[3])))))}
    return placed, {"reference": ref[0], **check}


def benchmark_stage(w: Workload, devices: Sequence[jax.Device], *, mode_names=modes_lib.MODES,
                    peak: float | None = None, warmup: int = 1, iters: int = 5,
                    loop_steps: int = 10, torch: bool = True, single_peak: float | None = None
                    ) -> dict:
    """All measurements for one workload. See the module docstring for the fields."""
    batch_size = len(w.batch["key_data"])
    placed, check = compare_modes(w, devices, mode_names, loop_steps)
    result = {"stage": w.name, "batch_size": batch_size, "num_devices": len(devices),
              "params": count_params(w.params), "check": check, "modes": {}}
    for name, mode in placed.items():
        result["modes"][name] = time_mode(mode, batch_size, peak, warmup=warmup, iters=iters,
                                          loop_steps=loop_steps)
    del placed
    if torch:
        result["torch"] = torch_comparison(w, devices[0], single_peak, warmup=warmup,
                                           iters=iters, loop_steps=loop_steps)
    return result


def torch_comparison(w: Workload, device: jax.Device, peak: float | None, *, warmup: int,
                     iters: int, loop_steps: int) -> dict:
    """JAX (jit, one device) vs diffusers (PyTorch CPU) on the same batch and config."""
    import torch

    from unclip_jax.bench.torch_ref import TorchWorkload
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    batch_size = len(w.batch["key_data"])
    jax_mode = modes_lib.setup(w, [device], "dp")
    ours = time_mode(jax_mode, batch_size, peak, warmup=warmup, iters=iters,
                     loop_steps=loop_steps)
    del jax_mode
    tw = TorchWorkload(w.config, w.batch)
    theirs = {"train": {"seconds": measure.median(measure.time_calls(
        tw.train_step, warmup=warmup, iters=iters))}}
    for key, steps in (("sample_step", 1), ("sample_loop", loop_steps)):
        theirs[key] = {"seconds": measure.median(measure.time_calls(
            lambda: tw.sample(steps), warmup=warmup, iters=iters)), "steps": steps}
    ratios = {k: ours[k]["seconds"] / theirs[k]["seconds"] for k in theirs}
    return {"torch_threads": threads, "torch_version": torch.__version__,
            "params_ours": count_params(w.params), "params_torch": tw.num_params(),
            "jax_1device": ours, "torch": theirs, "time_ratio_jax_over_torch": ratios}

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
from unclip_jax.errors import UserError

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
                     iters: int, loop_steps: int, thread_counts: Sequence[int] | None = None
                     ) -> dict:
    """JAX (jit, one device: XLA's thread pool over all cores) vs diffusers (PyTorch CPU) on
    the same batch and config, PyTorch once with as many threads as the machine has cores and
    once with one.

    Fair by construction: after `warmup` calls of each, the runners take turns (JAX, PyTorch
    with N threads, PyTorch with 1 thread, JAX, ...) for `iters` rounds, so a change of load
    during the run hits all of them alike. Reported per runner and program: median, min and
    max seconds; ratios are JAX median / PyTorch median; the 1-minute load average before and
    after the run says whether the machine was idle.
    """
    try:
        import diffusers  # noqa: F401  (the twins are diffusers models)
        import torch
    except ImportError as e:
        raise UserError(f"the PyTorch comparison needs torch and diffusers ({e.name} is not "
                        "installed): pip install -e \".[parity]\", or pass --no-torch") from None

    from unclip_jax.bench.torch_ref import TorchWorkload
    cores = os.cpu_count() or 1
    thread_counts = list(dict.fromkeys(thread_counts or (cores, 1)))
    load_before = os.getloadavg()[0]
    batch_size = len(w.batch["key_data"])
    jax_mode = modes_lib.setup(w, [device], "dp")
    tw = TorchWorkload(w.config, w.batch, w.sample_inputs)

    def jax_train():
        jax_mode.params, jax_mode.opt_state, loss = jax_mode.train(
            jax_mode.params, jax_mode.opt_state, jax_mode.batch)
        jax.block_until_ready(loss)

    compiled = {steps: jax_mode.compile_sample(steps) for steps in (1, loop_steps)}
    jax_programs = {"train": jax_train}
    torch_programs = {"train": tw.train_step}
    for key, steps in (("sample_step", 1), ("sample_loop", loop_steps)):
        jax_programs[key] = (lambda c: lambda: jax.block_until_ready(
            c(jax_mode.params, jax_mode.sample_inputs)))(compiled[steps])
        torch_programs[key] = (lambda n: lambda: tw.sample(n))(steps)

    runners = {"jax": (None, jax_programs)}
    runners.update({f"torch_{n}t": (n, torch_programs) for n in thread_counts})
    times = {r: {k: [] for k in jax_programs} for r in runners}
    for part in jax_programs:
        for name, (threads, programs) in runners.items():
            if threads is not None:
                torch.set_num_threads(threads)
            for _ in range(warmup):
                programs[part]()
        for _ in range(iters):
            for name, (threads, programs) in runners.items():
                if threads is not None:
                    torch.set_num_threads(threads)
                times[name][part] += measure.time_calls(programs[part], warmup=0, iters=1)
    torch.set_num_threads(cores)

    def stats(ts):
        return {"seconds": measure.median(ts), "min": min(ts), "max": max(ts), "runs": len(ts)}

    steps_of = {"train": None, "sample_step": 1, "sample_loop": loop_steps}
    ours = {}
    for part, ts in times["jax"].items():
        fn = jax_mode.train if part == "train" else compiled[steps_of[part]]
        ours[part] = {**_rates(measure.device_flops(fn), measure.median(ts), peak, batch_size),
                      **stats(ts), "steps": steps_of[part]}
    theirs = {name: {part: {**stats(ts), "steps": steps_of[part]} for part, ts in parts.items()}
              for name, parts in times.items() if name != "jax"}
    ratios = {name: {part: ours[part]["seconds"] / t[part]["seconds"] for part in t}
              for name, t in theirs.items()}
    return {"torch_threads": thread_counts, "cores": cores, "torch_version": torch.__version__,
            "params_ours": count_params(w.params), "params_torch": tw.num_params(),
            "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
            "jax_1device": ours, "torch": theirs, "time_ratio_jax_over_torch": ratios}

"""Timing and FLOP accounting for the benchmark (pure helpers; units in the names).

FLOPs come from XLA's cost analysis of a compiled program. For `jax.jit` with shardings and
for `jax.pmap` the analysed program is the per-device (SPMD) program, so its count is the
work of ONE device per call.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from unclip_jax.train.metrics import compiled_flops


def device_flops(compiled) -> float | None:
    """FLOPs of one call of `compiled` on one device (XLA cost analysis), or None."""
    return compiled_flops(compiled, 1)


def flops_per_second_per_device(flops_per_device: float, seconds: float) -> float:
    """Achieved FLOP/s of one device: its program's FLOPs / wall time of one call."""
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    return float(flops_per_device) / float(seconds)


def matmul_flops(m: int, n: int, k: int) -> int:
    """FLOPs of an [m, k] × [k, n] matrix product: one multiply and one add per term."""
    return 2 * m * n * k


def time_calls(fn: Callable[[], object], *, warmup: int = 1, iters: int = 5) -> list[float]:
    """Wall seconds of `iters` calls of `fn()` after `warmup` untimed ones. `fn` must block
    until its work is done (e.g. end in `jax.block_until_ready`)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median(times: Sequence[float]) -> float:
    return float(statistics.median(times))


def matmul_peak(devices: Sequence[jax.Device], size: int = 2048, iters: int = 3) -> dict:
    """Measured f32 matmul FLOP/s per device: every device multiplies its own [size, size]
    matrices at the same time (one jitted program, batch axis sharded over `devices`), so on
    simulated CPU devices sharing the cores the figure is the per-device share of the machine.
    → {'size', 'seconds', 'flops_per_device', 'peak_flops_per_s_per_device', 'xla_flops'}.
    """
    devices = list(devices)
    n = len(devices)
    sharding = NamedSharding(Mesh(np.asarray(devices), ("d",)), P("d"))
    rng = np.random.default_rng(0)
    a = jax.device_put(rng.standard_normal((n, size, size), np.float32), sharding)
    b = jax.device_put(rng.standard_normal((n, size, size), np.float32), sharding)
    f = jax.jit(lambda x, y: jnp.einsum("nij,njk->nik", x, y,
                                        precision=jax.lax.Precision.HIGHEST),
                out_shardings=sharding)
    compiled = f.lower(a, b).compile()
    secs = median(time_calls(lambda: jax.block_until_ready(compiled(a, b)), iters=iters))
    flops = matmul_flops(size, size, size)
    return {"size": size, "seconds": secs, "flops_per_device": flops,
            "xla_flops": device_flops(compiled),
            "peak_flops_per_s_per_device": flops_per_second_per_device(flops, secs)}

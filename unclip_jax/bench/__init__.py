"""Training-step and sampling benchmarks of the prior and the decoder in three parallel modes
(pmap / jit data-parallel / jit FSDP), beside diffusers' PyTorch unCLIP components on the
same CPU (command: `unclip-jax bench`, `unclip_jax.cli.bench`).

On CPU, `--devices N`
simulates N devices (XLA_FLAGS=--xla_force_host_platform_device_count=N, set here before
JAX starts its backend); the simulated devices share the machine's cores, so on CPU the modes
differ in overheads and partitioning, not in speed-up. On GPUs/TPUs all local devices are used.

Modules: workload (what runs), modes (how it is placed), measure (timing, FLOPs, matmul
peak), torch_ref (the diffusers twin), benchmark (one stage end to end), report (table).
"""
from __future__ import annotations

import os

from unclip_jax.errors import UserError


def set_device_count(n: int, dump_dir: str | None = None) -> None:
    """Ask XLA for `n` host (CPU) devices, and optionally an HLO dump, before JAX starts its
    backend. Raises UserError if the backend already started with another device count
    (a CPU backend started after the flag is set has exactly `n` devices)."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith(("--xla_force_host_platform_device_count", "--xla_dump_to"))]
    flags.append(f"--xla_force_host_platform_device_count={n}")
    if dump_dir:
        flags.append(f"--xla_dump_to={dump_dir}")
    os.environ["XLA_FLAGS"] = " ".join(flags)
    import jax
    if jax.default_backend() == "cpu" and jax.device_count() != n:
        raise UserError(f"JAX already started with {jax.device_count()} CPU devices; run "
                        f"`unclip-jax bench --devices {n}` in a fresh process")

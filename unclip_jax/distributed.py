"""Multi-host start-up from environment variables.

The launch scripts (`launch/local.sh`, `launch/gpu_slurm.sh`, `launch/tpu_pod.sh`) describe the
job to each process through the environment; `initialize_from_env()` turns that into one call of
`jax.distributed.initialize`. It must run before anything touches a JAX backend
(`jax.devices()`, the first jitted call, ...).

Environment
-----------
UNCLIP_COORDINATOR      host:port of process 0's coordination service, e.g. 127.0.0.1:23456
UNCLIP_NUM_PROCESSES    number of processes in the job (positive integer)
UNCLIP_PROCESS_ID       this process's index, 0 ≤ id < UNCLIP_NUM_PROCESSES
UNCLIP_CPU_COLLECTIVES  CPU collectives backend (`gloo` or `mpi`); set before initialising
UNCLIP_AUTO_DISTRIBUTED `1`: call `jax.distributed.initialize()` with no arguments and let JAX
                        detect the cluster (Cloud TPU VM pod slices; also SLURM and Open MPI)

The first three go together: all set (explicit job) or none. With none of them and no
UNCLIP_AUTO_DISTRIBUTED=1 the process runs alone and nothing is initialised. When both are set
the explicit variables win.

Under SLURM (SLURM_LOCALID set) the process also tells JAX which GPUs it drives
(`slurm_local_device_ids`): all GPUs it sees with one task per node or with GPUs bound per
task, its own one when every task sees all of them. JAX's own SLURM detection would pick GPU
SLURM_LOCALID in every case. A JAX_LOCAL_DEVICE_IDS set by the user is left to JAX.

`python -m unclip_jax.distributed` initialises from the environment and checks that every
process takes part in a collective (see `check_collectives`); it prints one JSON line.
"""
from __future__ import annotations

import json
import os
import re
import sys
from typing import Mapping

import jax
import numpy as np

from unclip_jax.errors import UserError

COORDINATOR = "UNCLIP_COORDINATOR"
NUM_PROCESSES = "UNCLIP_NUM_PROCESSES"
PROCESS_ID = "UNCLIP_PROCESS_ID"
CPU_COLLECTIVES = "UNCLIP_CPU_COLLECTIVES"
AUTO = "UNCLIP_AUTO_DISTRIBUTED"

_EXPLICIT = (COORDINATOR, NUM_PROCESSES, PROCESS_ID)
_CPU_COLLECTIVES_CHOICES = ("gloo", "mpi")
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[^\s:]+):([0-9]{1,5})$")


def _int_var(env: Mapping[str, str], name: str, minimum: int) -> int:
    raw = env[name].strip()
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise UserError(f"{name}={raw!r} is not an integer ≥ {minimum}; set it to "
                        f"{'a positive integer' if minimum > 0 else 'this process index (0, 1, ...)'}")
    return value


def parse_env(env: Mapping[str, str]) -> dict | None:
    """Validate the UNCLIP_* variables in `env`.

    Returns None for a single-process run, `{"auto": True, ...}` for cluster auto-detection, or
    `{"coordinator": str, "num_processes": int, "process_id": int, "cpu_collectives": str|None}`.
    Raises UserError naming the variable to fix.
    """
    collectives = env.get(CPU_COLLECTIVES, "").strip() or None
    if collectives is not None and collectives not in _CPU_COLLECTIVES_CHOICES:
        raise UserError(f"{CPU_COLLECTIVES}={collectives!r} is not supported; use one of "
                        f"{', '.join(_CPU_COLLECTIVES_CHOICES)} or unset it")
    present = [name for name in _EXPLICIT if env.get(name, "").strip()]
    if present:
        missing = [name for name in _EXPLICIT if name not in present]
        if missing:
            raise UserError(f"{', '.join(present)} set but {', '.join(missing)} missing; "
                            f"set all of {', '.join(_EXPLICIT)} or none")
        coordinator = env[COORDINATOR].strip()
        match = _HOST_PORT.match(coordinator)
        if not match or not 0 < int(match.group(2)) < 65536:
            raise UserError(f"{COORDINATOR}={coordinator!r} is not host:port; "
                            f"write it like 127.0.0.1:23456")
        num = _int_var(env, NUM_PROCESSES, 1)
        pid = _int_var(env, PROCESS_ID, 0)
        if pid >= num:
            raise UserError(f"{PROCESS_ID}={pid} is out of range for {NUM_PROCESSES}={num}; "
                            f"use 0..{num - 1}")
        return {"coordinator": coordinator, "num_processes": num, "process_id": pid,
                "cpu_collectives": collectives}
    auto = env.get(AUTO, "").strip()
    if auto not in ("", "0", "1"):
        raise UserError(f"{AUTO}={auto!r}: use 1 (detect the cluster) or 0/unset")
    if auto == "1":
        return {"auto": True, "cpu_collectives": collectives}
    return None


def _tasks_on_node(env: Mapping[str, str]) -> int | None:
    """Tasks of this SLURM step on this node, from SLURM's compressed per-node list
    (`SLURM_STEP_TASKS_PER_NODE` / `SLURM_TASKS_PER_NODE`, e.g. '8(x2),4') and SLURM_NODEID."""
    for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        text = env.get(name, "").strip()
        if not text:
            continue
        counts: list[int] = []
        for part in text.split(","):
            m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
            if not m:
                return None
            counts += [int(m.group(1))] * int(m.group(2) or 1)
        node = int(env.get("SLURM_NODEID", "0") or 0)
        return counts[node] if node < len(counts) else None
    per_node = env.get("SLURM_NTASKS_PER_NODE", "").strip()
    return int(per_node) if per_node.isdigit() else None


def slurm_local_device_ids(env: Mapping[str, str]) -> list[int] | None:
    """The GPUs (indices among those this process sees) a process of a SLURM step drives.

    JAX's own SLURM detection picks `[SLURM_LOCALID]`, which is right only when every task
    of a node sees all of the node's GPUs and drives one: with one process per node it uses
    1 GPU of 8, and when SLURM binds each task to its own GPU (`srun --gpus-per-task=1`,
    CUDA_VISIBLE_DEVICES='3' for local task 3) it asks for device 3 of a 1-GPU view. Here:
      * the process sees as many GPUs as its node runs tasks (>1): a shared view, one GPU
        each: [SLURM_LOCALID];
      * otherwise (one task per node, or GPUs bound per task): every GPU it sees.
    The GPUs seen are CUDA_VISIBLE_DEVICES (set by SLURM's GPU allocation), else
    SLURM_GPUS_ON_NODE. None outside a SLURM step or when neither says how many GPUs there
    are (JAX then decides).
    """
    if not env.get("SLURM_LOCALID", "").strip().isdigit() or env.get("JAX_LOCAL_DEVICE_IDS"):
        return None             # not SLURM, or the user chose (JAX reads that variable)
    visible = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible:
        count = len([d for d in visible.split(",") if d.strip()])
    elif env.get("SLURM_GPUS_ON_NODE", "").strip().isdigit():
        count = int(env["SLURM_GPUS_ON_NODE"])
    else:
        return None
    if count == 0:
        return None
    tasks = _tasks_on_node(env)
    if tasks is not None and tasks > 1 and count == tasks:
        return [int(env["SLURM_LOCALID"])]
    return list(range(count))


def initialize_kwargs(env: Mapping[str, str]) -> dict | None:
    """The keyword arguments `initialize_from_env` gives `jax.distributed.initialize` (None:
    single process). Explicit variables give coordinator, count and id; UNCLIP_AUTO_DISTRIBUTED=1
    leaves them to JAX's cluster detection. Under SLURM both add `local_device_ids`
    (`slurm_local_device_ids`), which JAX's detection then keeps."""
    spec = parse_env(env)
    if spec is None:
        return None
    kwargs = {} if spec.get("auto") else {
        "coordinator_address": spec["coordinator"], "num_processes": spec["num_processes"],
        "process_id": spec["process_id"]}
    ids = slurm_local_device_ids(env)
    if ids is not None:
        kwargs["local_device_ids"] = ids
    return kwargs


def initialize_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """Initialise JAX's multi-process runtime as the environment says; safe to call twice.

    `env` defaults to `os.environ`. Returns `(process_index, process_count)`; `(0, 1)` for a
    single-process run. Raises UserError for inconsistent variables, or when called after a
    JAX backend already started in a multi-process job.
    """
    env = os.environ if env is None else env
    spec = parse_env(env)
    if spec is None or jax.distributed.is_initialized():
        return jax.process_index(), jax.process_count()
    if spec["cpu_collectives"]:
        jax.config.update("jax_cpu_collectives_implementation", spec["cpu_collectives"])
    try:
        jax.distributed.initialize(**initialize_kwargs(env))
    except RuntimeError as e:
        if "must be called before any JAX" in str(e):
            raise UserError("JAX was already in use before multi-host start-up; call "
                            "unclip_jax.distributed.initialize_from_env() first thing in the "
                            "process") from e
        raise
    except ValueError as e:
        if spec.get("auto"):
            raise UserError(f"{AUTO}=1 but JAX found no cluster to join ({e}); unset it, or "
                            f"set {', '.join(_EXPLICIT)}") from e
        raise
    return jax.process_index(), jax.process_count()


def check_collectives() -> dict:
    """All-reduce over every device of every process; proves all processes take part.

    Each process contributes its local devices' rows `1 + global row index` through
    `jax.make_array_from_process_local_data`; a `psum` over the whole mesh must give
    D(D+1)/2 for D global devices. Returns a JSON-able dict with the numbers.
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    devices = np.asarray(jax.devices())
    mesh = Mesh(devices, ("data",))
    local = jax.local_device_count()
    start = jax.process_index() * local
    rows = np.arange(start + 1, start + local + 1, dtype=np.float32).reshape(local, 1)
    sharding = NamedSharding(mesh, P("data", None))
    x = jax.make_array_from_process_local_data(sharding, rows)

    psum = jax.jit(jax.shard_map(lambda a: jax.lax.psum(a.sum(), "data"), mesh=mesh,
                                 in_specs=P("data", None), out_specs=P()))
    total = float(np.asarray(psum(x)))
    d = devices.size
    return {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "local_devices": local, "global_devices": int(d), "psum": total,
            "expected": d * (d + 1) / 2}


def main() -> int:
    """`python -m unclip_jax.distributed`: initialise from the environment, run the check."""
    try:
        initialize_from_env()
    except UserError as e:
        print(f"unclip_jax.distributed: error: {e}", file=sys.stderr)
        return 2
    result = check_collectives()
    print(json.dumps(result), flush=True)
    return 0 if result["psum"] == result["expected"] else 1


if __name__ == "__main__":
    sys.exit(main())

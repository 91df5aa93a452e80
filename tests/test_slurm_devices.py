"""Under SLURM every GPU of a node is driven by exactly one process.

Each test builds the environment SLURM gives every task of a 2-node x 8-GPU job (the
layouts launch/gpu_slurm.sh asks for), takes the arguments `initialize_from_env` would pass
to `jax.distributed.initialize` (`initialize_kwargs`), and runs them through JAX's own
cluster detection, `ClusterEnv.auto_detect_unset_distributed_params` — the call
`jax.distributed.initialize` makes, which picks SlurmCluster here and fills in what is
unset, `local_device_ids` included. Those ids index the GPUs the process sees
(CUDA_VISIBLE_DEVICES); mapped back to the node's physical GPUs, each must appear once.
"""
import os

import pytest
from jax._src import clusters
from jax._src.clusters.slurm_cluster import SlurmCluster

from unclip_jax import distributed as dist

NODES, GPUS = 2, 8


def task_envs(layout):
    """SLURM's variables for every task of the job, per node: [[env, ...], ...]."""
    tasks = 1 if layout == "per-node" else GPUS
    out = []
    for node in range(NODES):
        envs = []
        for local in range(tasks):
            env = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[07-08]",
                   "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NTASKS": str(NODES * tasks),
                   "SLURM_PROCID": str(node * tasks + local), "SLURM_LOCALID": str(local),
                   "SLURM_NODEID": str(node), "SLURM_STEP_NUM_NODES": str(NODES),
                   "SLURM_STEP_TASKS_PER_NODE": f"{tasks}(x{NODES})",
                   "SLURM_GPUS_ON_NODE": str(GPUS)}
            if layout == "per-gpu-bound":        # srun --gpus-per-task=1: one GPU each
                env["CUDA_VISIBLE_DEVICES"] = str(local)
            else:                                # the node's GPUs, all visible to each task
                env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(GPUS)))
            envs.append(env)
        out.append(envs)
    return out


def jax_detection(env, kwargs, monkeypatch):
    """`auto_detect_unset_distributed_params` under `env`, as jax.distributed.initialize
    calls it; returns (coordinator, num_processes, process_id, local_device_ids)."""
    for name in list(os.environ):
        if name.startswith(("SLURM_", "OMPI_", "PMI_", "JAX_", "TPU_", "CLOUD_TPU")) \
                or name == "CUDA_VISIBLE_DEVICES":
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert SlurmCluster.is_env_present()
    return clusters.ClusterEnv.auto_detect_unset_distributed_params(
        kwargs.get("coordinator_address"), kwargs.get("num_processes"),
        kwargs.get("process_id"), kwargs.get("local_device_ids"), None, 300)


def physical_gpus(env, local_device_ids):
    visible = [int(d) for d in env["CUDA_VISIBLE_DEVICES"].split(",")]
    ids = range(len(visible)) if local_device_ids is None else local_device_ids
    return [visible[i] for i in ids]


@pytest.mark.parametrize("mode", ["explicit", "auto"])
@pytest.mark.parametrize("layout", ["per-node", "per-gpu-bound", "per-gpu-shared"])
def test_every_gpu_of_every_node_used_exactly_once(layout, mode, monkeypatch):
    for node, envs in enumerate(task_envs(layout)):
        used = []
        for env in envs:
            if mode == "explicit":      # what launch/gpu_slurm.sh exports by default
                ours = dict(env, UNCLIP_COORDINATOR="gpu07:24242",
                            UNCLIP_NUM_PROCESSES=env["SLURM_NTASKS"],
                            UNCLIP_PROCESS_ID=env["SLURM_PROCID"])
            else:                       # gpu_slurm.sh --auto
                ours = dict(env, UNCLIP_AUTO_DISTRIBUTED="1")
            kwargs = dist.initialize_kwargs(ours)
            coord, num, pid, ids = jax_detection(env, kwargs, monkeypatch)
            assert num == NODES * len(envs) and pid == int(env["SLURM_PROCID"])
            assert coord.startswith("gpu07:")
            used += physical_gpus(env, ids)
        assert sorted(used) == list(range(GPUS)), (layout, mode, node, used)


def test_jax_alone_picks_one_gpu_per_task(monkeypatch):
    """Why initialize_kwargs passes local_device_ids: left to JAX, SLURM detection gives
    [SLURM_LOCALID] — one process per node drives 1 of 8 GPUs, and a task bound to its own
    GPU asks for device LOCALID of a 1-GPU view."""
    [envs, _] = task_envs("per-node")
    *_, ids = jax_detection(envs[0], {}, monkeypatch)
    assert ids == [0] and physical_gpus(envs[0], ids) == [0]
    [envs, _] = task_envs("per-gpu-bound")
    *_, ids = jax_detection(envs[3], {}, monkeypatch)
    assert ids == [3]
    with pytest.raises(IndexError):
        physical_gpus(envs[3], ids)             # CUDA_VISIBLE_DEVICES=3: one GPU, index 0


def test_local_device_ids_rules():
    [envs, _] = task_envs("per-node")
    assert dist.slurm_local_device_ids(envs[0]) == list(range(GPUS))
    assert dist.slurm_local_device_ids({k: v for k, v in envs[0].items()
                                        if k != "CUDA_VISIBLE_DEVICES"}) == list(range(GPUS))
    assert dist.slurm_local_device_ids(dict(envs[0], JAX_LOCAL_DEVICE_IDS="0,1")) is None
    assert dist.slurm_local_device_ids({"CUDA_VISIBLE_DEVICES": "0,1"}) is None   # not SLURM
    mixed = dict(envs[0], SLURM_STEP_TASKS_PER_NODE="2,8", SLURM_NODEID="1",
                 SLURM_LOCALID="5")            # node 1 of a '2,8' step: shared view of 8
    assert dist.slurm_local_device_ids(mixed) == [5]
    assert dist.initialize_kwargs({}) is None

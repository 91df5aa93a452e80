"""unclip_jax.distributed: env parsing, single-process no-op, and a real 2-process gloo job."""
import json
import os
import socket
import subprocess
import sys

import jax
import pytest

from unclip_jax import distributed as dist
from unclip_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPLICIT = {"UNCLIP_COORDINATOR": "127.0.0.1:23456", "UNCLIP_NUM_PROCESSES": "4",
            "UNCLIP_PROCESS_ID": "3"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra) -> dict:
    """A clean environment for a child JAX process: CPU, 2 devices, no inherited UNCLIP_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNCLIP_")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=REPO)
    env.update(extra)
    return env


def test_parse_env_single_explicit_auto():
    assert dist.parse_env({}) is None
    assert dist.parse_env({"UNCLIP_AUTO_DISTRIBUTED": "0"}) is None
    assert dist.parse_env(dict(EXPLICIT, UNCLIP_CPU_COLLECTIVES="gloo")) == {
        "coordinator": "127.0.0.1:23456", "num_processes": 4, "process_id": 3,
        "cpu_collectives": "gloo"}
    assert dist.parse_env({"UNCLIP_AUTO_DISTRIBUTED": "1"}) == {"auto": True,
                                                                "cpu_collectives": None}
    # explicit variables win over auto-detection
    assert dist.parse_env(dict(EXPLICIT, UNCLIP_AUTO_DISTRIBUTED="1"))["process_id"] == 3
    # host names and IPv6 literals are fine coordinators
    assert dist.parse_env(dict(EXPLICIT, UNCLIP_COORDINATOR="node-001:1234"))["coordinator"] == \
        "node-001:1234"
    assert dist.parse_env(dict(EXPLICIT, UNCLIP_COORDINATOR="[::1]:1234")) is not None


@pytest.mark.parametrize("env, message", [
    ({"UNCLIP_COORDINATOR": "127.0.0.1:1"}, "UNCLIP_NUM_PROCESSES, UNCLIP_PROCESS_ID missing"),
    (dict(EXPLICIT, UNCLIP_COORDINATOR="localhost"), "is not host:port"),
    (dict(EXPLICIT, UNCLIP_COORDINATOR="localhost:99999"), "is not host:port"),
    (dict(EXPLICIT, UNCLIP_NUM_PROCESSES="two"), "UNCLIP_NUM_PROCESSES='two' is not an integer"),
    (dict(EXPLICIT, UNCLIP_NUM_PROCESSES="0"), "set it to a positive integer"),
    (dict(EXPLICIT, UNCLIP_PROCESS_ID="-1"), "UNCLIP_PROCESS_ID='-1' is not an integer ≥ 0"),
    (dict(EXPLICIT, UNCLIP_PROCESS_ID="4"), "out of range for UNCLIP_NUM_PROCESSES=4; use 0..3"),
    (dict(EXPLICIT, UNCLIP_CPU_COLLECTIVES="nccl"), "use one of gloo, mpi"),
    ({"UNCLIP_AUTO_DISTRIBUTED": "yes"}, "use 1 (detect the cluster)"),
])
def test_parse_env_errors_name_the_fix(env, message):
    with pytest.raises(UserError) as info:
        dist.parse_env(env)
    assert message in str(info.value)


def test_single_process_is_a_no_op():
    assert dist.initialize_from_env({}) == (0, 1)
    assert dist.initialize_from_env({}) == (0, 1)
    assert not jax.distributed.is_initialized()


def test_after_backend_started_is_a_clear_error(devices8):
    env = dict(EXPLICIT, UNCLIP_COORDINATOR=f"127.0.0.1:{free_port()}")
    with pytest.raises(UserError, match="call unclip_jax.distributed.initialize_from_env"):
        dist.initialize_from_env(env)
    assert not jax.distributed.is_initialized()


def test_auto_without_cluster_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-m", "unclip_jax.distributed"], cwd=REPO,
                          env=child_env(UNCLIP_AUTO_DISTRIBUTED="1"), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "UNCLIP_AUTO_DISTRIBUTED=1 but JAX found no cluster" in proc.stderr


CHILD = """
import json
from unclip_jax.distributed import initialize_from_env, check_collectives
first = initialize_from_env()
second = initialize_from_env()          # idempotent
out = check_collectives()
out["first"], out["second"] = first, second
print("RESULT " + json.dumps(out), flush=True)
"""


def test_two_processes_gloo_psum():
    port = free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-c", CHILD], cwd=REPO, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(UNCLIP_COORDINATOR=f"127.0.0.1:{port}", UNCLIP_NUM_PROCESSES="2",
                      UNCLIP_PROCESS_ID=str(i), UNCLIP_CPU_COLLECTIVES="gloo"))
        for i in range(2)]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=90)
            assert p.returncode == 0, err[-2000:]
            line = next(l for l in out.splitlines() if l.startswith("RESULT "))
            results.append(json.loads(line[len("RESULT "):]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, r in enumerate(results):
        assert r["first"] == r["second"] == [i, 2]
        assert r["process_index"] == i and r["process_count"] == 2
        assert r["local_devices"] == 2 and r["global_devices"] == 4
        # rows 1..4 from both processes: 1+2+3+4; a process missing would give 3 or 7
        assert r["psum"] == r["expected"] == 10.0

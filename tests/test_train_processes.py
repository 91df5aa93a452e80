"""The trainer across processes: two localhost processes training together (gloo), a run
killed with SIGKILL and resumed (bit-exact), and SIGTERM (preemption) saving and exiting.
Each test starts subprocesses (JAX + TF start-up), hence `slow`."""
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

import test_train_toy as train_toy
from unclip_jax.train.loop import train

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)

WORKER = textwrap.dedent('''
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count={devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path[:0] = [{root!r}, {tests!r}]
    import jax
    nproc, pid = {nproc}, int(sys.argv[1])
    if nproc > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize("127.0.0.1:{port}", num_processes=nproc, process_id=pid)
    import test_train_toy as train_toy
    from unclip_jax.train.loop import train
    cfg = train_toy.toy_config(steps={steps}, mesh={mesh!r})
    with cfg.unlocked():
        cfg.data.delay = {delay}
    out = train(cfg, {workdir!r}, progress=False)
    print("DONE", out["step"], out["preempted"], flush=True)
''')


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp_path, pid=0, **kw):
    opts = dict(devices=1, nproc=1, port=0, steps=20, mesh={}, delay=0.0, root=ROOT,
                tests=TESTS)
    opts.update(kw)
    script = tmp_path / f"worker_{pid}.py"
    script.write_text(WORKER.format(**opts))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.Popen([sys.executable, str(script), str(pid)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def host(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def wait_for_checkpoint(workdir, step, proc, timeout=240):
    marker = os.path.join(workdir, "checkpoints", str(step), "_CHECKPOINT_METADATA")
    t0 = time.time()
    while not os.path.exists(marker):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - t0 < timeout, "no checkpoint appeared"
        time.sleep(0.2)


@pytest.mark.slow
def test_two_processes_train_together_and_restore_on_one(tmp_path, devices8):
    wd, port = str(tmp_path / "mp"), free_port()
    procs = [start(tmp_path, i, devices=2, nproc=2, port=port, steps=6, workdir=wd)
             for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert all("DONE 6 False" in o for o in outs), outs
    # the same 6 steps in one process on 4 devices
    cfg = train_toy.toy_config(steps=6)
    ref = train(cfg, str(tmp_path / "ref"), devices=devices8[:4], progress=False)
    # restore the two-process checkpoint in this single process on a 1-device mesh
    got = train(cfg, wd, devices=devices8[:1], progress=False)
    assert got["step"] == 6
    for x, y in zip(host(got["state"]), host(ref["state"])):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_exact(tmp_path, devices8):
    wd = str(tmp_path / "killed")
    proc = start(tmp_path, steps=20, delay=0.15, workdir=wd)
    wait_for_checkpoint(wd, 10, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(wd, "checkpoints", "20"))
    cfg = train_toy.toy_config(steps=20)
    resumed = train(cfg, wd, devices=devices8[:1], progress=False)
    full = train(cfg, str(tmp_path / "full"), devices=devices8[:1], progress=False)
    assert resumed["step"] == 20
    for x, y in zip(host(resumed["state"]), host(full["state"])):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path):
    wd = str(tmp_path / "preempted")
    proc = start(tmp_path, steps=200, delay=0.1, workdir=wd)
    wait_for_checkpoint(wd, 5, proc)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    line = next(l for l in out.splitlines() if l.startswith("DONE"))
    _, step, preempted = line.split()
    assert preempted == "True" and 5 <= int(step) < 200
    assert os.path.isfile(os.path.join(wd, "checkpoints", step, "_CHECKPOINT_METADATA"))

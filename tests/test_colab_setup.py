"""unclip_jax.colab_setup: the notebook's runtime setup decides from the hardware and JAX's
backend what to install and when to warn, and keeps a preinstalled TensorFlow."""
import sys

import pytest

from unclip_jax import colab_setup as C


def _glob(*present):
    return lambda pattern: [p for p in present if p.startswith(pattern.split("*")[0].split("[")[0])]


@pytest.mark.parametrize("env,files,which,want", [
    ({}, (), None, "cpu"),
    ({"COLAB_TPU_ADDR": "10.0.0.2:8470"}, (), None, "tpu"),
    ({"TPU_ACCELERATOR_TYPE": "v5litepod-1"}, (), None, "tpu"),
    ({}, ("/dev/accel0",), None, "tpu"),
    ({}, ("/dev/vfio/0",), None, "tpu"),
    ({}, ("/proc/driver/nvidia/gpus/0000:00:04.0",), None, "gpu"),
    ({}, (), "/usr/bin/nvidia-smi", "gpu"),
])
def test_detect_hardware(env, files, which, want):
    assert C.detect_hardware(env, _glob(*files), lambda name: which) == want


JAX_HINT = {"gpu": 'pip install -U "jax[cuda12]"', "tpu": 'pip install -U "jax[tpu]"'}


@pytest.mark.parametrize("hardware,backend,install,warns", [
    ("cpu", "cpu", None, False),
    ("cpu", None, "jax", False),           # jax missing or broken
    ("gpu", "gpu", None, False),
    ("gpu", "cpu", "jax[cuda12]", True),   # pip upgraded jax without its CUDA plugin
    ("gpu", None, "jax[cuda12]", True),
    ("tpu", "tpu", None, False),
    ("tpu", "cpu", "jax[tpu]", True),      # ... or without libtpu
])
def test_decision_table(hardware, backend, install, warns):
    assert C.jax_requirement(hardware, backend) == install
    msg = C.backend_warning(hardware, backend)
    assert (msg is not None) == warns
    if warns:
        assert msg.startswith("WARNING") and hardware.upper() in msg and JAX_HINT[hardware] in msg


def test_jax_backend_asks_a_fresh_interpreter():
    assert C.jax_backend() == "cpu"                   # this venv's JAX (conftest: CPU only)
    assert C.jax_backend("/nonexistent/python") is None


def names(reqs) -> set[str]:
    return {r.split(";")[0].split(">")[0].split("=")[0].strip() for r in reqs}


def test_requirements_keep_an_installed_tensorflow():
    """tensorflow and tensorflow-cpu write the same package: with either installed, neither is
    asked for; without, the declared one is; the test extras are never included."""
    with_tf = C.requirements(installed=lambda n: n == "tensorflow")
    without = C.requirements(installed=lambda n: False)
    assert not names(with_tf) & {"tensorflow", "tensorflow-cpu"}
    assert names(without) >= {"tensorflow-cpu", "tensorflow"}       # per-platform markers
    assert names(without) - names(with_tf) == {"tensorflow-cpu", "tensorflow"}
    assert {"jax", "flax", "optax"} <= names(with_tf)
    assert "pytest" not in names(without) and "torch" not in names(without)


def test_main_installs_nothing_when_jax_fits(monkeypatch, capsys):
    monkeypatch.setattr(C, "detect_hardware", lambda: "cpu")
    monkeypatch.setattr(C, "jax_backend", lambda python=sys.executable: "cpu")
    monkeypatch.setattr(C, "_pip", lambda *a: pytest.fail(f"pip must not run: {a}"))
    assert C.main([]) == 0
    assert "hardware: cpu | JAX backend: cpu" in capsys.readouterr().out


def test_main_reinstalls_jax_for_an_unused_gpu_and_warns_if_it_stays_on_cpu(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(C, "detect_hardware", lambda: "gpu")
    monkeypatch.setattr(C, "jax_backend", lambda python=sys.executable: "cpu")
    monkeypatch.setattr(C, "_pip", lambda *a: calls.append(a))
    assert C.main([]) == 0
    assert calls == [("-U", "jax[cuda12]")]
    out = capsys.readouterr()
    assert "hardware: gpu | JAX backend: cpu" in out.out
    assert "WARNING: this runtime has a GPU but JAX runs on CPU" in out.err

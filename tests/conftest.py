"""Test setup: 8 simulated CPU devices for sharding tests, TF kept off accelerators."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# tests compile afresh; tests/test_runtime.py checks the persistent cache in subprocesses
os.environ.setdefault("UNCLIP_JAX_CACHE_DIR", "off")

import jax  # noqa: E402  (must come after XLA_FLAGS)
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def devices8():
    devs = jax.devices()
    assert len(devs) >= 8, "conftest must provide 8 CPU devices"
    return devs[:8]

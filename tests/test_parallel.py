"""Meshes, logical rules and the sharding context (unclip_jax.parallel)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from unclip_jax import parallel
from unclip_jax.errors import UserError


def test_mesh_shape_fills_minus_one_and_names_the_fix():
    assert parallel.mesh_shape({"data": -1}, 8) == (8, 1, 1)
    assert parallel.mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2)
    with pytest.raises(UserError, match="at most one axis may be -1"):
        parallel.mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(UserError, match="not divisible by 3"):
        parallel.mesh_shape({"data": -1, "fsdp": 3}, 8)
    with pytest.raises(UserError, match="needs 4 devices but 8"):
        parallel.mesh_shape({"data": 2, "fsdp": 2}, 8)


def test_activate_makes_logical_constraints_real(devices8):
    """Inside `activate`, nn.with_logical_constraint lowers to a sharding constraint."""
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices8)
    fn = lambda x: nn.with_logical_constraint(x * 2, ("batch", "height", "width", "channels"))  # noqa: E731
    x = jnp.ones((4, 2, 2, 8))
    with parallel.activate(mesh):
        text = jax.jit(fn).lower(x).as_text()
    assert "sharding_constraint" in text or "Sharding" in text


def test_residual_after_tensor_fsdp_kernel_matches_unsharded(devices8):
    """x + a @ w with a, x channel-sharded over tensor and w sharded (tensor, fsdp): the pattern
    XLA's partitioner miscomputed without constraints; with the constraint on the sum's
    layout (what parallel.activate enables inside models) it matches the unsharded result."""
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices8)
    k = jax.random.split(jax.random.key(0), 3)
    a, x = jax.random.normal(k[0], (4, 16, 64)), jax.random.normal(k[1], (4, 16, 64))
    w = jax.random.normal(k[2], (64, 64))

    def f(a, w, x):
        return nn.with_logical_constraint(a @ w, ("batch", "length", "embed")) + x

    ref = jax.jit(f)(a, w, x)
    put = lambda v, *spec: jax.device_put(v, NamedSharding(mesh, P(*spec)))  # noqa: E731
    with parallel.activate(mesh):
        out = jax.jit(f)(put(a, ("data", "fsdp"), None, "tensor"), put(w, "tensor", "fsdp"),
                         put(x, ("data", "fsdp"), None, "tensor"))
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-4)


def test_global_batch_and_bytes_per_device(devices8):
    mesh = parallel.make_mesh({"fsdp": -1}, devices8)
    batch = parallel.global_batch({"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}, mesh)
    assert batch["x"].sharding.spec == P(parallel.BATCH_AXES, None)
    per = parallel.bytes_per_device(batch)
    assert len(per) == 8 and set(per.values()) == {2 * 3 * 4}
    np.testing.assert_array_equal(np.asarray(batch["x"]), np.arange(48).reshape(16, 3))

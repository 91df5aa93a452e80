"""Device meshes, logical-axis rules and shardings.

Every parameter is created with `nn.with_logical_partitioning(init, names)` using the logical
axis names below; big activations use `nn.with_logical_constraint`. A config's `mesh` gives the
sizes of the physical mesh axes `data`, `fsdp`, `tensor` (one may be -1: "the rest"), and the
logical→mesh rules map names onto them. With the default rules a mesh of data=N is pure data
parallelism, fsdp=N shards parameters and optimizer state over N devices (ZeRO-3 style) while
still splitting the batch, and tensor=N shards heads / MLP / output channels.

Logical axis names
------------------
batch      examples in a batch                      → (data, fsdp)
length     sequence positions                       → replicated
embed      model width (d_model, token features)    → fsdp
mlp        MLP hidden units                         → tensor
heads      attention heads × head_dim (q/k/v cols)  → tensor
kv         per-head feature dim when kept separate  → replicated
vocab      vocabulary / codebook                    → tensor
conv_in    convolution input channels               → fsdp
conv_out   convolution output channels              → tensor
norm       scale/bias of norms                      → replicated
height, width, channels (activations)               → replicated
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from unclip_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("conv_in", "fsdp"),
    ("conv_out", "tensor"),
    ("norm", None),
    ("height", None),
    ("width", None),
    ("channels", None),
)


def mesh_shape(mesh_cfg: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
    """Resolve `{'data': d, 'fsdp': f, 'tensor': t}` (one may be -1) to sizes using all devices.

    Raises UserError if the sizes do not multiply to `num_devices`.
    """
    sizes = [int(mesh_cfg.get(a, 1)) for a in MESH_AXES]
    unknown = [i for i, s in enumerate(sizes) if s == -1]
    if len(unknown) > 1:
        raise UserError(f"mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise UserError(f"mesh {dict(zip(MESH_AXES, sizes))}: sizes must be positive or -1")
    known = math.prod(s for s in sizes if s != -1)
    if unknown:
        if num_devices % known:
            raise UserError(
                f"mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not divisible by "
                f"{known}; change config.mesh")
        sizes[unknown[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise UserError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but "
            f"{num_devices} are available; set one axis to -1 in config.mesh")
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(mesh_cfg: Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `Mesh` with axes (data, fsdp, tensor) over `devices` (default: all devices)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_cfg or {"data": -1}, len(devices))
    try:
        from jax.experimental import mesh_utils
        arr = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # non-TPU topologies / CPU: plain row-major layout
        arr = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(arr, MESH_AXES)


def rules_from_config(config) -> tuple[tuple[str, Any], ...]:
    """Logical→mesh rules: `config.logical_rules` (list of [name, axis-or-axes]) or defaults."""
    rules = config.get("logical_rules", None) if hasattr(config, "get") else None
    if not rules:
        return DEFAULT_RULES
    out = []
    for name, axes in rules:
        if isinstance(axes, list):
            axes = tuple(axes)
        out.append((name, axes))
    return tuple(out)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Iterator[Mesh]:
    """Make `mesh` and the logical rules current, so `nn.with_logical_constraint` takes effect.

    Trace and call sharded programs inside this context. On JAX ≥ 0.5 this is `jax.set_mesh`
    (the legacy `with mesh:` alone leaves Flax's activation constraints as no-ops there);
    older JAX falls back to `with mesh:`. Without active constraints XLA's partitioner picks
    activation layouts itself, and on JAX 0.10 (CPU) one such choice — a residual add whose
    operands are channel-sharded over `tensor` after a kernel sharded ('tensor', 'fsdp'), on a
    mesh with data, fsdp and tensor all > 1 — computed wrong values
    (tests/test_unet.py and tests/test_parallel.py keep that case covered).
    """
    set_mesh = getattr(jax, "set_mesh", None)
    mesh_ctx = set_mesh(mesh) if set_mesh is not None else mesh
    with mesh_ctx, nn.logical_axis_rules(list(rules)):
        yield mesh


def active_batch_axes() -> tuple[str, ...]:
    """The batch mesh axes (`BATCH_AXES`) of the mesh made current by `activate`, or () when no
    such mesh is current (plain jit on one device, pmap)."""
    get = getattr(jax.sharding, "get_abstract_mesh", None)
    mesh = get() if get is not None else None
    names = tuple(getattr(mesh, "axis_names", ()) or ())
    return tuple(a for a in BATCH_AXES if a in names)


def vmap_examples(fn: Callable, in_axes: Any = 0) -> Callable:
    """`jax.vmap(fn, in_axes)` over the batch axis that keeps the batch split over devices.

    `fn` sees one example (with a leading axis of 1 where it adds one itself). A plain `vmap`
    of a function that contains sharding constraints replicates the mapped axis: every
    constraint inside gets `None` for it, so XLA gathers the whole batch onto every device and
    each of N data-parallel devices does all of the work. Here the mapped axis is named the
    mesh's batch axes (`spmd_axis_name`), and inside `fn` no logical axis maps to those mesh
    axes (the per-example 'batch' axis of size 1 and, under FSDP, activations' 'embed'), just
    as in a batched program where 'batch' claims them first. Outside a mesh this is plain
    `vmap`.
    """
    axes = active_batch_axes()
    if not axes:
        return jax.vmap(fn, in_axes=in_axes)

    def without_batch_axes(target):
        kept = tuple(a for a in ((target,) if isinstance(target, str) else target or ())
                     if a not in axes)
        return kept[0] if len(kept) == 1 else (kept or None)

    inner = tuple((name, without_batch_axes(target))
                  for name, target in nn.get_logical_axis_rules())

    def one(*args):
        with nn.logical_axis_rules(list(inner)):
            return fn(*args)

    return jax.vmap(one, in_axes=in_axes, spmd_axis_name=axes)


def logical_shardings(abstract_tree: Any, mesh: Mesh,
                      rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Any:
    """NamedShardings for a (boxed, possibly abstract) tree made with logical partitioning.

    Leaves without partitioning metadata are replicated.
    """
    specs = nn.get_partition_spec(abstract_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, list(rules))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Sharding of an array whose leading axis is the batch (split over data × fsdp)."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def global_batch(local: Any, mesh: Mesh) -> Any:
    """Per-process numpy batch (leading axis = this process's examples) → global jax arrays.

    Each process passes only its own slice; the result is sharded over (data, fsdp).
    """
    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)
    return jax.tree.map(one, local)


def bytes_per_device(tree: Any) -> dict[int, int]:
    """Bytes of `tree`'s shards held on each device id (for FSDP memory checks)."""
    out: dict[int, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in getattr(leaf, "addressable_shards", []):
            out[shard.device.id] = out.get(shard.device.id, 0) + shard.data.nbytes
    return out

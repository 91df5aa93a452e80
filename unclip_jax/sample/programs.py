"""Compiled stage programs: the one jit cache, padding and sharding, per-example randomness.

Each stage runs as ONE jitted program per (stage, shapes, settings) — the whole sampler loop
inside. `PROGRAMS` is the process-wide cache of those programs, keyed also by the stage's
checkpoint (directory and identity) and the devices, so a model loaded twice never compiles
twice. The batch is padded to a multiple of the device count and sharded over a `data` mesh
of all devices; padding rows are dropped. Example i of a call draws from
fold_in(stage_key, i + offset), so an image depends only on the seed, its position in the
request and its conditioning — not on batch size, padding, chunking or device count.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax import parallel
from unclip_jax.sample.checks import as_key

PROGRAMS: dict[tuple, Any] = {}   # (name, shapes, settings, where) → jitted program

# fold_in offsets of each stage's key
KEY_IDS = {"prior": 1, "decoder": 2, "x_T": 3, "upsampler1": 4, "upsampler2": 5}


def stage_key(key, stage: str):
    """The key a stage draws from: fold_in(key, KEY_IDS[stage]) (key: int seed or typed)."""
    return jax.random.fold_in(as_key(key), KEY_IDS[stage])


def example_keys(key, index):
    """Per-example keys: fold_in(key, index[b]) → [B] typed keys."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)


def per_example(fn, keys, *batched):
    """vmap `fn(key, *one_example)` (each array, or pytree of arrays, with a leading batch
    axis of 1; None passes through) over a batch."""
    def one(k, *xs):
        out = fn(k, *(jax.tree.map(lambda a: a[None], x) for x in xs))
        return jax.tree.map(lambda a: a[0], out)
    in_axes = (0,) + tuple(None if x is None else 0 for x in batched)
    return jax.vmap(one, in_axes=in_axes)(keys, *batched)


def pad_to_multiple(x: np.ndarray, multiple: int) -> tuple[np.ndarray, int]:
    """Pad the leading axis of `x` up to a multiple of `multiple` by repeating the last row.

    Returns (padded, n) where n is the original length; drop the padding with `out[:n]`.
    """
    x = np.asarray(x)
    n = x.shape[0]
    pad = (-n) % multiple
    if pad:
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)], axis=0)
    return x, n


def edit_static(edit: dict | None):
    """The replicated (not per-example) part of a stage edit: start level and jump ops."""
    if edit is None:
        return None
    return {"start": jnp.asarray(edit["start"], jnp.int32),
            "ops": jnp.asarray(edit["ops"], jnp.int32)}


class Programs:
    """Runs stage programs on a `data` mesh of `devices` (default: all).

    `offset` is the position of the current batch's first example in the whole request
    (`generate` sets it while it samples a request in chunks)."""

    def __init__(self, devices=None):
        self.mesh = parallel.make_mesh({"data": -1}, devices)
        self.num_devices = self.mesh.devices.size
        self.offset = 0

    def replicate(self, tree):
        """Place a host pytree (parameters) replicated on the mesh."""
        return jax.device_put(tree, parallel.replicated(self.mesh))

    def shard(self, x):
        """Host array with a (padded) leading batch → batch-sharded device array."""
        x = np.asarray(x)
        return jax.device_put(x, parallel.batch_sharding(self.mesh, x.ndim))

    def pad(self, *arrays):
        """Pad host arrays [n, ...] to a multiple of the device count and shard them →
        (arrays, example indices [n'] int32 (positions + offset), n)."""
        n = np.asarray(arrays[0]).shape[0]
        out = [self.shard(pad_to_multiple(a, self.num_devices)[0]) for a in arrays]
        idx = pad_to_multiple(np.arange(n, dtype=np.int32), self.num_devices)[0]
        idx[n:] = np.arange(n, idx.shape[0], dtype=np.int32)
        return out, self.shard(idx + np.int32(self.offset)), n

    def pad_dict(self, d: dict | None, keys: Sequence[str]) -> dict | None:
        """Pad and shard the per-example arrays d[k] (k in `keys` whose value is not None)."""
        if d is None:
            return None
        keys = [k for k in keys if d.get(k) is not None]
        arrays, _, _ = self.pad(*(d[k] for k in keys))
        return dict(zip(keys, arrays))

    def example_noise(self, key, n: int, shape: tuple) -> np.ndarray:
        """Standard normal [n, *shape]: example i from fold_in(key, i + offset)."""
        keys = example_keys(key, jnp.arange(n) + self.offset)
        return np.asarray(jax.vmap(lambda k: jax.random.normal(k, shape))(keys))

    def where(self, checkpoint: tuple) -> tuple:
        """The cache-key part naming a checkpoint (directory, identity) on these devices."""
        return checkpoint + (tuple(d.id for d in self.mesh.devices.flat),)

    def cache_key(self, name: str, checkpoint: tuple, settings: tuple, args: tuple) -> tuple:
        """The key of `fn(*args)`'s program in `PROGRAMS`: (name, shapes, settings, where)."""
        shapes = tuple((tuple(a.shape), str(a.dtype)) for a in jax.tree.leaves(args)
                       if hasattr(a, "shape"))
        return (name, shapes, settings, self.where(checkpoint))

    def run(self, name: str, checkpoint: tuple, settings: tuple, fn: Callable, args: tuple):
        """`fn(*args)` through the program cached per (name, shapes, settings, checkpoint,
        devices); `checkpoint` = (directory, identity) of the stage it runs."""
        key = self.cache_key(name, checkpoint, settings, args)
        prog = PROGRAMS.get(key)
        if prog is None:
            prog = PROGRAMS[key] = jax.jit(fn)
        return prog(*args)

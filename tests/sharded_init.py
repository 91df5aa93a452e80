"""Initialise a model's parameters straight into their shardings (the sharding tests' helper;
training does the same through `unclip_jax.train.loop`'s state shardings)."""
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax

from unclip_jax import parallel


def init_sharded(init_fn: Callable[..., Any], mesh, rules: Sequence[tuple[str, Any]], *args):
    """`init_fn(*args)` (e.g. `model.init`) traced with `jax.eval_shape`, its logical specs
    turned into NamedShardings and run jitted with those `out_shardings`, so each shard is
    materialised on its device. → `(tree, shardings)` with the partitioning boxes removed."""
    abstract = jax.eval_shape(init_fn, *args)
    shardings = parallel.logical_shardings(abstract, mesh, rules)
    with parallel.activate(mesh, rules):
        tree = jax.jit(init_fn, out_shardings=shardings)(*args)
    return nn.meta.unbox(tree), nn.meta.unbox(shardings)

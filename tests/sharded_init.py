"""Initialise a model's parameters straight into their shardings (the sharding tests' helper;
training does the same through `unclip_jax.train.loop`'s state shardings), check them against
the plain init, and count a model's parameters without allocating them."""
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np

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


def assert_matches_unsharded(model, params, args, mesh, seed: int = 0):
    """Sharded `params` (from `init_sharded` with key `seed`) equal the plain
    `model.init(key(seed), *args)`, and `model.apply` on the batch `args` sharded over `mesh`
    reproduces the plain output."""
    ref = nn.meta.unbox(model.init(jax.random.key(seed), *args))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                         atol=1e-6), params, ref)
    xs = parallel.global_batch(tuple(np.asarray(a) for a in args), mesh)
    with parallel.activate(mesh):
        out = jax.jit(model.apply)(params, *xs)
    np.testing.assert_allclose(np.asarray(out), model.apply(ref, *args), atol=1e-5)


def parameter_count(model, *args) -> int:
    """Parameters of `model.init(key, *args)`, counted from shapes alone (nothing allocated)."""
    tree = jax.eval_shape(lambda k: model.init(k, *args), jax.random.key(0))
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(nn.meta.unbox(tree)))

"""The train state pytree and its sharded creation.

`TrainState` holds plain (unboxed) float32 arrays. Parameter shardings come from the logical
annotations (`parallel.logical_shardings` of `jax.eval_shape` of the boxed init); optimizer
state leaves that mirror a parameter take that parameter's sharding, the rest (counts) are
replicated.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from unclip_jax import parallel


@flax.struct.dataclass
class TrainState:
    step: jax.Array        # [] int32, number of optimizer updates applied
    params: Any            # plain pytree of float32 arrays
    ema_params: Any        # exponential moving average of params (same tree)
    opt_state: Any         # optax state


def state_shardings(boxed_init: Callable[[], Any], tx: optax.GradientTransformation,
                    mesh: Mesh, rules) -> tuple[TrainState, TrainState]:
    """`(abstract_state, shardings)` for the state whose params come from `boxed_init()`.

    Nothing is allocated: everything is traced with `jax.eval_shape`.
    """
    abstract_boxed = jax.eval_shape(boxed_init)
    param_sh = nn.meta.unbox(parallel.logical_shardings(abstract_boxed, mesh, rules))
    abstract_params = nn.meta.unbox(abstract_boxed)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    rep = parallel.replicated(mesh)
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_sh,
                                   transform_non_params=lambda _: rep)
    shardings = TrainState(step=rep, params=param_sh, ema_params=param_sh, opt_state=opt_sh)
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                          ema_params=abstract_params, opt_state=abstract_opt)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, shardings)
    return abstract, shardings


def create_state(boxed_init: Callable[[], Any], tx: optax.GradientTransformation, mesh: Mesh,
                 rules, initial_params: Any = None) -> tuple[TrainState, TrainState]:
    """Materialise a fresh `TrainState` directly into its shardings. Returns (state, shardings).

    initial_params: optional host arrays in the params' tree (`train.init_from`); they become
    the params and the EMA params of step 0 instead of a random init.
    """
    _, shardings = state_shardings(boxed_init, tx, mesh, rules)

    def fresh(params):
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params))

    with parallel.activate(mesh, rules):
        if initial_params is None:
            state = jax.jit(lambda: fresh(nn.meta.unbox(boxed_init())),
                            out_shardings=shardings)()
        else:
            # every process holds the whole host array; each device takes its shard of it
            placed = jax.tree.map(
                lambda a, sh: jax.make_array_from_callback(a.shape, sh, lambda idx: a[idx]),
                initial_params, shardings.params)
            state = jax.jit(fresh, out_shardings=shardings)(placed)
    return state, shardings

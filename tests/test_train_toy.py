"""A tiny regression stage registered only in tests: exercises the generic trainer.

Model: LayerNorm → dense(embed→mlp) → gelu → dropout → dense(mlp→embed), logical axes from
`unclip_jax.parallel`. Data: x ~ N(0, 1) per example, target y = tanh(x · W*) for a fixed W*;
batch i of the global stream is drawn from `default_rng([seed, i])`, each process keeps its
slice; the iterator state is the next batch index. `config.data.nan_at = i` puts a NaN in
batch i.
"""
from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from unclip_jax import config_schema as common
from unclip_jax.models.layers import LayerNorm, dense
from unclip_jax.train import registry


class ToyMLP(nn.Module):
    dim: int
    hidden: int
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = LayerNorm(dtype=self.dtype, name="norm")(x)
        h = jax.nn.gelu(dense(self.hidden, ("embed", "mlp"), "fc1", self.dtype)(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        return x + dense(self.dim, ("mlp", "embed"), "fc2", self.dtype)(h)


class ToyData:
    """Deterministic per-process stream with the BatchIterator get_state/set_state protocol."""

    def __init__(self, config, split, *, process_index, process_count, seed):
        self.batch = int(config.train.batch_size)
        self.dim = int(config.model.dim)
        self.seed, self.split = seed, split
        self.lo = self.batch // process_count * process_index
        self.hi = self.lo + self.batch // process_count
        self.nan_at = int(config.data.get("nan_at", -1))
        self.delay = float(config.data.get("delay", 0.0))   # seconds per batch (kill tests)
        self.index = 0
        teacher = np.random.default_rng(1234)
        self.w = teacher.normal(size=(self.dim, self.dim)).astype(np.float32) / np.sqrt(self.dim)

    def __iter__(self):
        return self

    def __next__(self):
        if self.delay:
            time.sleep(self.delay)
        rng = np.random.default_rng([self.seed, self.index])
        x = rng.normal(size=(self.batch, self.dim)).astype(np.float32)
        y = np.tanh(x @ self.w).astype(np.float32)
        if self.index == self.nan_at:
            x[:, 0] = np.nan
        self.index += 1
        return {"x": x[self.lo:self.hi], "y": y[self.lo:self.hi]}

    def get_state(self):
        return {"index": self.index}

    def set_state(self, state):
        self.index = int(state["index"])


def toy_loss(params, batch, key, model, config, extras):
    pred = model.apply({"params": params}, batch["x"], train=True, rngs={"dropout": key})
    err = (pred.astype(jnp.float32) - batch["y"]) ** 2
    return err.mean(), {"mae": jnp.abs(pred - batch["y"]).mean()}


TOY = registry.register(registry.TrainStage(
    name="toy",
    build_model=lambda c: ToyMLP(c.model.dim, c.model.hidden, c.model.dropout,
                                 jnp.dtype(registry.model_section(c).dtype)),
    init_inputs=lambda c: {"x": jnp.zeros((1, c.model.dim), jnp.float32)},
    loss=toy_loss,
    make_data=ToyData,
))


def toy_config(steps=20, batch_size=16, dim=64, hidden=256, mesh=None, **train_kw):
    cfg = mlc.ConfigDict()
    cfg.stage = "toy"
    cfg.seed = 0
    cfg.model = mlc.ConfigDict(dict(dim=dim, hidden=hidden, dropout=0.1, dtype="float32"))
    cfg.diffusion = mlc.ConfigDict()
    cfg.clip = mlc.ConfigDict()
    cfg.data = mlc.ConfigDict(dict(name="toy", nan_at=-1, delay=0.0))
    kw = dict(batch_size=batch_size, steps=steps, lr=3e-3, warmup=2, weight_decay=1e-2,
              ema_decay=0.9)
    kw.update(train_kw)
    cfg.train = common.train(**kw)
    cfg.train.log_every = 1
    cfg.train.ckpt_every = 5
    cfg.mesh = common.mesh(**(mesh or {}))
    cfg.logical_rules = []
    cfg.lock()
    return cfg

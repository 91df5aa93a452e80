"""Training the small judge networks of eval/ (attribute classifier, scene detector, object
counter): AdamW with a cosine-decayed learning rate and one jitted step."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


def adamw_trainer(model: nn.Module, loss_fn: Callable, image_size: int, *, steps: int,
                  learning_rate: float, weight_decay: float, seed: int):
    """→ (params, opt_state, step) for `model` on images [B, image_size, image_size, 3].

    params: `model.init(jax.random.key(seed), zeros)` unboxed; the optimiser: AdamW whose
    learning rate decays from `learning_rate` to 0 over `steps` (cosine);
    step(params, opt_state, images, labels) → (params, opt_state, loss), jitted, minimising
    loss_fn(params, model, images, labels)."""
    params = nn.meta.unbox(model.init(jax.random.key(seed),
                                      jnp.zeros((1, image_size, image_size, 3))))
    tx = optax.adamw(optax.cosine_decay_schedule(learning_rate, int(steps)),
                     weight_decay=weight_decay)

    @jax.jit
    def step(params, opt_state, images, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, model, images, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return params, tx.init(params), step

"""Optimizer from `config.train`: AdamW, warmup + cosine/constant LR, clipping, decay mask."""
from __future__ import annotations

from typing import Any, Callable

import jax
import optax

from unclip_jax.errors import UserError

# Parameters whose path contains one of these names are never weight-decayed.
NO_DECAY_NAMES = ("embedding", "position", "pos_emb", "positional", "norm", "bias", "scale",
                  "logit_scale", "class_embed")


def lr_schedule(train_cfg) -> Callable[[Any], Any]:
    """step → learning rate: linear warmup 0→lr over `warmup` steps, then cosine to 0 at
    `steps` (lr_schedule='cosine') or flat (lr_schedule='constant')."""
    lr, warmup, steps = float(train_cfg.lr), int(train_cfg.warmup), int(train_cfg.steps)
    kind = train_cfg.lr_schedule
    if kind == "cosine":
        if warmup >= steps:
            raise UserError(f"train.warmup ({warmup}) must be smaller than train.steps ({steps})")
        return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 0), steps, end_value=0.0) \
            if warmup > 0 else optax.cosine_decay_schedule(lr, steps)
    if kind == "constant":
        if warmup > 0:
            return optax.join_schedules(
                [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
        return optax.constant_schedule(lr)
    raise UserError(f"train.lr_schedule={kind!r}: choose 'cosine' or 'constant'")


def decay_mask(params: Any) -> Any:
    """True for parameters that get weight decay: ≥2-D and not norms/biases/embeddings."""
    def one(path, leaf):
        names = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path).lower()
        return leaf.ndim >= 2 and not any(n in names for n in NO_DECAY_NAMES)
    return jax.tree_util.tree_map_with_path(one, params)


def make_optimizer(train_cfg) -> tuple[optax.GradientTransformation, Callable]:
    """`(tx, schedule)`: global-norm clipping (train.grad_clip > 0) then AdamW(b1, b2, eps,
    weight_decay with `decay_mask`)."""
    schedule = lr_schedule(train_cfg)
    parts = []
    if float(train_cfg.grad_clip) > 0:
        parts.append(optax.clip_by_global_norm(float(train_cfg.grad_clip)))
    parts.append(optax.adamw(schedule, b1=float(train_cfg.b1), b2=float(train_cfg.b2),
                             eps=float(train_cfg.eps), weight_decay=float(train_cfg.weight_decay),
                             mask=decay_mask))
    return optax.chain(*parts), schedule

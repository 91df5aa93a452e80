"""CLIP's symmetric contrastive (InfoNCE) loss.

Plain jnp on the whole (global) batch: under `jax.jit` with the batch sharded over
(data, fsdp) XLA inserts the gathers the [B, B] similarity matrix needs.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import optax

from unclip_jax.clip.model import normalize

MAX_LOGIT_SCALE = 100.0


def contrastive_loss(text_embeds, image_embeds, logit_scale, negatives=None):
    """text_embeds, image_embeds [B, D] (unnormalised; pair i ↔ i), logit_scale [] (log of the
    temperature inverse, exp'd and clamped to ≤ 100 as in CLIP), negatives [N, D] or None:
    extra text embeddings (hard negatives) that every image is also scored against in the
    image→text term (the text→image term is unchanged)
    → (loss [] float32 = mean of image→text and text→image cross entropy,
       metrics dict(loss, accuracy_i2t, accuracy_t2i, logit_scale = the scale used; with
       negatives also accuracy_hard = fraction of images whose caption beats every negative))."""
    t = normalize(text_embeds)
    i = normalize(image_embeds)
    scale = jnp.exp(jnp.minimum(jnp.asarray(logit_scale, jnp.float32),
                                math.log(MAX_LOGIT_SCALE)))
    logits_i2t = scale * i @ t.T                       # [B images, B texts]
    labels = jnp.arange(logits_i2t.shape[0])
    loss_t2i = optax.softmax_cross_entropy_with_integer_labels(logits_i2t.T, labels).mean()
    metrics = {}
    if negatives is not None:
        logits_neg = scale * i @ normalize(negatives).T          # [B images, N negatives]
        positive = jnp.diagonal(logits_i2t)
        metrics["accuracy_hard"] = jnp.mean(positive > logits_neg.max(axis=1))
        logits_i2t_all = jnp.concatenate([logits_i2t, logits_neg], axis=1)
    else:
        logits_i2t_all = logits_i2t
    loss_i2t = optax.softmax_cross_entropy_with_integer_labels(logits_i2t_all, labels).mean()
    loss = 0.5 * (loss_i2t + loss_t2i)
    metrics.update(
        loss=loss,
        accuracy_i2t=jnp.mean(jnp.argmax(logits_i2t, axis=1) == labels),
        accuracy_t2i=jnp.mean(jnp.argmax(logits_i2t, axis=0) == labels),
        logit_scale=scale,
    )
    return loss, metrics

"""Dummy inputs of each stage's `model.init`: a batch of 2 whose shapes come from the config
(values do not matter; `jax.eval_shape` and the sharded init only read shapes)."""
from __future__ import annotations

import jax.numpy as jnp


def clip_inputs(config):
    t, v = config.model.text, config.model.vision
    return {"tokens": jnp.zeros((2, int(t.context_length)), jnp.int32),
            "images": jnp.zeros((2, int(v.image_size), int(v.image_size), 3), jnp.float32)}


def prior_inputs(config):
    m = config.model
    D, L, W = int(m.embed_dim), int(m.text_len), int(m.text_width)
    return {"x_t": jnp.zeros((2, D)), "t": jnp.zeros((2,), jnp.int32), "z_t": jnp.ones((2, D)),
            "text_states": jnp.zeros((2, L, W)), "text_mask": jnp.ones((2, L), bool)}


def ar_prior_inputs(config):
    m = config.model
    D, L, W, K = int(m.embed_dim), int(m.text_len), int(m.text_width), int(m.pca_components)
    return {"tokens": jnp.zeros((2, K + 1), jnp.int32), "z_t": jnp.ones((2, D)),
            "text_states": jnp.zeros((2, L, W)), "text_mask": jnp.ones((2, L), bool)}


def unet_inputs(config):
    m, data = config.model, config.data
    if int(m.get("low_res_channels", 0)):
        crop = int(data.crop_size) or int(data.image_size)
        r = int(data.image_size) // int(data.low_res_size)
        return {"x_t": jnp.zeros((2, crop, crop, 3)), "t": jnp.zeros((2,), jnp.int32),
                "low_res": jnp.zeros((2, crop // r, crop // r, 3))}
    S = int(data.image_size)
    out = {"x_t": jnp.zeros((2, S, S, 3)), "t": jnp.zeros((2,), jnp.int32)}
    if int(m.get("embed_dim", 0)):
        out["z_i"] = jnp.zeros((2, int(m.embed_dim)))
    if int(m.get("text_width", 0)):
        out["text_states"] = jnp.zeros((2, int(m.text_len), int(m.text_width)))
        out["text_mask"] = jnp.ones((2, int(m.text_len)), bool)
    if int(m.get("caption_vocab", 0)):
        out["caption_ids"] = jnp.zeros((2, int(m.text_len)), jnp.int32)
    return out

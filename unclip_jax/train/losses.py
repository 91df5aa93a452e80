"""Per-stage training losses (the stage registry, `unclip_jax.train.registry`, pairs each with
its model).

Every loss has the signature `(params, batch, key, model, config, extras) -> (loss, metrics)`:
params is the plain 'params' collection, batch a dict of global arrays (keys per stage, see
`unclip_jax.data.pipeline`), key a typed per-step key, extras the stage's fitted extras
(prior embedding statistics, AR codec) or {}. Losses and metrics are float32 scalars; all
diffusion math runs in float32 (`unclip_jax.diffusion`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


# ----------------------------------------------------------------------------- helpers
def bernoulli(key, p: float, batch: int):
    """[batch] bool, True with probability p (all False when p <= 0)."""
    if p <= 0:
        return jnp.zeros((batch,), bool)
    return jax.random.bernoulli(key, p, (batch,))


def _variables(params):
    return {"params": params}


def sample_timesteps(key, batch: int, T: int, band=(), band_p: float = 0.0):
    """Training timesteps t [batch] int32 in [0, T).

    Uniform, or — with `band = (lo, hi)` and `band_p > 0` — a mixture: each t is drawn from
    [lo, hi) with probability band_p and from all of [0, T) otherwise, so the band's steps get
    band_p + (1 − band_p)·(hi − lo)/T of the updates instead of (hi − lo)/T. This reweights
    the loss toward the band (an importance choice, like EDM's log-normal σ), which is how a
    model that has learned coarse layout can spend its steps where detail forms. band_p = 0
    draws exactly what the uniform sampler does (same key → same t).
    """
    if band_p <= 0:
        return jax.random.randint(key, (batch,), 0, T)
    lo, hi = (int(b) for b in band)
    k_pick, k_band, k_all = jax.random.split(key, 3)
    in_band = jax.random.bernoulli(k_pick, band_p, (batch,))
    return jnp.where(in_band, jax.random.randint(k_band, (batch,), lo, hi),
                     jax.random.randint(k_all, (batch,), 0, T))


def check_t_band(band, band_p: float, T: int) -> None:
    """UserError unless `train.t_band` / `train.t_band_p` describe a usable mixture."""
    from unclip_jax.errors import UserError
    if not 0.0 <= band_p <= 1.0:
        raise UserError(f"train.t_band_p must be in [0, 1], got {band_p}")
    if band_p == 0:
        return
    if len(band) != 2 or not 0 <= int(band[0]) < int(band[1]) <= T:
        raise UserError(f"train.t_band must be (lo, hi) with 0 <= lo < hi <= diffusion.timesteps"
                        f" = {T}, got {tuple(band)}")


def _diffusion_draws(key, config, batch: int):
    """(t [B] int32 in [0, T) (`sample_timesteps` with train.t_band / t_band_p), noise key,
    dropout key, conditioning-drop keys)."""
    kt, kn, kd, k1, k2 = jax.random.split(key, 5)
    T = int(config.diffusion.timesteps)
    band, band_p = tuple(config.train.get("t_band", ())), float(config.train.get("t_band_p", 0.0))
    check_t_band(band, band_p, T)
    t = sample_timesteps(kt, batch, T, band, band_p)
    return t, kn, kd, k1, k2


def quartile_means(values, t, T: int) -> dict:
    """Mean of per-example `values` [B] in each timestep quartile of [0, T): {'q0'..'q3'}
    (NaN for a quartile with no examples in the batch)."""
    q = jnp.clip((t * 4) // T, 0, 3)
    out = {}
    for i in range(4):
        m = (q == i).astype(jnp.float32)
        n = m.sum()
        out[f"loss_q{i}"] = jnp.where(n > 0, (values * m).sum() / jnp.maximum(n, 1.0), jnp.nan)
    return out


# -------------------------------------------------------------------------------- CLIP
def clip_loss(params, batch, key, model, config, extras):
    """Symmetric InfoNCE on the (global) batch of images [B,S,S,3] in [-1,1] and tokens [B,L].
    With 'neg_tokens' [B,K,L] (hard-negative captions, see `data.hard_negatives`) each image is
    also scored against all B·K of them in its image→text cross entropy."""
    from unclip_jax.clip.loss import contrastive_loss
    from unclip_jax.clip.preprocess import preprocess
    images = preprocess(batch["image"], model.image_size)
    tokens = batch["tokens"]
    neg = batch.get("neg_tokens")
    B = tokens.shape[0]
    if neg is not None:
        tokens = jnp.concatenate([tokens, neg.reshape(-1, neg.shape[-1])], axis=0)
    text, image, scale = model.apply(_variables(params), tokens, images)
    loss, metrics = contrastive_loss(text[:B], image, scale,
                                     negatives=None if neg is None else text[B:])
    metrics = {k: v for k, v in metrics.items() if k != "loss"}
    return loss, metrics


# ------------------------------------------------------------------------ diffusion prior
def prior_loss(params, batch, key, model, config, extras):
    """MSE between the predicted and true x0 = normalised z_i [B, D]; text (tokens and z_t)
    dropped with p = train.text_drop. Metric: cosine of the predicted x0 (denormalised) to z_i."""
    from unclip_jax.diffusion import gaussian as G
    from unclip_jax.diffusion.schedules import from_config
    from unclip_jax.models.prior import cosine, denormalize_embed, normalize_embed
    stats = extras.get("stats")
    z_i = batch["z_i"].astype(jnp.float32)
    B = z_i.shape[0]
    sched = from_config(config.diffusion)
    t, kn, kd, kdrop, _ = _diffusion_draws(key, config, B)
    x0 = normalize_embed(z_i, config.model, stats)
    x_t = G.q_sample(sched, x0, t, jax.random.normal(kn, x0.shape, jnp.float32))
    drop = bernoulli(kdrop, float(config.train.text_drop), B)
    pred = model.apply(_variables(params), x_t, sched.timesteps[t], batch["z_t"],
                       batch["text_states"], batch["text_mask"], drop, deterministic=False,
                       rngs={"dropout": kd}).astype(jnp.float32)
    per_example = jnp.mean((pred - x0) ** 2, axis=-1)
    cos = cosine(denormalize_embed(pred, config.model, stats), z_i)
    return per_example.mean(), {"cosine": cos.mean(),
                                **quartile_means(per_example, t, sched.num_steps)}


# ------------------------------------------------------------------------------ AR prior
def ar_prior_loss(params, batch, key, model, config, extras):
    """Cross-entropy of the PCA-quantised z_i tokens (codec fitted before training)."""
    from unclip_jax.models.ar_codec import training_tokens
    from unclip_jax.models.ar_prior import ar_loss
    codec = extras["codec"]
    B = batch["z_i"].shape[0]
    kdrop, kd = jax.random.split(key)
    tokens = training_tokens(codec, batch["z_i"], batch["z_t"])
    drop = bernoulli(kdrop, float(config.train.text_drop), B)
    logits = model.apply(_variables(params), tokens, batch["z_t"], batch["text_states"],
                         batch["text_mask"], drop, deterministic=False, rngs={"dropout": kd})
    acc = jnp.mean(jnp.argmax(logits, -1) == tokens[:, 1:])
    return ar_loss(logits, tokens), {"token_accuracy": acc}


# ----------------------------------------------------------------------- decoder / upsampler
def _unet_cond(batch, config, key, B):
    """UNet conditioning kwargs from the batch: decoder z_i/text (with CFG drops) or low_res."""
    if "low_res" in batch:
        return {"low_res": batch["low_res"]}
    k1, k2 = jax.random.split(key)
    out = {"z_i": batch["z_i"], "text_states": batch["text_states"],
           "text_mask": batch["text_mask"],
           "drop_text": bernoulli(k1, float(config.train.text_drop), B),
           "drop_image_embed": bernoulli(k2, float(config.train.image_embed_drop), B)}
    if "caption_ids" in batch:       # a decoder with its own caption encoder
        out["caption_ids"] = batch["caption_ids"]
    return out


def _pixel_weights(x0, config):
    """Per-pixel weights of the ε/x0/v error [B, H, W, 1] from `train.object_weight` (the
    object region of a flat-background scene weighted w, `diffusion.object_region`), or None
    (w = 1: the plain mean over pixels)."""
    from unclip_jax.diffusion.object_region import object_weights
    from unclip_jax.errors import UserError
    w = float(config.train.get("object_weight", 1.0))
    if not w > 0:
        raise UserError(f"train.object_weight must be > 0 (1 = off), got {w}")
    return None if w == 1.0 else object_weights(x0, w)


def unet_loss(params, batch, key, model, config, extras):
    """Diffusion loss of the config's predict/variance/loss on images [B,H,W,3] in [-1,1].

    Decoder: conditioned on z_i (dropped with p = train.image_embed_drop) and the caption
    tokens (dropped with p = train.text_drop). Upsampler: conditioned on the degraded low-res
    crop (`batch['low_res']`). `train.object_weight` w ≠ 1 weights the squared error of the
    object region (pixels off the flat background, grown by one) w times the background's.
    Metrics: mse (weighted as the loss), vlb (learned variance), loss by timestep quartile.
    """
    from unclip_jax.diffusion.losses import training_losses
    from unclip_jax.diffusion.schedules import from_config
    d = config.diffusion
    x0 = batch["image"].astype(jnp.float32)
    B = x0.shape[0]
    sched = from_config(d)
    t, kn, kd, kc, _ = _diffusion_draws(key, config, B)
    cond = _unet_cond(batch, config, kc, B)

    def model_fn(x_t, t_model):
        return model.apply(_variables(params), x_t, t_model, train=True,
                           rngs={"dropout": kd}, **cond)

    terms = training_losses(sched, model_fn, x0, t, jax.random.normal(kn, x0.shape, jnp.float32),
                            predict=d.predict, variance=d.variance, loss=d.loss,
                            hybrid_lambda=float(d.hybrid_lambda),
                            weight=_pixel_weights(x0, config))
    metrics = {k: v.mean() for k, v in terms.items() if k != "loss"}
    metrics.update(quartile_means(terms["loss"], t, sched.num_steps))
    return terms["loss"].mean(), metrics

"""Per-stage losses and the built-in stage entries of the registry (`stages.REGISTRY`).

Every loss has the signature `(params, batch, key, model, config, extras) -> (loss, metrics)`:
params is the plain 'params' collection, batch a dict of global arrays (keys per stage, see
`unclip_jax.data.pipeline`), key a typed per-step key, extras the stage's fitted extras
(prior embedding statistics, AR codec) or {}. Losses and metrics are float32 scalars; all
diffusion math runs in float32 (`unclip_jax.diffusion`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.train.stages import Stage


# ----------------------------------------------------------------------------- helpers
def model_section(config):
    """`config.model` with `dtype` set to the compute dtype `config.train.dtype`."""
    mc = config.model.copy_and_resolve_references()
    with mc.unlocked():
        mc.dtype = str(config.train.get("dtype", None) or mc.get("dtype", "float32"))
    return mc


def bernoulli(key, p: float, batch: int):
    """[batch] bool, True with probability p (all False when p <= 0)."""
    if p <= 0:
        return jnp.zeros((batch,), bool)
    return jax.random.bernoulli(key, p, (batch,))


def _variables(params):
    return {"params": params}


def _diffusion_draws(key, config, batch: int):
    """(t [B] int32 uniform in [0, T), noise key, dropout key, conditioning-drop keys)."""
    kt, kn, kd, k1, k2 = jax.random.split(key, 5)
    t = jax.random.randint(kt, (batch,), 0, int(config.diffusion.timesteps))
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


def _collect(make_iter, keys, n: int) -> dict:
    """Concatenate `keys` of batches from a fresh iterator until n rows (numpy)."""
    it, got, rows = make_iter(), {k: [] for k in keys}, 0
    while rows < n:
        b = next(it)
        for k in keys:
            got[k].append(np.asarray(b[k]))
        rows += len(b[keys[0]])
    return {k: np.concatenate(v)[:n] for k, v in got.items()}


def _allgather_rows(x: np.ndarray) -> np.ndarray:
    """Rows from every process (so fitted statistics are identical on all of them)."""
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


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


def _build_clip(config):
    from unclip_jax.clip.model import CLIP
    return CLIP.from_config(model_section(config))


def _clip_inputs(config):
    t, v = config.model.text, config.model.vision
    return {"tokens": jnp.zeros((2, int(t.context_length)), jnp.int32),
            "images": jnp.zeros((2, int(v.image_size), int(v.image_size), 3), jnp.float32)}


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


def _build_prior(config):
    from unclip_jax.models.prior import from_config
    return from_config(model_section(config))


def _prior_inputs(config):
    m = config.model
    D, L, W = int(m.embed_dim), int(m.text_len), int(m.text_width)
    return {"x_t": jnp.zeros((2, D)), "t": jnp.zeros((2,), jnp.int32), "z_t": jnp.ones((2, D)),
            "text_states": jnp.zeros((2, L, W)), "text_mask": jnp.ones((2, L), bool)}


def fit_prior_stats(config, make_iter) -> dict:
    """Per-dimension mean/std of training z_i, only for model.normalize == 'meanstd'."""
    if config.model.get("normalize", "scale") != "meanstd":
        return {}
    from unclip_jax.models.prior import embedding_stats
    n = max(2048, 16 * int(config.model.embed_dim))
    z = _allgather_rows(_collect(make_iter, ["z_i"], n)["z_i"])
    return {"stats": embedding_stats(z)}


# ------------------------------------------------------------------------------ AR prior
def ar_prior_loss(params, batch, key, model, config, extras):
    """Cross-entropy of the PCA-quantised z_i tokens (codec fitted before training)."""
    from unclip_jax.models.ar_prior import ar_loss, training_tokens
    codec = extras["codec"]
    B = batch["z_i"].shape[0]
    kdrop, kd = jax.random.split(key)
    tokens = training_tokens(codec, batch["z_i"], batch["z_t"])
    drop = bernoulli(kdrop, float(config.train.text_drop), B)
    logits = model.apply(_variables(params), tokens, batch["z_t"], batch["text_states"],
                         batch["text_mask"], drop, deterministic=False, rngs={"dropout": kd})
    acc = jnp.mean(jnp.argmax(logits, -1) == tokens[:, 1:])
    return ar_loss(logits, tokens), {"token_accuracy": acc}


def _build_ar_prior(config):
    from unclip_jax.models.ar_prior import from_config
    return from_config(model_section(config))


def _ar_inputs(config):
    m = config.model
    D, L, W, K = int(m.embed_dim), int(m.text_len), int(m.text_width), int(m.pca_components)
    return {"tokens": jnp.zeros((2, K + 1), jnp.int32), "z_t": jnp.ones((2, D)),
            "text_states": jnp.zeros((2, L, W)), "text_mask": jnp.ones((2, L), bool)}


def fit_ar_codec(config, make_iter) -> dict:
    """PCA + per-component quantiser + dot-token quantiser from training (z_i, z_t) pairs."""
    from unclip_jax.models.ar_prior import fit_codec
    m = config.model
    n = max(2048, 8 * int(m.num_buckets), 4 * int(m.embed_dim))
    got = _collect(make_iter, ["z_i", "z_t"], n)
    z_i, z_t = _allgather_rows(got["z_i"]), _allgather_rows(got["z_t"])
    return {"codec": fit_codec(z_i, z_t, int(m.pca_components), int(m.num_buckets),
                               int(m.dot_buckets))}


# ----------------------------------------------------------------------- decoder / upsampler
def _unet_cond(batch, config, key, B):
    """UNet conditioning kwargs from the batch: decoder z_i/text (with CFG drops) or low_res."""
    if "low_res" in batch:
        return {"low_res": batch["low_res"]}
    k1, k2 = jax.random.split(key)
    return {"z_i": batch["z_i"], "text_states": batch["text_states"],
            "text_mask": batch["text_mask"],
            "drop_text": bernoulli(k1, float(config.train.text_drop), B),
            "drop_image_embed": bernoulli(k2, float(config.train.image_embed_drop), B)}


def unet_loss(params, batch, key, model, config, extras):
    """Diffusion loss of the config's predict/variance/loss on images [B,H,W,3] in [-1,1].

    Decoder: conditioned on z_i (dropped with p = train.image_embed_drop) and the caption
    tokens (dropped with p = train.text_drop). Upsampler: conditioned on the degraded low-res
    crop (`batch['low_res']`). Metrics: mse, vlb (learned variance), loss by timestep quartile.
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
                            hybrid_lambda=float(d.hybrid_lambda))
    metrics = {k: v.mean() for k, v in terms.items() if k != "loss"}
    metrics.update(quartile_means(terms["loss"], t, sched.num_steps))
    return terms["loss"].mean(), metrics


def _build_unet(config):
    from unclip_jax.models.unet import UNet
    return UNet.from_config(model_section(config))


def _unet_inputs(config):
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
    return out


SAMPLE_COUNT = 8       # images per sample grid
SAMPLE_STEPS = 10      # DDIM steps of the preview sampler


def unet_sample(params, key, model, config, batch, extras):
    """A cheap preview: DDIM (η = 0, `SAMPLE_STEPS` steps, no guidance) for the first
    `SAMPLE_COUNT` examples' conditioning. → images [N, H, W, 3] in [-1, 1]."""
    from unclip_jax.diffusion.samplers import ddim_sample
    from unclip_jax.diffusion.schedules import from_config
    d = config.diffusion
    n = min(SAMPLE_COUNT, batch["image"].shape[0])
    sub = {k: v[:n] for k, v in batch.items()}
    cond = ({"low_res": sub["low_res"]} if "low_res" in sub else
            {"z_i": sub["z_i"], "text_states": sub["text_states"], "text_mask": sub["text_mask"]})
    sched = from_config(d, f"ddim{min(SAMPLE_STEPS, int(d.timesteps))}")

    @jax.jit
    def run(params, cond, key):
        fn = lambda x, t: model.apply(_variables(params), x, t, **cond)
        return ddim_sample(fn, sched, sub["image"].shape, key, predict=d.predict,
                           variance=d.variance, clip_denoised=True)
    return run(params, cond, key)


# ------------------------------------------------------------------------------ registry
def builtin_stages() -> list[Stage]:
    unet = dict(build_model=_build_unet, init_inputs=_unet_inputs, loss=unet_loss,
                sample=unet_sample)
    return [
        Stage("clip", _build_clip, _clip_inputs, clip_loss),
        Stage("prior", _build_prior, _prior_inputs, prior_loss, prepare=fit_prior_stats),
        Stage("ar_prior", _build_ar_prior, _ar_inputs, ar_prior_loss, prepare=fit_ar_codec),
        Stage("decoder", **unet),
        Stage("upsampler1", **unet),
        Stage("upsampler2", **unet),
    ]

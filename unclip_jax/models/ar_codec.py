"""The autoregressive prior's codec: CLIP image embeddings ↔ discrete tokens
(`unclip_jax.models.ar_prior` models the token sequence).

Codec (fitted once on training embeddings, numpy; applied with jnp so it runs under jit):
  z_i [B, D] ─PCA→ coefficients [B, K] ─per-component quantiles→ tokens [B, K] in [0, num_buckets)
  and a "dot token" in [0, dot_buckets): the cosine z_i·z_t quantised by its own training
  quantiles. The model reads the sequence [dot token, component tokens...].

  * PCA (`fit_pca`): SVD of the centred data. The *relative* reconstruction MSE is
    E‖z − ẑ‖² / E‖z − mean‖² (the unexplained fraction of variance; paper: 319 of 1024
    dimensions keep it under 1%), see `pca_relative_mse` / `num_components_for`.
  * Quantiser (`fit_quantizer`): for each component, num_buckets − 1 edges at the training
    quantiles j/num_buckets, so every bucket holds an equal share of the training data. A
    value's token is the number of edges ≤ it. Each bucket's centre (used to decode) is the mean
    of the training values that fell in it; an empty bucket (ties) uses the midpoint of its edges.
  * At sampling the dot token is drawn uniformly from the buckets at or above the
    `dot_quantile` quantile; as buckets carry equal training mass this samples the top
    (1 − dot_quantile) part of the training distribution of z_i·z_t (paper: the top half).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.errors import UserError
from unclip_jax.models.prior import cosine

# ----------------------------------------------------------------------------- PCA


def fit_pca(z_i, num_components: int) -> dict[str, np.ndarray]:
    """PCA of z_i [N, D] → {'mean': [D], 'components': [K, D] (orthonormal rows),
    'explained_variance': [K], 'total_variance': []} (float32 numpy; variances per example)."""
    z = np.asarray(z_i, np.float64)
    if z.ndim != 2:
        raise UserError(f"fit_pca needs z_i of shape [N, D], got {z.shape}")
    N, D = z.shape
    if not 1 <= num_components <= min(N, D):
        raise UserError(f"num_components={num_components} must be between 1 and "
                        f"min(N, D)={min(N, D)}; lower model.pca_components or use more embeddings")
    mean = z.mean(0)
    _, s, vt = np.linalg.svd(z - mean, full_matrices=False)
    var = s ** 2 / N
    return {"mean": mean.astype(np.float32),
            "components": vt[:num_components].astype(np.float32),
            "explained_variance": var[:num_components].astype(np.float32),
            "total_variance": np.float32(var.sum())}


def pca_project(pca, z):
    """z [..., D] → coefficients [..., K]."""
    mean = jnp.asarray(pca["mean"], jnp.float32)
    return (jnp.asarray(z, jnp.float32) - mean) @ jnp.asarray(pca["components"], jnp.float32).T


def pca_reconstruct(pca, coeffs):
    """coefficients [..., K] → z [..., D]."""
    comps = jnp.asarray(pca["components"], jnp.float32)
    return jnp.asarray(coeffs, jnp.float32) @ comps + jnp.asarray(pca["mean"], jnp.float32)


def pca_relative_mse(pca, z) -> float:
    """E‖z − reconstruct(project(z))‖² / E‖z − mean‖² over z [N, D] (0 = perfect)."""
    z = jnp.asarray(z, jnp.float32)
    err = jnp.sum((z - pca_reconstruct(pca, pca_project(pca, z))) ** 2)
    total = jnp.sum((z - jnp.asarray(pca["mean"], jnp.float32)) ** 2)
    return float(err / jnp.maximum(total, 1e-30))


def num_components_for(z_i, max_relative_mse: float = 0.01) -> int:
    """Fewest PCA components whose relative reconstruction MSE on z_i [N, D] is ≤ the target."""
    z = np.asarray(z_i, np.float64)
    s = np.linalg.svd(z - z.mean(0), compute_uv=False) ** 2
    unexplained = 1.0 - np.cumsum(s) / s.sum()
    return int(np.argmax(unexplained <= max_relative_mse) + 1)


# ----------------------------------------------------------------------------- quantiser


def quantize(quant, x):
    """Values x [..., K] → tokens [..., K] int32 (number of component edges ≤ x)."""
    edges = jnp.asarray(quant["edges"], jnp.float32)        # [K, nb - 1]
    return jnp.sum(jnp.asarray(x, jnp.float32)[..., None] >= edges, axis=-1).astype(jnp.int32)


def dequantize(quant, tokens):
    """Tokens [..., K] → bucket centres [..., K] float32."""
    centers = jnp.asarray(quant["centers"], jnp.float32)    # [K, nb]
    K = centers.shape[0]
    return centers[jnp.arange(K), jnp.asarray(tokens)]


def fit_quantizer(coeffs, num_buckets: int) -> dict[str, np.ndarray]:
    """Per-component quantile buckets from training values coeffs [N, K].

    → {'edges': [K, num_buckets − 1], 'centers': [K, num_buckets]} float32 numpy.
    """
    c = np.asarray(coeffs, np.float64)
    if c.ndim != 2 or c.shape[0] < 2:
        raise UserError(f"fit_quantizer needs coeffs of shape [N>=2, K], got {c.shape}")
    if num_buckets < 2:
        raise UserError(f"num_buckets={num_buckets}; it must be at least 2")
    K = c.shape[1]
    edges = np.quantile(c, np.arange(1, num_buckets) / num_buckets, axis=0).T      # [K, nb-1]
    tokens = (c[..., None] >= edges[None]).sum(-1)                                  # [N, K]
    sums = np.zeros((K, num_buckets))
    counts = np.zeros((K, num_buckets))
    comp = np.broadcast_to(np.arange(K), tokens.shape)
    np.add.at(sums, (comp, tokens), c)
    np.add.at(counts, (comp, tokens), 1.0)
    lo = np.concatenate([c.min(0)[:, None], edges], axis=1)                         # [K, nb]
    hi = np.concatenate([edges, c.max(0)[:, None]], axis=1)
    centers = np.where(counts > 0, sums / np.maximum(counts, 1), 0.5 * (lo + hi))
    return {"edges": edges.astype(np.float32), "centers": centers.astype(np.float32)}


# ----------------------------------------------------------------------------- codec


def fit_codec(z_i, z_t, num_components: int, num_buckets: int, dot_buckets: int) -> dict:
    """Fit PCA, component quantiser and dot-product quantiser on training pairs z_i, z_t [N, D].

    → {'pca': fit_pca(...), 'quant': fit_quantizer(...), 'dot': fit_quantizer(...) over the
    cosine z_i·z_t (one component)}. A pytree of numpy arrays (save it with the params).
    """
    z_i = np.asarray(z_i, np.float32)
    pca = fit_pca(z_i, num_components)
    quant = fit_quantizer(np.asarray(pca_project(pca, z_i)), num_buckets)
    dots = np.asarray(cosine(z_i, np.asarray(z_t, np.float32)))[:, None]
    return {"pca": pca, "quant": quant, "dot": fit_quantizer(dots, dot_buckets)}


def encode_tokens(codec, z_i):
    """z_i [B, D] → component tokens [B, K] int32."""
    return quantize(codec["quant"], pca_project(codec["pca"], z_i))


def decode_tokens(codec, tokens):
    """Component tokens [B, K] → z_i [B, D] float32."""
    return pca_reconstruct(codec["pca"], dequantize(codec["quant"], tokens))


def dot_tokens(codec, z_i, z_t):
    """Quantised cosine z_i·z_t: [B, D], [B, D] → [B] int32."""
    return quantize(codec["dot"], cosine(z_i, z_t)[:, None])[:, 0]


def training_tokens(codec, z_i, z_t):
    """The model's token sequence [B, K + 1]: dot token first, then the K component tokens."""
    return jnp.concatenate([dot_tokens(codec, z_i, z_t)[:, None], encode_tokens(codec, z_i)],
                           axis=1)


def sample_dot_tokens(key, batch: int, dot_buckets: int, dot_quantile: float = 0.5):
    """[batch] dot tokens uniform over buckets ≥ the `dot_quantile` quantile (equal-mass buckets,
    so this draws from the top (1 − dot_quantile) of the training distribution)."""
    if not 0.0 <= dot_quantile < 1.0:
        raise UserError(f"dot_quantile={dot_quantile} must be in [0, 1) (paper: 0.5)")
    low = min(int(math.ceil(dot_quantile * dot_buckets)), dot_buckets - 1)
    return jax.random.randint(key, (batch,), low, dot_buckets, dtype=jnp.int32)


def check_codec(codec, model: "ARPrior"):
    """UserError unless the codec's sizes match the model config."""
    K, D = np.shape(codec["pca"]["components"])
    nb = np.shape(codec["quant"]["centers"])[1]
    nd = np.shape(codec["dot"]["centers"])[1]
    if (K, D, nb, nd) != (model.pca_components, model.embed_dim, model.num_buckets,
                          model.dot_buckets):
        raise UserError(
            f"codec (components={K}, embed_dim={D}, buckets={nb}, dot_buckets={nd}) does not "
            f"match the model config (pca_components={model.pca_components}, embed_dim="
            f"{model.embed_dim}, num_buckets={model.num_buckets}, dot_buckets="
            f"{model.dot_buckets}); refit with fit_codec using the config's sizes")

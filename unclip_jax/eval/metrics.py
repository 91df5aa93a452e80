"""Evaluation metrics as pure functions of feature arrays (host numpy / jax arrays in, floats
or numpy arrays out).

Conventions: N examples, D-dimensional features (CLIP embeddings, or a classifier's penultimate
features). Per-example metrics return arrays [N] so that `bootstrap_ci` can put a confidence
interval on their mean; the reported CLIP score is 100 × the mean cosine, as commonly quoted.
"""
from __future__ import annotations

import warnings
from typing import Callable

import jax
import numpy as np
import scipy.linalg

from unclip_jax.errors import UserError


def _features(x, name: str, ndim: int = 2) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != ndim:
        raise UserError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise UserError(f"{name} contains NaN or Inf; check the images/embeddings it came from")
    return x


def l2_normalize(x, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """x / ‖x‖ along `axis` (zero vectors stay zero)."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def cosine(a, b) -> np.ndarray:
    """Row-wise cosine similarity: a [N, D], b [N, D] → [N] in [-1, 1]."""
    a, b = _features(a, "a"), _features(b, "b")
    if a.shape != b.shape:
        raise UserError(f"cosine needs equal shapes, got {a.shape} and {b.shape}")
    return np.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def clip_score(image_embeds, text_embeds) -> dict[str, np.ndarray | float]:
    """CLIP score of image/caption pairs in the project's CLIP.

    image_embeds [N, D], text_embeds [N, D] (unnormalised CLIP embeddings, row i = pair i)
    → {'cosine': [N] raw cosines, 'score': 100 × mean cosine (float)}.
    """
    cos = cosine(image_embeds, text_embeds)
    return {"cosine": cos, "score": float(100.0 * cos.mean())}


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """features [N, D] (N ≥ 2) → (mean [D], unbiased covariance [D, D]), float64."""
    f = _features(features, "features")
    if f.shape[0] < 2:
        raise UserError(f"a covariance needs at least 2 feature vectors, got {f.shape[0]}; "
                        "evaluate more prompts or images per prompt")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance_from_stats(mu1, cov1, mu2, cov2) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2):

        ‖mu1 − mu2‖² + tr(cov1 + cov2 − 2 (cov1 cov2)^{1/2}).

    The matrix square root comes from scipy.linalg.sqrtm; if it is not finite or inaccurate
    (singular covariances: fewer samples than dimensions) the covariances get a small diagonal
    offset (1e-6), and an imaginary part from round-off is dropped (a large one raises: the
    inputs are not covariance matrices).
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    cov1, cov2 = np.atleast_2d(cov1).astype(np.float64), np.atleast_2d(cov2).astype(np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != mu1.shape * 2:
        raise UserError(f"Fréchet distance needs matching statistics, got means {mu1.shape}, "
                        f"{mu2.shape} and covariances {cov1.shape}, {cov2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(cov1 @ cov2)
    if covmean is None:
        offset = np.eye(cov1.shape[0]) * 1e-6
        covmean = _sqrtm((cov1 + offset) @ (cov2 + offset), tolerance=None)
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3 * max(1.0, np.abs(covmean).max())):
            raise ValueError(f"sqrtm has a large imaginary part "
                             f"({np.abs(covmean.imag).max():.3g}); are these covariances?")
        covmean = covmean.real
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))


def _sqrtm(m: np.ndarray, tolerance: float | None = 1e-4):
    """scipy.linalg.sqrtm(m), or None if it is not finite or ‖s·s − m‖ > tolerance·‖m‖."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(m)
    if tolerance is None:
        return root
    if not np.all(np.isfinite(root)) or \
            np.linalg.norm(root @ root - m) > tolerance * max(np.linalg.norm(m), 1e-30):
        return None
    return root


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance between Gaussians fitted to features_a [N, D] and features_b [M, D]."""
    return frechet_distance_from_stats(*gaussian_stats(features_a), *gaussian_stats(features_b))


def per_prompt_diversity(features, metric: str = "cosine") -> np.ndarray:
    """Mean pairwise distance among the K images of each prompt.

    features [P, K, D] (prompt-major, K ≥ 2) → [P]. metric 'cosine' (1 − cos, in [0, 2]) or
    'l2' (Euclidean). Identical images give 0.
    """
    f = _features(features, "features", ndim=3)
    p, k, _ = f.shape
    if k < 2:
        raise UserError(f"diversity needs at least 2 images per prompt, got {k}; "
                        "raise images_per_prompt")
    if metric == "cosine":
        g = l2_normalize(f)
        dist = 1.0 - np.einsum("pid,pjd->pij", g, g)
    elif metric == "l2":
        dist = np.linalg.norm(f[:, :, None] - f[:, None, :], axis=-1)
    else:
        raise UserError(f"unknown diversity metric {metric!r}; choose 'cosine' or 'l2'")
    off = ~np.eye(k, dtype=bool)
    return dist[:, off].mean(axis=1)


def prior_cosine(z_sampled, z_true) -> np.ndarray:
    """Cosine of each sampled image embedding to the true one: [N, D], [N, D] → [N]."""
    return cosine(z_sampled, z_true)


def retrieval_top1(z_sampled, z_true) -> np.ndarray:
    """Top-1 retrieval: is true embedding i the nearest (cosine) of all N true embeddings to
    sampled embedding i? [N, D], [N, D] → bool [N]."""
    s, t = l2_normalize(_features(z_sampled, "z_sampled")), l2_normalize(_features(z_true, "z_true"))
    if s.shape != t.shape:
        raise UserError(f"retrieval needs equal shapes, got {s.shape} and {t.shape}")
    return np.argmax(s @ t.T, axis=1) == np.arange(s.shape[0])


def bootstrap_ci(values, key, *, num_resamples: int = 1000,
                 confidence: float = 0.95) -> dict[str, float]:
    """Percentile-bootstrap confidence interval of the mean of `values` [N].

    key: a typed jax key (fixed → reproducible interval). Returns {'mean', 'lo', 'hi', 'n'}.
    """
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size == 0:
        raise UserError("no values to average; evaluate at least one prompt")
    if not 0.0 < confidence < 1.0:
        raise UserError(f"confidence={confidence} must lie in (0, 1), e.g. 0.95")
    idx = np.asarray(jax.random.randint(key, (int(num_resamples), v.size), 0, v.size))
    means = v[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return {"mean": float(v.mean()), "lo": float(lo), "hi": float(hi), "n": int(v.size)}


def bootstrap_statistic(fn: Callable[..., float], arrays: tuple, key, *,
                        num_resamples: int = 100, confidence: float = 0.95) -> dict[str, float]:
    """Percentile bootstrap of a set statistic `fn(*arrays)` (e.g. a Fréchet distance),
    resampling the rows of each array independently with its own key.

    Returns {'value': fn on the full sets, 'lo', 'hi', 'n': rows of the first array}.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    keys = jax.random.split(key, len(arrays))
    idx = [np.asarray(jax.random.randint(k, (int(num_resamples), a.shape[0]), 0, a.shape[0]))
           for k, a in zip(keys, arrays)]
    stats = np.array([fn(*(a[i[r]] for a, i in zip(arrays, idx)))
                      for r in range(int(num_resamples))])
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return {"value": float(fn(*arrays)), "lo": float(lo), "hi": float(hi),
            "n": int(arrays[0].shape[0])}

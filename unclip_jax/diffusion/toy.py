"""A Gaussian mixture whose exact noise predictor is closed form (for the demo and tests).

Data x0 ~ Σ_k π_k N(μ_k, Σ_k) in D dims. Under q(x_t | x0) = N(√ᾱ x0, (1−ᾱ) I) the marginal is
p(x_t) = Σ_k π_k N(√ᾱ μ_k, ᾱ Σ_k + (1−ᾱ) I), and the MSE-optimal ε-predictor is
ε*(x_t) = −√(1−ᾱ) ∇ log p(x_t) = √(1−ᾱ) Σ_k r_k(x_t) C_k⁻¹ (x_t − √ᾱ μ_k), with
C_k = ᾱ Σ_k + (1−ᾱ) I and r_k the posterior responsibility of component k.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Mixture(NamedTuple):
    """weights [K] (sum 1), means [K, D], covs [K, D, D]."""

    weights: jnp.ndarray
    means: jnp.ndarray
    covs: jnp.ndarray


def ring_mixture(k: int = 8, radius: float = 0.6, std: float = 0.08) -> Mixture:
    """k equal-weight isotropic 2-D Gaussians evenly spaced on a circle."""
    angles = 2 * np.pi * np.arange(k) / k
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    covs = np.broadcast_to(std**2 * np.eye(2), (k, 2, 2))
    return Mixture(jnp.full((k,), 1.0 / k, jnp.float32), jnp.asarray(means, jnp.float32),
                   jnp.asarray(covs, jnp.float32))


def moments(m: Mixture):
    """(mean [D], covariance [D, D]) of the mixture."""
    mean = jnp.einsum("k,kd->d", m.weights, m.means)
    second = jnp.einsum("k,kde->de", m.weights, m.covs + jnp.einsum("kd,ke->kde", m.means, m.means))
    return mean, second - jnp.outer(mean, mean)


def sample(m: Mixture, key, n: int):
    """n draws [n, D] from the mixture."""
    kc, kz = jax.random.split(key)
    comp = jax.random.choice(kc, m.weights.shape[0], (n,), p=m.weights)
    chol = jnp.linalg.cholesky(m.covs)
    z = jax.random.normal(kz, (n, m.means.shape[1]))
    return m.means[comp] + jnp.einsum("nde,ne->nd", chol[comp], z)


def _noisy_components(m: Mixture, abar):
    """Per-example means [B, K, D] and covariances [B, K, D, D] of p(x_t | component)."""
    abar = abar[:, None, None]
    means = jnp.sqrt(abar) * m.means[None]
    eye = jnp.eye(m.means.shape[1])
    covs = abar[..., None] * m.covs[None] + (1.0 - abar[..., None]) * eye
    return means, covs


def log_marginal(m: Mixture, x_t, abar):
    """log p(x_t) [B] for x_t [B, D] at noise level abar [B] (abar = 1: the data density)."""
    means, covs = _noisy_components(m, abar)
    logp = jax.scipy.stats.multivariate_normal.logpdf(x_t[:, None, :], means, covs)
    return jax.scipy.special.logsumexp(logp + jnp.log(m.weights), axis=1)


def exact_eps(m: Mixture, x_t, abar):
    """ε*(x_t) [B, D] at noise level abar [B] (closed form; see module docstring)."""
    means, covs = _noisy_components(m, abar)
    logp = jax.scipy.stats.multivariate_normal.logpdf(x_t[:, None, :], means, covs)
    resp = jax.nn.softmax(logp + jnp.log(m.weights), axis=1)                   # [B, K]
    whitened = jnp.linalg.solve(covs, (x_t[:, None, :] - means)[..., None])[..., 0]
    return jnp.sqrt(1.0 - abar)[:, None] * jnp.einsum("bk,bkd->bd", resp, whitened)


def exact_eps_model(m: Mixture, alphas_cumprod):
    """model_fn(x_t [B, D], t_model [B]) → ε* using the TRAINING schedule's ᾱ [T]."""
    def model_fn(x_t, t):
        return exact_eps(m, x_t.astype(jnp.float32), alphas_cumprod[t])
    return model_fn

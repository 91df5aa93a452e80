"""Noise schedules and timestep respacing.

A `Schedule` holds every per-step coefficient of a Gaussian diffusion as float32 arrays [N]
(N = number of steps in this schedule) plus `timesteps` int32 [N], the original training
timestep each index stands for. The schedule used in training is the identity map; a
respaced schedule (fewer steps, for sampling) keeps a subset of training steps and
recomputes betas so that its ᾱ agree with the training ᾱ at the kept steps (Improved DDPM
§4). Coefficients are computed in float64 with numpy and stored as float32.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.struct
import jax.numpy as jnp
import numpy as np

from unclip_jax.diffusion import steps as steps_grammar

SCHEDULES = ("cosine", "linear")


@flax.struct.dataclass
class Schedule:
    """Per-step coefficients of a diffusion, float32 [N] each (timesteps: int32 [N]).

    Index i runs 0..N-1 with i = 0 the least noisy step. Symbols: β_i, ᾱ_i = Π_{j≤i}(1−β_j),
    ᾱ_prev_i = ᾱ_{i−1} (ᾱ_{−1} = 1), posterior q(x_{i−1} | x_i, x_0) with variance
    β̃_i = β_i (1−ᾱ_{i−1}) / (1−ᾱ_i) and mean coef1·x_0 + coef2·x_i.
    """

    betas: jnp.ndarray
    alphas_cumprod: jnp.ndarray
    alphas_cumprod_prev: jnp.ndarray
    sqrt_alphas_cumprod: jnp.ndarray
    sqrt_one_minus_alphas_cumprod: jnp.ndarray
    sqrt_recip_alphas_cumprod: jnp.ndarray
    sqrt_recipm1_alphas_cumprod: jnp.ndarray
    posterior_variance: jnp.ndarray
    posterior_log_variance_clipped: jnp.ndarray
    posterior_mean_coef1: jnp.ndarray
    posterior_mean_coef2: jnp.ndarray
    timesteps: jnp.ndarray

    @property
    def num_steps(self) -> int:
        """Number of steps N in this schedule (static: read from the array shape)."""
        return self.betas.shape[0]


def _cosine_alpha_bar(t: np.ndarray, s: float = 0.008) -> np.ndarray:
    """ᾱ(t) of Improved DDPM for t ∈ [0, 1] (unnormalised: f(t) = cos²(((t+s)/(1+s))·π/2))."""
    return np.cos((t + s) / (1.0 + s) * math.pi / 2) ** 2


def make_betas(name: str, T: int) -> np.ndarray:
    """β_t float64 [T] for a named schedule.

    'cosine': Improved DDPM, β_t = min(1 − ᾱ((t+1)/T) / ᾱ(t/T), 0.999), s = 0.008.
    'linear': DDPM, β linear from 1e-4 to 0.02 at T = 1000, both ends scaled by 1000/T.
    """
    T = _check_T(T)
    if name == "cosine":
        t = np.arange(T + 1, dtype=np.float64) / T
        abar = _cosine_alpha_bar(t)
        return np.minimum(1.0 - abar[1:] / abar[:-1], 0.999)
    if name == "linear":
        scale = 1000.0 / T
        return np.linspace(scale * 1e-4, scale * 0.02, T, dtype=np.float64)
    raise ValueError(f"unknown noise schedule {name!r}; choose one of {SCHEDULES}")


def _check_T(T) -> int:
    if isinstance(T, bool) or int(T) != T or int(T) < 1:
        raise ValueError(f"number of diffusion steps must be a positive integer, got {T!r}")
    return int(T)


def schedule_from_betas(betas, timesteps=None) -> Schedule:
    """Build a `Schedule` from betas [N] (float64 recommended) and original timesteps [N]."""
    betas = np.asarray(betas, np.float64)
    if betas.ndim != 1 or betas.size == 0 or np.any(betas <= 0) or np.any(betas > 1):
        raise ValueError("betas must be a non-empty 1-D array with values in (0, 1]")
    n = betas.shape[0]
    timesteps = np.arange(n) if timesteps is None else np.asarray(timesteps)
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    # β̃_0 = 0; its log is clipped to β̃_1 (or β_0 for a one-step schedule).
    first = post_var[1] if n > 1 else betas[0]
    post_logvar = np.log(np.append(first, post_var[1:]))
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return Schedule(
        betas=f32(betas),
        alphas_cumprod=f32(abar),
        alphas_cumprod_prev=f32(abar_prev),
        sqrt_alphas_cumprod=f32(np.sqrt(abar)),
        sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - abar)),
        sqrt_recip_alphas_cumprod=f32(np.sqrt(1.0 / abar)),
        sqrt_recipm1_alphas_cumprod=f32(np.sqrt(1.0 / abar - 1.0)),
        posterior_variance=f32(post_var),
        posterior_log_variance_clipped=f32(post_logvar),
        posterior_mean_coef1=f32(betas * np.sqrt(abar_prev) / (1.0 - abar)),
        posterior_mean_coef2=f32((1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar)),
        timesteps=jnp.asarray(timesteps, jnp.int32),
    )


def make_schedule(name: str, T: int) -> Schedule:
    """The training schedule: `make_betas(name, T)` with timesteps 0..T-1."""
    return schedule_from_betas(make_betas(name, T))


def space_timesteps(T: int, spacing: str | int | Sequence[int]) -> list[int]:
    """Sorted original timesteps to keep out of 0..T-1.

    spacing, in the steps grammar (`unclip_jax.diffusion.steps`, its one parser): "ddimN" →
    N steps with an even integer stride (DDIM; a stride that gives exactly N steps is used
    when one exists, else N rounded evenly-spaced steps);
    "N" or "N1,N2,..." → split 0..T-1 into equal sections and keep Nk evenly spaced steps
    of section k, first and last included (Improved DDPM); an int N is "N"; a list of ints
    is kept as given (sorted, unique).
    """
    T = _check_T(T)
    if isinstance(spacing, (list, tuple, np.ndarray)):
        kept = sorted({int(s) for s in spacing})
        if not kept:
            raise ValueError("explicit respacing list is empty; give at least one timestep")
        if kept[0] < 0 or kept[-1] >= T:
            raise ValueError(f"respaced timesteps must lie in [0, {T - 1}] (T={T}), got "
                             f"{kept[0]}..{kept[-1]}")
        return kept
    if isinstance(spacing, (int, np.integer)) and not isinstance(spacing, bool):
        spacing = str(int(spacing))
    if not isinstance(spacing, str) or not spacing.strip():
        raise ValueError(f"respacing must be a string like '250', 'ddim25', '10,10,5' or a "
                         f"list of timesteps, got {spacing!r}")
    parsed = steps_grammar.parse(spacing, T)
    if parsed.ddim:
        n = parsed.total
        for stride in range(1, T + 1):
            if len(range(0, T, stride)) == n:
                return list(range(0, T, stride))
        return sorted({int(round(x)) for x in np.linspace(0, T - 1, n)})
    counts = parsed.counts
    size, extra = divmod(T, len(counts))
    kept, start = [], 0
    for k, count in enumerate(counts):
        sec = size + (1 if k < extra else 0)
        if count > sec:
            raise ValueError(f"respacing {spacing!r}: section {k} has only {sec} of the T={T} "
                             f"steps but asks for {count}; use at most {sec} there")
        stride = (sec - 1) / (count - 1) if count > 1 else 0.0
        kept += [start + int(round(stride * j)) for j in range(count)]
        start += sec
    return kept


def respace(name: str, T: int, spacing: str | int | Sequence[int]) -> Schedule:
    """Schedule over the kept steps k_0 < ... < k_{N−1} of the training schedule (name, T).

    β_i = 1 − ᾱ_{k_i} / ᾱ_{k_{i−1}} (ᾱ_{k_{−1}} = 1), so ᾱ_i equals the training ᾱ_{k_i};
    `timesteps` = k (what the model is called with).
    """
    abar = np.cumprod(1.0 - make_betas(name, T))
    kept = space_timesteps(T, spacing)
    kept_abar = abar[kept]
    betas = 1.0 - kept_abar / np.append(1.0, kept_abar[:-1])
    return schedule_from_betas(betas, kept)


def from_config(diffusion_cfg, spacing=None, *, sampling: bool = False) -> Schedule:
    """Schedule from a config's `diffusion` section (schedule, timesteps, sample_steps).

    spacing=None and sampling=False → the training schedule (T steps); spacing given →
    `respace` with it; sampling=True (and no spacing) → respaced by `sample_steps`.
    """
    name, T = diffusion_cfg.schedule, diffusion_cfg.timesteps
    if spacing is None and sampling:
        spacing = diffusion_cfg.sample_steps
    if spacing is None:
        return make_schedule(name, T)
    return respace(name, T, spacing)

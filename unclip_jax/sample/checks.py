"""Checks of the sampling engine's user input: prompts, seeds, counts, guidance, η.

Each returns the value in its canonical type or raises a one-line `UserError` naming the
fix. The steps grammar is checked by `unclip_jax.diffusion.steps.check`.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.errors import UserError


def check_prompts(prompts: Sequence[str] | str) -> list[str]:
    """A non-empty list of non-empty prompts, or UserError naming the fix."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise UserError("no prompts given; pass at least one prompt (e.g. "
                        "unclip-jax sample 'a red circle')")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise UserError(f"prompt {i} is empty; give every prompt some text")
    return prompts


def check_seed(seed) -> int:
    """A seed is an integer in [-2**63, 2**63) (what `jax.random.key` takes)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise UserError(f"seed {seed!r} is not an integer; pass e.g. --seed 0")
    if not -(2 ** 63) <= int(seed) < 2 ** 63:
        raise UserError(f"seed {seed} is out of range; use an integer from -2**63 to 2**63-1")
    return int(seed)


def as_key(key):
    """int seed or typed key → typed key."""
    if isinstance(key, (int, np.integer)):
        return jax.random.key(check_seed(key))
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    raise UserError(f"key must be an int seed or jax.random.key(...), got {type(key).__name__}")


def check_guidance(name: str, value: float) -> float:
    """Guidance scales are ≥ 0 (1 = no guidance, 0 = unconditional)."""
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise UserError(f"{name} must be a finite number >= 0 (got {value}); 1.0 means no guidance")
    return value


def check_count(name: str, n) -> int:
    """A positive integer (a count of images, frames, prompts, ...), else UserError naming
    `name`."""
    if isinstance(n, bool) or int(n) != n or int(n) < 1:
        raise UserError(f"{name}={n!r} must be an integer ≥ 1")
    return int(n)


def check_eta(eta) -> float:
    """DDIM's η ≥ 0 (0 = deterministic DDIM, 1 = DDPM-like)."""
    eta = float(eta)
    if not (np.isfinite(eta) and eta >= 0):
        raise UserError(f"eta={eta} must be >= 0 (0 = deterministic DDIM, 1 = DDPM-like)")
    return eta


def check_cols(cols) -> None:
    """A grid has at least one column (None: the default square-ish layout)."""
    if cols is not None and int(cols) < 1:
        raise UserError(f"--cols {cols}: the grid needs at least 1 column")

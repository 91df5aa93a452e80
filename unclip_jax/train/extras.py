"""Extras a stage fits once before training, from a fresh training iterator, and stores in its
checkpoints and export: the diffusion prior's embedding statistics ('meanstd') and the AR
prior's PCA + quantiser codec. Every process fits on the rows of all processes, so the extras
are identical everywhere."""
from __future__ import annotations

import jax
import numpy as np


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


def fit_prior_stats(config, make_iter) -> dict:
    """Per-dimension mean/std of training z_i, only for model.normalize == 'meanstd'."""
    if config.model.get("normalize", "scale") != "meanstd":
        return {}
    from unclip_jax.models.prior import embedding_stats
    n = max(2048, 16 * int(config.model.embed_dim))
    z = _allgather_rows(_collect(make_iter, ["z_i"], n)["z_i"])
    return {"stats": embedding_stats(z)}


def fit_ar_codec(config, make_iter) -> dict:
    """PCA + per-component quantiser + dot-token quantiser from training (z_i, z_t) pairs."""
    from unclip_jax.models.ar_codec import fit_codec
    m = config.model
    n = max(2048, 8 * int(m.num_buckets), 4 * int(m.embed_dim))
    got = _collect(make_iter, ["z_i", "z_t"], n)
    z_i, z_t = _allgather_rows(got["z_i"]), _allgather_rows(got["z_t"])
    return {"codec": fit_codec(z_i, z_t, int(m.pca_components), int(m.num_buckets),
                               int(m.dot_buckets))}

"""Training metrics: TensorBoard event files, `metrics.jsonl`, FLOP counts, PNG sample grids.

Only process 0 writes. Scalars go to `WORKDIR/tensorboard` (tf.summary) and one JSON line per
log step to `WORKDIR/metrics.jsonl`. WORKDIR may be a gs:// URL (`unclip_jax.paths`); there
`metrics.jsonl` is uploaded at most every REMOTE_FLUSH_S seconds and when the writer closes.
"""
from __future__ import annotations

import json
import math
import time
from typing import Any, Mapping

import jax
import numpy as np

from unclip_jax import paths

REMOTE_FLUSH_S = 30.0


def compiled_flops(compiled, num_devices: int = 1) -> float | None:
    """FLOPs of one call of a compiled XLA program (`jitted.lower(...).compile()`).

    XLA's cost analysis describes the per-device SPMD program, so the total is that times
    `num_devices` (work replicated across devices counts once per device). None when XLA
    gives no estimate."""
    try:
        cost = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"]) * num_devices


def _plugin_metadata(plugin: str) -> bytes:
    """Serialized `SummaryMetadata` naming the TensorBoard plugin ('scalars', 'images') so
    raw `tf.summary.write` events display like `tf.summary.scalar/image` ones (the
    `tensorboard` package itself is not required to write them)."""
    from tensorflow.core.framework import summary_pb2
    meta = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))
    return meta.SerializeToString()


def truncate_jsonl(path: str, up_to_step: int) -> None:
    """Keep only the complete rows of `path` with step <= `up_to_step` (atomic rewrite; a
    torn last line from a killed run is dropped too)."""
    if not paths.isfile(path):
        return
    keep, changed = [], False
    with paths.open(path, "r", encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
                ok = line.endswith("\n") and int(row["step"]) <= up_to_step
            except (ValueError, KeyError, TypeError):
                ok = False
            if ok:
                keep.append(line)
            else:
                changed = True
    if changed:
        paths.write_text(path, "".join(keep))


class MetricWriter:
    """Write scalar dicts to TensorBoard and `metrics.jsonl` (process 0 only)."""

    def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
        """resume_step: the step the run (re)starts from; rows of an earlier attempt logged
        after it are dropped from `metrics.jsonl` (atomically) so no step appears twice."""
        self.enabled = enabled and jax.process_index() == 0
        self._tb = None
        self._jsonl = None
        if self.enabled:
            paths.makedirs(workdir)
            import tensorflow as tf  # heavy: only imported by the writing process
            tf.config.set_visible_devices([], "GPU")
            self._tf = tf
            self._tb = tf.summary.create_file_writer(paths.join(workdir, "tensorboard"))
            path = paths.join(workdir, "metrics.jsonl")
            if resume_step is not None:
                truncate_jsonl(path, resume_step)
            self._jsonl = paths.open(path, "a")
            # Appending to a Cloud Storage object re-uploads it whole: flush it there at most
            # every REMOTE_FLUSH_S seconds (and on close), local files after every row.
            self._flush_every = REMOTE_FLUSH_S if paths.is_remote(path) else 0.0
            self._flushed = time.monotonic()

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        with self._tb.as_default():
            for k, v in clean.items():
                self._tf.summary.write(k, self._tf.constant(v, self._tf.float32), step=step,
                                       metadata=_plugin_metadata("scalars"))
        self._tb.flush()
        row = {"step": int(step), **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        if time.monotonic() - self._flushed >= self._flush_every:
            self._jsonl.flush()
            self._flushed = time.monotonic()

    def write_images(self, step: int, name: str, images: np.ndarray) -> None:
        """Images [N, H, W, C] in [-1, 1] as one PNG grid under tag `name`."""
        if self.enabled:
            import io
            from PIL import Image
            grid = image_grid(images)
            buf = io.BytesIO()
            Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(buf, "PNG")
            data = [str(grid.shape[1]).encode(), str(grid.shape[0]).encode(), buf.getvalue()]
            with self._tb.as_default():
                self._tf.summary.write(name, self._tf.constant(data), step=step,
                                       metadata=_plugin_metadata("images"))
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()


def image_grid(images: np.ndarray, cols: int | None = None) -> np.ndarray:
    """[N, H, W, C] floats in [-1, 1] → one uint8 [rows·H, cols·W, C] grid (the sampling
    engine's `grid_array` without gaps)."""
    from unclip_jax.sample.images import grid_array, to_uint8
    return grid_array(to_uint8(images), cols, pad=0, fill=0)


def save_png_grid(images: np.ndarray, path: str) -> str:
    """Save `image_grid(images)` as a PNG at `path`."""
    from PIL import Image
    from unclip_jax import atomic
    grid = image_grid(images)
    with atomic.open_atomic(path, "wb") as f:
        Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(f, format="PNG")
    return path

"""Reading diffusers / transformers weight files and filling our parameter trees from them.

A component directory holds `diffusion_pytorch_model.safetensors` (or a sharded index, or
`diffusion_pytorch_model.bin`, which needs torch). Tensors are float32 numpy [PyTorch layout].

`fill(abstract, name_fn, states, what)` walks our abstract parameter tree (from
`jax.eval_shape`) and, for each leaf path, asks `name_fn(path, ndim)` for
`(source, torch_name, transform)`; it reads `states[source][torch_name]`, applies the transform
(`linear`: [out, in] → [in, out]; `conv`: OIHW → HWIO; `none`: as is, leading size-1 axes
dropped) and checks the shape. Errors name the parameter and both shapes.
"""
from __future__ import annotations

import os
import re
from typing import Callable

import numpy as np
from flax import traverse_util

from unclip_jax.clip.convert import read_hf_weights
from unclip_jax.errors import CheckpointError

DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors",
                     "diffusion_pytorch_model.safetensors.index.json",
                     "diffusion_pytorch_model.bin")
INDEXED = re.compile(r"^(down_blocks|up_blocks|resnets|attentions|downsamplers|upsamplers|"
                     r"layers)_(\d+)$")


def read_component(src: str, component: str) -> dict[str, np.ndarray]:
    """All tensors of `src/component` as float32 numpy (safetensors, sharded, or torch .bin)."""
    return read_hf_weights(os.path.join(src, component), DIFFUSERS_WEIGHTS,
                           hint=f" (the '{component}' component is incomplete)")


def diffusers_name(path: tuple[str, ...], ndim: int) -> tuple[str, str]:
    """Our param path → (diffusers tensor name, transform), by the shared naming rule:
    `a_3` → `a.3` for indexed containers; GroupNorm/LayerNorm wrappers `norm|ln/{scale,bias}`
    → `weight|bias`; `kernel` → `weight` (conv when 4-D); attention `to_out` → `to_out.0`."""
    parts: list[str] = []
    for p in path:
        m = INDEXED.match(p)
        parts += [m[1], m[2]] if m else [p]
    transform = "none"
    if len(parts) >= 2 and parts[-2] in ("norm", "ln") and parts[-1] in ("scale", "bias"):
        parts = parts[:-2] + ["weight" if parts[-1] == "scale" else "bias"]
    elif parts[-1] == "kernel":
        parts[-1] = "weight"
        transform = "conv" if ndim == 4 else "linear"
    if len(parts) >= 2 and parts[-2] == "to_out":
        parts.insert(len(parts) - 1, "0")
    return ".".join(parts), transform


def _transform(a: np.ndarray, transform: str, shape: tuple) -> np.ndarray:
    if transform == "linear" and a.ndim == 2:
        return a.T
    if transform == "conv" and a.ndim == 4:
        return a.transpose(2, 3, 1, 0)
    if transform == "none" and a.shape != shape and a.size == int(np.prod(shape)) and \
            a.ndim > len(shape) and all(s == 1 for s in a.shape[:a.ndim - len(shape)]):
        return a.reshape(shape)
    return a


NameFn = Callable[[tuple, int], "tuple[str, str, str] | None"]


def fill(abstract: dict, name_fn: NameFn, states: dict[str, dict[str, np.ndarray]], what: str,
         synthesized: dict[tuple, np.ndarray] | None = None) -> dict:
    """Our params tree (numpy float32) from `states` (see module docstring).

    `name_fn` returns None for leaves given in `synthesized` (path → array). Raises
    CheckpointError for a missing tensor or a shape mismatch. Returns (params, unused) where
    unused lists `source/name` of tensors that were not read.
    """
    synthesized = synthesized or {}
    flat = traverse_util.flatten_dict(abstract)
    used: set[tuple[str, str]] = set()
    out = {}
    for path, spec in flat.items():
        shape = tuple(spec.shape)
        where = "/".join(path)
        mapped = name_fn(path, len(shape))
        if mapped is None:
            if path not in synthesized:
                raise CheckpointError(f"{what}: no source for parameter {where}")
            value = np.asarray(synthesized[path], np.float32)
            src_name = f"(synthesized {where})"
        else:
            source, name, transform = mapped
            state = states[source]
            if name not in state:
                raise CheckpointError(f"{what}: {source} has no tensor {name!r} (needed for "
                                      f"{where}); is its config.json from the same model?")
            raw = state[name]
            value = _transform(np.asarray(raw, np.float32), transform, shape)
            used.add((source, name))
            src_name = f"{source} tensor {name} of shape {tuple(raw.shape)}"
        if tuple(value.shape) != shape:
            raise CheckpointError(f"{what}: weight shape mismatch for parameter {where}: "
                                  f"{src_name} gives {tuple(value.shape)} but the config implies "
                                  f"{shape}; the weights do not match config.json")
        out[path] = np.array(value, np.float32, order="C")
    unused = sorted(f"{s}/{n}" for s, st in states.items() for n in st if (s, n) not in used)
    return traverse_util.unflatten_dict(out), unused

"""Deepen a trained UNet: more residual blocks per level, the same function at step 0.

A UNet with `num_res_blocks = n` becomes one with `m > n` (the module tree of
`models/unet.py`). The new network computes exactly what the old one did, so training goes on
from where the old one stood rather than from scratch — the extra blocks start as identities
and learn only what the old network lacked:

- Encoder level i gains `resnets_n … resnets_{m-1}` (+ attention) after its old blocks. A
  ResBlock's `conv2` and an attention block's `to_out` are zero-initialised, and these blocks
  keep their channel count (no shortcut conv), so each returns its input. Their outputs are
  extra skip connections equal to the old last block's output.
- Decoder level u has m + 1 blocks, consuming the skips latest first: block 0 takes the newest
  skip (equal to the old newest) and keeps the old block 0; blocks 1 … m − n are new; old block
  j ≥ 1 becomes block j + (m − n), which receives the skip the old block j received. A new
  decoder block concatenates [h, skip] (2·C channels) onto C, so its 1×1 `conv_shortcut`
  is set to [I; 0] (pass h, ignore the skip) and with the zeroed `conv2` it returns h.

Everything else (embeddings, conditioning, mid block, resamplers, output) is copied unchanged.
"""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np

_DOWN = re.compile(r"^down_blocks_(\d+)\.(resnets|attentions)_(\d+)\.(.*)$")
_UP = re.compile(r"^up_blocks_(\d+)\.(resnets|attentions)_(\d+)\.(.*)$")


def new_name(name: str, old_blocks: int, new_blocks: int) -> str:
    """Where the old parameter `name` ('up_blocks_3.resnets_1.conv1.kernel', …) lives in the
    deepened tree. Encoder blocks and every other module keep their names; decoder block
    j ≥ 1 moves to j + (new_blocks − old_blocks)."""
    m = _UP.match(name)
    if m and int(m.group(3)) >= 1:
        u, kind, j, rest = m.group(1), m.group(2), int(m.group(3)), m.group(4)
        return f"up_blocks_{u}.{kind}_{j + new_blocks - old_blocks}.{rest}"
    return name


def deepen(old: Mapping[str, np.ndarray], fresh: Mapping[str, np.ndarray], old_blocks: int,
           new_blocks: int) -> dict[str, np.ndarray]:
    """The deepened UNet's parameters, as {path name: array}.

    old: the trained UNet's parameters (num_res_blocks = old_blocks); fresh: a random init of
    the deeper UNet (num_res_blocks = new_blocks, every other setting the same), whose new
    blocks are kept with `conv2` / `to_out` already zero as initialised — they are zeroed here
    too, so the result does not depend on that. Names are `checkpoint.path_name` strings.
    Raises ValueError when the trees do not line up (another model, or new_blocks ≤ old_blocks).
    """
    if new_blocks <= old_blocks:
        raise ValueError(f"deepening needs more residual blocks: {old_blocks} → {new_blocks}")
    out = {k: np.asarray(v) for k, v in fresh.items()}
    for name, value in old.items():
        target = new_name(name, old_blocks, new_blocks)
        if target not in out:
            raise ValueError(f"{name} of the trained UNet has no place in the deeper one "
                             f"({target} is not in it)")
        if tuple(out[target].shape) != tuple(np.shape(value)):
            raise ValueError(f"{name} has shape {tuple(np.shape(value))} but its place {target} "
                             f"has {tuple(out[target].shape)}")
        out[target] = np.asarray(value, dtype=out[target].dtype)
    for name in out:
        if not _is_new(name, old_blocks, new_blocks):
            continue
        leaf = name.rsplit(".", 2)[-2:]
        if leaf[0] in ("conv2", "to_out"):
            out[name] = np.zeros_like(out[name])
        elif leaf[0] == "conv_shortcut":
            out[name] = _pass_first(out[name]) if leaf[1] == "kernel" else np.zeros_like(out[name])
    return out


def _is_new(name: str, old_blocks: int, new_blocks: int) -> bool:
    """Whether `name` belongs to a block the deepening adds."""
    down, up = _DOWN.match(name), _UP.match(name)
    return bool(down and int(down.group(3)) >= old_blocks
                or up and 1 <= int(up.group(3)) <= new_blocks - old_blocks)


def _pass_first(kernel: np.ndarray) -> np.ndarray:
    """A 1×1 conv kernel [1, 1, C_in, C] that copies the first C input channels: [I; 0]."""
    k = np.zeros_like(kernel)
    c = kernel.shape[-1]
    k[0, 0, :c, :] = np.eye(c, dtype=kernel.dtype)
    return k

"""Helpers for the sampling pipeline: input checks, image IO, PNG grids, JSON sidecars.

Everything here is either a pure function of arrays or a small piece of file IO; the
pipeline (`unclip_jax.pipeline`) and its CLI (`unclip_jax.pipeline_cli`) chain them.

Images are NHWC. Floats are in [-1, 1]; uint8 appears only at IO.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, UnidentifiedImageError

from unclip_jax.errors import UserError

SIDECAR_VERSION = 1


# --------------------------------------------------------------------------- pixels

def to_uint8(images) -> np.ndarray:
    """Float images in [-1, 1] → uint8 [0, 255] (rounded, clipped), as host numpy."""
    x = np.asarray(jax.device_get(images), np.float32)
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def from_uint8(images) -> np.ndarray:
    """uint8 [0, 255] → float32 in [-1, 1]."""
    return np.asarray(images, np.float32) / 127.5 - 1.0


# --------------------------------------------------------------------------- batching

def pad_to_multiple(x: np.ndarray, multiple: int) -> tuple[np.ndarray, int]:
    """Pad the leading axis of `x` up to a multiple of `multiple` by repeating the last row.

    Returns (padded, n) where n is the original length; drop the padding with `out[:n]`.
    """
    x = np.asarray(x)
    n = x.shape[0]
    pad = (-n) % multiple
    if pad:
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)], axis=0)
    return x, n


# --------------------------------------------------------------------------- checks

def check_prompts(prompts: Sequence[str] | str) -> list[str]:
    """A non-empty list of non-empty prompts, or UserError naming the fix."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise UserError("no prompts given; pass at least one prompt (e.g. --prompt 'a red circle')")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise UserError(f"prompt {i} is empty; give every prompt some text")
    return prompts


def check_guidance(name: str, value: float) -> float:
    """Guidance scales are ≥ 0 (1 = no guidance, 0 = unconditional)."""
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise UserError(f"{name} must be a finite number >= 0 (got {value}); 1.0 means no guidance")
    return value


_STEPS_RE = re.compile(r"^(ddim)?(\d+(,\d+)*)$")


def check_steps(name: str, steps: str | int, timesteps: int) -> str:
    """Validate a respacing string ('25', 'ddim25', '10,10,5') against the trained T.

    Returns the normalised string. Raises UserError when it does not parse, a count is < 1,
    or the total exceeds `timesteps`.
    """
    s = str(steps).strip().lower()
    m = _STEPS_RE.match(s)
    if not m:
        raise UserError(f"{name}={steps!r} is not a step count; use e.g. '25' or 'ddim25'")
    counts = [int(c) for c in m.group(2).split(",")]
    if min(counts) < 1:
        raise UserError(f"{name}={steps!r}: the number of steps must be at least 1")
    if m.group(1) and len(counts) != 1:
        raise UserError(f"{name}={steps!r}: 'ddim' takes a single count, e.g. 'ddim25'")
    if sum(counts) > timesteps:
        raise UserError(f"{name}={steps!r}: at most {timesteps} steps (the model was trained "
                        f"with T={timesteps}); use fewer steps")
    return s


def uses_ddim(steps: str, default_sampler: str) -> bool:
    """'ddimN' always means DDIM; a plain count uses the stage's configured sampler."""
    return str(steps).startswith("ddim") or default_sampler == "ddim"


# --------------------------------------------------------------------------- image IO

def load_image(path: str, size: int) -> np.ndarray:
    """Read any PIL-readable image → float32 [size, size, 3] in [-1, 1].

    Modes L/LA/P/RGBA/CMYK/I;16/... are converted to RGB (alpha composited on white); the
    image is centre-cropped to a square and resized with a bicubic filter.
    """
    try:
        with Image.open(path) as im:
            im.load()
            img = im
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist; check the path") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"cannot read image {path} ({type(e).__name__}); pass a PNG/JPEG file") from None
    return _square(to_rgb(img), size)


def image_to_float(image, size: int) -> np.ndarray:
    """A PIL image or an HWC array (uint8 [0, 255] or float [-1, 1]; 1, 3 or 4 channels)
    → float32 [size, size, 3] in [-1, 1] (centre crop, bicubic resize)."""
    if not isinstance(image, Image.Image):
        a = np.asarray(image)
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
            raise UserError(f"an image array must be [H, W, C] with C in 1, 3, 4; got {a.shape}")
        if a.dtype != np.uint8:
            a = np.clip(np.round((a.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
            if a.shape[:2] == (size, size) and a.shape[-1] == 3:
                return np.clip(np.asarray(image, np.float32), -1.0, 1.0)
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[a.shape[-1]]
        image = Image.fromarray(a[..., 0] if mode == "L" else a, mode)
    return _square(to_rgb(image), size)


def _square(img: Image.Image, size: int) -> np.ndarray:
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s))
    if s != size:
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return from_uint8(np.asarray(img, np.uint8))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image → RGB; transparency is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img, np.float64)
        hi = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2) -> Image.Image:
    """uint8 [N, H, W, 3] → one RGB PIL image with the N tiles in rows of `ncols` (white gaps)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"make_grid needs uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    n, h, w, _ = images.shape
    ncols = max(1, min(ncols or int(np.ceil(np.sqrt(n))), n))
    nrows = int(np.ceil(n / ncols))
    canvas = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        canvas[y:y + h, x:x + w] = images[i]
    return Image.fromarray(canvas, "RGB")


def save_grid(path: str, images: np.ndarray, ncols: int | None = None) -> str:
    """Write `images` (uint8 [N,H,W,3]) as a PNG grid; creates the parent directory."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    make_grid(images, ncols).save(path, format="PNG")
    return path


def read_png(path: str) -> np.ndarray:
    """A PNG as uint8 [H, W, 3]."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.uint8)


# --------------------------------------------------------------------------- sidecars

def checkpoint_identity(directory: str) -> str:
    """sha256 (hex, 16 chars) of a stage checkpoint's config.json, extra.json and the params'
    Orbax tree metadata (`params/_METADATA`): changes whenever the config or tree changes."""
    h = hashlib.sha256()
    for rel in ("config.json", "extra.json", os.path.join("params", "_METADATA")):
        p = os.path.join(directory, rel)
        h.update(rel.encode())
        if os.path.isfile(p):
            with open(p, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]


def sidecar_path(png_path: str) -> str:
    """`out/grid.png` → `out/grid.json`."""
    root, _ = os.path.splitext(png_path)
    return root + ".json"


def write_sidecar(path: str, record: dict[str, Any]) -> str:
    """Write the JSON record that lets `unclip-jax sample --from-sidecar` redo an image."""
    from unclip_jax import __version__

    record = dict(record)
    record.setdefault("sidecar_version", SIDECAR_VERSION)
    record.setdefault("package_version", __version__)
    with open(path, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    return path


def read_sidecar(path: str) -> dict[str, Any]:
    """Read a sidecar written by `write_sidecar`; UserError if missing or not one."""
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        raise UserError(f"sidecar {path} does not exist; pass the .json written next to a grid") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"sidecar {path} is not JSON; pass the .json written next to a grid") from None
    if not isinstance(record, dict) or "command" not in record or "seed" not in record:
        raise UserError(f"{path} is not an unclip-jax sidecar (no command/seed); pass the .json "
                        "written next to a grid")
    return record

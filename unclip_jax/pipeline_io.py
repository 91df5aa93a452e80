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
BUNDLED_MODEL = os.path.join(os.path.dirname(__file__), "assets", "shapes")   # the shapes model


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
    return _square(to_rgb(open_image(path)), size)


def open_image(path: str) -> Image.Image:
    """Read any PIL-readable image file fully (its own mode and size); UserError naming the
    file when it is missing, unreadable or a decompression bomb."""
    try:
        with Image.open(path) as im:
            im.load()
            img = im
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist; check the path") from None
    except Image.DecompressionBombError:
        raise UserError(f"image {path} is too large to decode safely (over "
                        f"{Image.MAX_IMAGE_PIXELS} pixels: a decompression bomb?); pass a "
                        "smaller image") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"cannot read image {path} ({type(e).__name__}); pass a PNG/JPEG file") from None
    return img


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


IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def image_format(path: str) -> str:
    """'PNG' or 'JPEG' from the extension of `path`; UserError for any other extension."""
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in IMAGE_FORMATS:
        raise UserError(f"--out {path}: write a .png, .jpg or .jpeg file (the JSON sidecar goes "
                        "next to it)")
    return IMAGE_FORMATS[ext]


def encode_image(image: Image.Image, fmt: str) -> bytes:
    """PIL image → file bytes in `fmt` ('PNG', or 'JPEG' at quality 95)."""
    import io as _io
    buf = _io.BytesIO()
    if fmt == "JPEG":
        image.save(buf, format="JPEG", quality=95)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()


def check_output(path: str, overwrite: bool = False) -> str:
    """Check `--out` before any sampling: a .png/.jpg/.jpeg file name whose sidecar path
    differs from it, no parent that is a file, not a directory, and (unless `overwrite`)
    neither it nor its sidecar already there. Returns the absolute path."""
    from unclip_jax import atomic
    out = atomic.check_output_path(path, overwrite=overwrite)
    image_format(path)
    side = sidecar_path(out)
    if os.path.abspath(side) == out:
        raise UserError(f"--out {path} is where its sidecar would go; name an image file")
    atomic.check_output_path(side, overwrite=overwrite, what="sidecar")
    return out


def save_grid(path: str, images: np.ndarray, ncols: int | None = None, *,
              overwrite: bool = True) -> str:
    """Write `images` (uint8 [N,H,W,3]) as one grid, PNG or JPEG by extension (atomically;
    creates the parent directory)."""
    from unclip_jax import atomic
    data = encode_image(make_grid(images, ncols), image_format(path))
    atomic.write_bytes(path, data, overwrite=overwrite)
    return path


def save_outputs(path: str, images: np.ndarray, ncols: int | None, record: dict[str, Any],
                 *, overwrite: bool = False) -> tuple[str, str]:
    """Write the grid and its sidecar: both are encoded and written to temporary files
    first, then renamed into place, so neither is changed unless both could be written."""
    from unclip_jax import atomic
    data = encode_image(make_grid(images, ncols), image_format(path))
    side = sidecar_path(path)
    atomic.write_files({path: data, side: sidecar_bytes(record)}, overwrite=overwrite)
    return path, side


def read_png(path: str) -> np.ndarray:
    """A PNG as uint8 [H, W, 3]."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.uint8)


# --------------------------------------------------------------------------- sidecars

def checkpoint_identity(directory: str) -> str:
    """sha256 (hex, 16 chars) of what a stage checkpoint or tokenizer directory computes
    with: config.json, extra.json, the params' tree metadata and the parameter bytes — the
    per-array checksums in `params.sha256.json` when the export has them (verified against
    the arrays on load), else every file under params/ — and, for any other directory
    (a tokenizer), every file in it. Changes whenever a weight or a tokenizer file does."""
    h = hashlib.sha256()
    for rel in _identity_files(directory):
        h.update(rel.encode() + b"\0")
        with open(os.path.join(directory, rel), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _identity_files(directory: str) -> list[str]:
    from unclip_jax import export
    if not os.path.isfile(os.path.join(directory, "config.json")):      # e.g. a tokenizer
        walk = [os.path.relpath(os.path.join(r, f), directory)
                for r, _, fs in os.walk(directory) for f in fs]
        return sorted(walk)
    rels = ["config.json", "extra.json", os.path.join("params", "_METADATA")]
    if os.path.isfile(os.path.join(directory, export.CHECKSUMS)):
        rels.append(export.CHECKSUMS)
    else:
        pdir = os.path.join(directory, "params")
        rels += sorted(os.path.relpath(os.path.join(r, f), directory)
                       for r, _, fs in os.walk(pdir) for f in fs)
    return [r for r in dict.fromkeys(rels) if os.path.isfile(os.path.join(directory, r))]


def sidecar_path(png_path: str) -> str:
    """`out/grid.png` → `out/grid.json`."""
    root, _ = os.path.splitext(png_path)
    return root + ".json"


def sidecar_bytes(record: dict[str, Any]) -> bytes:
    """The sidecar JSON of `record` (with its format and package versions)."""
    from unclip_jax import __version__

    record = dict(record)
    record.setdefault("sidecar_version", SIDECAR_VERSION)
    record.setdefault("package_version", __version__)
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


def write_sidecar(path: str, record: dict[str, Any], *, overwrite: bool = True) -> str:
    """Write the JSON record that lets `unclip-jax sample --from-sidecar` redo an image."""
    from unclip_jax import atomic
    atomic.write_bytes(path, sidecar_bytes(record), overwrite=overwrite)
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
    check_sidecar(record, path)
    return record


# command → {input field: "str" | "list"}: what each recorded command needs
_SIDECAR_INPUTS = {"sample": {"prompts": "list"}, "vary": {"images": "list"},
                   "interpolate": {"image_a": "str", "image_b": "str"},
                   "textdiff": {"image": "str", "caption_from": "str", "caption_to": "str"},
                   "inpaint": {"image": "str", "mask": "str", "prompt": "str"},
                   "img2img": {"image": "str", "prompt": "str"},
                   "mix": {"items": "list", "kinds": "list"}}
_SIDECAR_SETTINGS = {"decoder_steps", "decoder_guidance", "upsampler_steps",
                     "num_images_per_prompt", "prior_steps", "prior_guidance", "prior_best_of",
                     "eta", "text_as_image_embed", "n", "fixed_xT", "max_angle",
                     "negative_prompts", "strength", "feather", "jump_length", "resamplings",
                     "weights"}


def check_sidecar(record: dict, path: str = "sidecar") -> None:
    """Validate a sidecar's fields (types, required keys); UserError naming the field."""
    def bad(field, want):
        return UserError(f"{path}: field {field!r} must be {want}; pass an unmodified sidecar "
                         "written next to a grid")
    command = record.get("command")
    if command not in _SIDECAR_INPUTS:
        raise bad("command", "one of " + ", ".join(_SIDECAR_INPUTS))
    try:
        check_seed(record["seed"])
    except UserError:
        raise bad("seed", "an integer in [-2**63, 2**63)") from None
    inputs = record.get("inputs")
    if not isinstance(inputs, dict):
        raise bad("inputs", "an object")
    for name, kind in _SIDECAR_INPUTS[command].items():
        v = inputs.get(name)
        ok = (isinstance(v, str) if kind == "str" else
              isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v))
        if not ok:
            raise bad(f"inputs.{name}", "a string" if kind == "str" else "a list of strings")
    settings = record.get("settings")
    if not isinstance(settings, dict):
        raise bad("settings", "an object")
    for k, v in settings.items():
        if k not in _SIDECAR_SETTINGS:
            raise bad(f"settings.{k}", "absent (unknown setting)")
        if not (v is None or isinstance(v, (str, int, float, bool)) or
                (isinstance(v, list) and all(isinstance(x, (str, int, float)) for x in v))):
            raise bad(f"settings.{k}", "a string, number, boolean or null")
    for field, kinds, want in (("checkpoint", (str, type(None)), "a directory or null"),
                               ("prior", (str,), "a string"),
                               ("cols", (int, type(None)), "an integer or null")):
        if field in record and (not isinstance(record[field], kinds) or
                                isinstance(record[field], bool)):
            raise bad(field, want)
    ckpts = record.get("checkpoints", {})
    if not isinstance(ckpts, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("identity"), str) and
            isinstance(v.get("dir"), str) for v in ckpts.values()):
        raise bad("checkpoints", "an object of {stage: {dir, identity}}")

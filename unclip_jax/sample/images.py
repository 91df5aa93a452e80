"""Image IO of the sampling engine and the one image grid (also used by training previews).

Images are NHWC. Floats are in [-1, 1]; uint8 appears only at IO. Every reader takes any
PIL-readable file (or a PIL image, or an array) and returns float32 squares: centre crop,
bicubic resize, transparency composited on white.
"""
from __future__ import annotations

import io
import os

import jax
import numpy as np
from PIL import Image, UnidentifiedImageError

from unclip_jax.errors import UserError

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


# --------------------------------------------------------------------------- pixels

def to_uint8(images) -> np.ndarray:
    """Float images in [-1, 1] → uint8 [0, 255] (rounded, clipped), as host numpy."""
    x = np.asarray(jax.device_get(images), np.float32)
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def from_uint8(images) -> np.ndarray:
    """uint8 [0, 255] → float32 in [-1, 1]."""
    return np.asarray(images, np.float32) / 127.5 - 1.0


# --------------------------------------------------------------------------- reading

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


def read_image(item):
    """A path → its RGB PIL image (UserError if unreadable); PIL images and arrays pass
    through unchanged."""
    if isinstance(item, (str, os.PathLike)):
        return to_rgb(open_image(os.fspath(item)))
    return item


def load_image(path: str, size: int) -> np.ndarray:
    """Read any PIL-readable image → float32 [size, size, 3] in [-1, 1].

    Modes L/LA/P/RGBA/CMYK/I;16/... are converted to RGB (alpha composited on white); the
    image is centre-cropped to a square and resized with a bicubic filter.
    """
    return _square(to_rgb(open_image(path)), size)


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


def load_images(images, size: int) -> np.ndarray:
    """Paths / PIL images / arrays (one, a list, or an [N, H, W, C] batch) → float32
    [B, size, size, 3] in [-1, 1]."""
    if isinstance(images, (str, os.PathLike, Image.Image)):     # one image
        images = [images]
    if isinstance(images, (np.ndarray, jax.Array)):
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[None]
        return np.stack([image_to_float(a, size) for a in arr])
    images = list(images)
    if not images:
        raise UserError("no images given; pass at least one image")
    return np.stack([load_image(p, size) if isinstance(p, (str, os.PathLike))
                     else image_to_float(p, size) for p in images])


def one_image(image):
    """A path, PIL image, [H, W, C] array, or [1, H, W, C] array → one image (not a batch)."""
    if isinstance(image, (np.ndarray, jax.Array)) and np.ndim(image) == 4:
        if image.shape[0] != 1:
            raise UserError(f"expected one image, got a batch of shape {tuple(image.shape)}")
        return np.asarray(image)[0]
    return image


# --------------------------------------------------------------------------- grids

def default_columns(n: int) -> int:
    """Columns for n tiles with no empty cell: the smallest divisor of n that is ≥ √n (rows ≤
    columns, as square as n allows: 4 → 2×2, 6 → 2×3, 12 → 3×4; a prime n is one row)."""
    return next(c for c in range(max(1, int(np.ceil(np.sqrt(n)))), n + 1) if n % c == 0) if n else 1


def grid_array(images: np.ndarray, ncols: int | None = None, pad: int = 2,
               fill: int = 255) -> np.ndarray:
    """uint8 [N, H, W, C] → uint8 [rows·(H+pad)+pad, cols·(W+pad)+pad, C]: the N tiles in
    rows of `ncols` (default `default_columns(N)`: no empty cell; at most N), `pad` pixels of
    value `fill` around each."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"a grid needs uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    n, h, w, c = images.shape
    ncols = max(1, min(ncols or default_columns(n), n))
    nrows = int(np.ceil(n / ncols))
    canvas = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), fill, np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        canvas[y:y + h, x:x + w] = images[i]
    return canvas


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2) -> Image.Image:
    """uint8 [N, H, W, 3] → one RGB PIL image with the N tiles in rows of `ncols` (white gaps)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"make_grid needs uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    return Image.fromarray(grid_array(images, ncols, pad), "RGB")


# --------------------------------------------------------------------------- writing

def image_format(path: str) -> str:
    """'PNG' or 'JPEG' from the extension of `path`; UserError for any other extension."""
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in IMAGE_FORMATS:
        raise UserError(f"--out {path}: write a .png, .jpg or .jpeg file (the JSON sidecar goes "
                        "next to it)")
    return IMAGE_FORMATS[ext]


def encode_image(image: Image.Image, fmt: str) -> bytes:
    """PIL image → file bytes in `fmt` ('PNG', or 'JPEG' at quality 95)."""
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.save(buf, format="JPEG", quality=95)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()


def save_grid(path: str, images: np.ndarray, ncols: int | None = None, *,
              overwrite: bool = True) -> str:
    """Write `images` (uint8 [N,H,W,3]) as one grid, PNG or JPEG by extension (atomically;
    creates the parent directory)."""
    from unclip_jax import atomic
    data = encode_image(make_grid(images, ncols), image_format(path))
    atomic.write_bytes(path, data, overwrite=overwrite)
    return path

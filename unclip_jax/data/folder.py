"""`image_caption_folder`: a TFDS dataset built from local image–caption pairs.

Sources (builder kwarg `source`, or the download config's manual_dir):
  - a directory (searched recursively) of images with same-named `.txt` captions
    (`a/b/0001.jpg` + `a/b/0001.txt`), as img2dataset writes;
  - a CSV or Parquet file with columns `path` (absolute, or relative to the file) and
    `caption`.

Every image is converted to RGB (grayscale, palette, CMYK; alpha composited on white),
resized on its shortest side and centre-cropped to `image_size` (default 256), and stored as
PNG with its `caption` and `index`. Unreadable files (images, or captions that are not
UTF-8), images smaller than `min_size` on their shortest side and images without a caption
are skipped and counted; the counts are printed at the end of a build, written to
`build_counts.json` beside the data, and returned by `build`. `build_source.json` records the
source and a fingerprint of its files (paths, sizes, modification times, captions) and the
build settings: building again into the same `data_dir` from a changed or another source is
refused instead of silently reusing the old data.
"""
from __future__ import annotations

import csv
import json
import os
import warnings

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from unclip_jax.data import render
from unclip_jax.errors import UserError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
COUNT_KEYS = ("written", "unreadable", "too_small", "no_caption")
UNREADABLE_CAPTION = "\x00unreadable caption"     # list_pairs' mark for a non-UTF-8 .txt


def _read_caption(txt: str) -> str | None:
    if not os.path.isfile(txt):
        return None
    try:
        with open(txt, encoding="utf-8") as f:
            return f.read().strip() or None
    except (UnicodeDecodeError, OSError):
        return UNREADABLE_CAPTION


def list_pairs(source: str) -> list[tuple[str, str | None]]:
    """(image path, caption or None) in a stable order, from a directory or a CSV/Parquet file."""
    if os.path.isdir(source):
        pairs = []
        for root, dirs, files in os.walk(source):
            dirs.sort()
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTS):
                    path = os.path.join(root, f)
                    txt = os.path.splitext(path)[0] + ".txt"
                    pairs.append((path, _read_caption(txt)))
        return pairs
    if not os.path.isfile(source):
        raise UserError(f"image-caption source {source} does not exist; pass a directory of "
                        "images with .txt captions, or a CSV/Parquet file of path,caption")
    base = os.path.dirname(os.path.abspath(source))
    if source.lower().endswith(".parquet"):
        import pyarrow.parquet as pq
        table = pq.read_table(source).to_pydict()
        rows = list(zip(table.get("path", []), table.get("caption", [])))
        if "path" not in table or "caption" not in table:
            raise UserError(f"{source} needs columns 'path' and 'caption'")
    elif source.lower().endswith(".csv"):
        with open(source, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "caption"} <= set(reader.fieldnames):
                raise UserError(f"{source} needs a header with columns 'path' and 'caption'")
            rows = [(r["path"], r["caption"]) for r in reader]
    else:
        raise UserError(f"unknown source {source}; use a directory, a .csv or a .parquet file")
    return [(p if os.path.isabs(p) else os.path.join(base, p), (c or "").strip() or None)
            for p, c in rows]


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → RGB; transparency is composited on white."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode == "I;16" or img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        arr = arr / max(arr.max(), 1.0) * 255.0
        img = Image.fromarray(arr.astype(np.uint8))
    return img.convert("RGB")


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Shortest side → `size` (LANCZOS), then the central size×size square."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.LANCZOS)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_image(path: str, size: int, min_size: int) -> tuple[np.ndarray | None, str]:
    """(uint8 [size, size, 3] or None, outcome) where outcome is 'written'/'unreadable'/'too_small'."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                img.load()
                if min(img.size) < min_size:
                    return None, "too_small"
                rgb = to_rgb(img)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return None, "unreadable"
    return np.asarray(resize_center_crop(rgb, size)), "written"


def source_fingerprint(pairs: list[tuple[str, str | None]]) -> str:
    """sha256 over every pair's path, caption and the image's size and modification time."""
    import hashlib
    h = hashlib.sha256()
    for path, cap in pairs:
        try:
            st = os.stat(path)
            stat = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stat = "missing"
        h.update(json.dumps([path, cap, stat]).encode() + b"\n")
    return h.hexdigest()


class ImageCaptionFolder(tfds.core.GeneratorBasedBuilder):
    """Local image–caption pairs (see module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Pass source=DIR|CSV|PARQUET, or put the images with .txt "
                                    "captions in the manual_dir.")

    def __init__(self, *, source: str | None = None, image_size: int = 256, min_size: int = 64,
                 **kwargs):
        self.source = source
        self.image_size = int(image_size)
        self.min_size = int(min_size)
        self.counts = {k: 0 for k in COUNT_KEYS}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                "caption": tfds.features.Text(),
                "index": tfds.features.Scalar(dtype=np.int64),
            }),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager):
        source = self.source or os.fspath(dl_manager.manual_dir)
        return {"train": self._generate_examples(source)}

    def _generate_examples(self, source: str):
        self.counts = {k: 0 for k in COUNT_KEYS}
        index = 0
        for path, cap in list_pairs(source):
            if cap is None:
                self.counts["no_caption"] += 1
                continue
            if cap == UNREADABLE_CAPTION:
                self.counts["unreadable"] += 1
                continue
            image, outcome = load_image(path, self.image_size, self.min_size)
            self.counts[outcome] += 1
            if image is None:
                continue
            yield index, {"image": render.png_bytes(image), "caption": cap, "index": index}
            index += 1


def build(source: str, data_dir: str, image_size: int = 256, min_size: int = 64,
          verbose: bool = True) -> dict[str, int]:
    """Build `image_caption_folder` from `source` into `data_dir`; returns (and prints) counts."""
    from unclip_jax import atomic, paths
    pairs = list_pairs(source)  # validates the source early with a clear message
    data_dir = paths.resolve(data_dir, "--data_dir")      # local or gs://
    existed = paths.exists(data_dir)
    builder = ImageCaptionFolder(data_dir=data_dir, source=source, image_size=image_size,
                                 min_size=min_size)
    counts_file = paths.join(str(builder.data_dir), "build_counts.json")
    source_file = paths.join(str(builder.data_dir), "build_source.json")
    origin = {"source": os.path.abspath(source), "image_size": int(image_size),
              "min_size": int(min_size), "files": len(pairs),
              "fingerprint": source_fingerprint(pairs)}
    if builder.is_prepared() and paths.isfile(counts_file):
        if paths.isfile(source_file):
            with paths.open(source_file) as f:
                built = json.load(f)
            if built != origin:
                what = ("another source" if built.get("source") != origin["source"] else
                        "other settings" if built.get("files") == origin["files"] and
                        built.get("fingerprint") == origin["fingerprint"] else
                        "a source that has changed since")
                raise UserError(f"{builder.data_dir} holds image_caption_folder built from "
                                f"{what} ({built.get('source')}, {built.get('files')} files, "
                                f"image_size {built.get('image_size')}); pass another "
                                "--data_dir, or delete that directory to rebuild")
        with paths.open(counts_file) as f:
            counts = json.load(f)
    else:
        try:
            builder.download_and_prepare()
        except Exception as e:
            if "No examples were yielded" not in str(e):
                raise
            if not existed:                      # leave no empty dataset tree behind
                paths.rmtree(data_dir)
            found = ", ".join(f"{k}={v}" for k, v in builder.counts.items())
            raise UserError(f"no usable image–caption pair in {source} ({found}); every image "
                            "needs a readable caption and at least --min_size pixels") from None
        counts = dict(builder.counts)
        atomic.write_json(counts_file, counts)
        atomic.write_json(source_file, origin)
    if verbose:
        print("image_caption_folder: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return counts

"""On-disk CLIP embeddings of a dataset split: chunk directories + a manifest.

Layout of an embeddings directory:
  manifest.json        dataset, split, num_examples, chunk_size, num_chunks, complete, dims
  chunk_00000/         z_i.npy f32 [n, D], z_t.npy f32 [n, D], text_states.npy f16 [n, L, W],
  chunk_00001/ ...     text_mask.npy bool [n, L], index.npy int64 [n] (the examples' `index`)

A chunk is written to a temporary sibling directory (`unclip_jax.atomic`) and renamed when
complete, so a directory named `chunk_XXXXX` is always whole; the manifest is replaced
atomically too.

The directory may be a gs:// URL (`unclip_jax.paths`). There a chunk is built locally and
uploaded with `index.npy` last (a chunk counts as written when `index.npy` exists), and a
reader copies each chunk once into a local cache (`UNCLIP_CACHE_DIR`, default
~/.cache/unclip-jax/embeddings) and memory-maps it from there.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import numpy as np

from unclip_jax import atomic, paths
from unclip_jax.errors import UserError

FIELDS = ("z_i", "z_t", "text_states", "text_mask", "index")
MANIFEST = "manifest.json"


def chunk_name(k: int) -> str:
    return f"chunk_{k:05d}"


def chunk_done(out_dir: str, k: int) -> bool:
    if paths.is_remote(out_dir):
        return paths.exists(paths.join(out_dir, chunk_name(k), "index.npy"))
    return os.path.isdir(os.path.join(out_dir, chunk_name(k)))


def write_chunk(out_dir: str, k: int, arrays: dict[str, np.ndarray]) -> str:
    """Atomically write chunk `k` (every FIELDS array); returns its directory."""
    if paths.is_remote(out_dir):
        final = paths.join(out_dir, chunk_name(k))
        with tempfile.TemporaryDirectory(prefix="unclip-chunk-") as local:
            write_chunk(local, k, arrays)
            paths.copy_tree(os.path.join(local, chunk_name(k)), final, last=("index.npy",))
        return final
    final = os.path.join(out_dir, chunk_name(k))
    shutil.rmtree(final + ".tmp", ignore_errors=True)     # left by an older version
    with atomic.build_dir(final) as tmp:
        for name in FIELDS:
            with atomic.open_atomic(os.path.join(tmp, name + ".npy"), "wb") as f:
                np.save(f, arrays[name])
    return final


def write_manifest(out_dir: str, manifest: dict) -> None:
    atomic.write_json(paths.join(out_dir, MANIFEST), manifest)


def read_manifest(out_dir: str) -> dict | None:
    path = paths.join(out_dir, MANIFEST)
    if not paths.isfile(path):
        return None
    with paths.open(path) as f:
        return json.load(f)


def cache_dir() -> str:
    root = os.environ.get("UNCLIP_CACHE_DIR") or os.path.join("~", ".cache", "unclip-jax")
    return os.path.join(paths.resolve(root, "UNCLIP_CACHE_DIR"), "embeddings")


def _local_chunk(directory: str, k: int) -> str:
    """A local directory holding chunk `k` of `directory` (a download for gs://; reused
    while the object sizes match)."""
    src = paths.join(directory, chunk_name(k))
    if not paths.is_remote(directory):
        return src
    key = hashlib.sha256(directory.encode()).hexdigest()[:16]
    dst = os.path.join(cache_dir(), key, chunk_name(k))
    os.makedirs(dst, exist_ok=True)
    for f in FIELDS:
        remote, local = paths.join(src, f + ".npy"), os.path.join(dst, f + ".npy")
        size = paths.epath(remote).stat().length
        if not os.path.isfile(local) or os.path.getsize(local) != size:
            with atomic.open_atomic(local, "wb") as out, paths.open(remote, "rb") as fin:
                shutil.copyfileobj(fin, out, 1 << 22)
    return dst


class EmbeddingStore:
    """Memory-mapped embeddings of one split, looked up by example `index`.

    `lookup(indices int [b]) -> {'z_i' f32 [b,D], 'z_t' f32 [b,D], 'text_states' f32 [b,L,W],
    'text_mask' bool [b,L]}`.
    """

    def __init__(self, directory: str, split: str | None = None, num_examples: int | None = None):
        directory = paths.resolve(directory, "config.data.embeddings_dir")
        manifest = read_manifest(directory)
        if manifest is None:
            raise UserError(
                f"embeddings_dir {directory} has no {MANIFEST}; write it with `unclip-jax embed "
                f"--clip CKPT --data_dir DIR --split {split or 'train'} --out {directory}`")
        if not manifest.get("complete"):
            raise UserError(
                f"embeddings in {directory} are incomplete (interrupted run); rerun the same "
                "`unclip-jax embed` command to finish them")
        if split is not None and manifest["split"] != split:
            raise UserError(
                f"embeddings_dir {directory} holds the {manifest['split']!r} split but the "
                f"{split!r} split is being read; point config.data.embeddings_dir at embeddings "
                f"of {split!r} (`unclip-jax embed --split {split} ...`)")
        if num_examples is not None and manifest["num_examples"] != num_examples:
            raise UserError(
                f"embeddings_dir {directory} has {manifest['num_examples']} examples but split "
                f"{split!r} has {num_examples}; the dataset changed — rerun `unclip-jax embed`")
        self.manifest = manifest
        self.directory = directory
        self.chunks = []
        for k in range(manifest["num_chunks"]):
            d = _local_chunk(directory, k)
            self.chunks.append({f: np.load(os.path.join(d, f + ".npy"), mmap_mode="r")
                                for f in FIELDS})
        index = np.concatenate([np.asarray(c["index"]) for c in self.chunks])
        chunk_of = np.concatenate([np.full(len(c["index"]), k) for k, c in enumerate(self.chunks)])
        row_of = np.concatenate([np.arange(len(c["index"])) for c in self.chunks])
        self._where = {int(i): (int(c), int(r)) for i, c, r in zip(index, chunk_of, row_of)}

    @property
    def embed_dim(self) -> int:
        return int(self.chunks[0]["z_i"].shape[-1])

    def lookup(self, indices) -> dict[str, np.ndarray]:
        try:
            where = [self._where[int(i)] for i in np.asarray(indices).reshape(-1)]
        except KeyError as e:
            raise UserError(f"example index {e} has no embedding in {self.directory}; rerun "
                            "`unclip-jax embed` for this dataset") from None
        out = {}
        for f, dtype in (("z_i", np.float32), ("z_t", np.float32), ("text_states", np.float32),
                         ("text_mask", bool)):
            out[f] = np.stack([self.chunks[c][f][r] for c, r in where]).astype(dtype)
        return out

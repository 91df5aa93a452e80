"""Precompute CLIP embeddings of a dataset split for the prior and decoder stages.

`embed_dataset(clip_dir, data_dir, dataset, split, out_dir)` reads the split in stored order,
encodes images and captions with a CLIP inference checkpoint (`unclip_jax.export`, stage
'clip') — batches sharded over every device of a `parallel.make_mesh` mesh, parameters
replicated — and writes chunk directories + a manifest (`embedding_files`). A rerun after an
interruption keeps finished chunks, redoes a half-written one, and produces the same files.
`tokenizer_for(clip_dir, model_cfg)` finds the tokenizer that goes with a CLIP checkpoint
(also used by `unclip-jax eval-clip`).

CLI: `unclip-jax embed --clip CKPT --data_dir DIR [--dataset unclip_shapes/small]
[--split train] --out DIR`.
"""
from __future__ import annotations

import math
import os

import jax
import numpy as np

from unclip_jax import paths
from unclip_jax.data import degrade, embedding_files as ef, sources
from unclip_jax.data.pipeline import decode
from unclip_jax.errors import UserError


def tokenizer_for(clip_dir: str, model_cfg):
    """The `Tokenizer` that goes with the CLIP inference checkpoint `clip_dir` (`model_cfg`: its
    config.model), padding to the text tower's context length. The first directory holding a
    tokenizer.json wins: CKPT/tokenizer/, CKPT itself, tokenizer/ beside CKPT (a model
    directory's own), then config.model.tokenizer. UserError naming those places when none has
    one."""
    from unclip_jax.clip.tokenizer import Tokenizer
    length = int(model_cfg.text.context_length)
    beside = os.path.join(os.path.dirname(os.path.normpath(clip_dir)), "tokenizer")
    for path in (os.path.join(clip_dir, "tokenizer"), clip_dir, beside,
                 str(model_cfg.get("tokenizer", ""))):
        if path and os.path.isfile(os.path.join(path, "tokenizer.json")):
            return Tokenizer(path, length)
    raise UserError(f"no tokenizer found for the CLIP checkpoint {clip_dir}; put tokenizer.json "
                    "in CKPT/tokenizer/ or beside CKPT (a model directory's tokenizer/), or set "
                    "its config.model.tokenizer")


def embed_dataset(clip_dir: str, data_dir: str, out_dir: str, *, dataset: str = "unclip_shapes",
                  split: str = "train", batch_size: int = 64, chunk_size: int = 1024,
                  tokenizer=None, mesh=None, max_chunks: int | None = None) -> dict:
    """Write the embeddings of `dataset`/`split` to `out_dir`; returns the manifest.

    batch_size is rounded up to a multiple of the device count; `max_chunks` stops after that
    many new chunks (the manifest stays `complete: false`), as an interruption would.
    """
    from unclip_jax import export, parallel
    from unclip_jax.clip.model import clip_encode_images, clip_encode_text, model_config

    params, cfg, _ = export.load(clip_dir, expect_stage="clip")
    model_cfg = model_config(cfg)
    tokenizer = tokenizer or tokenizer_for(clip_dir, model_cfg)
    builder = sources.builder_for(dataset, data_dir)
    n = sources.num_examples(builder, split)
    mesh = mesh or parallel.make_mesh({"data": -1})
    ndev = mesh.devices.size
    batch_size = int(math.ceil(batch_size / ndev) * ndev)
    chunk_size = int(math.ceil(chunk_size / batch_size) * batch_size)
    num_chunks = max(1, math.ceil(n / chunk_size))
    out_dir = paths.resolve(out_dir, "--out")
    manifest = dict(format=1, dataset=dataset, data_dir=paths.resolve(data_dir, "--data_dir"),
                    split=split, num_examples=n, chunk_size=chunk_size, num_chunks=num_chunks,
                    clip=paths.resolve(clip_dir, "--clip"), embed_dim=int(model_cfg.embed_dim),
                    text_len=int(model_cfg.text.context_length),
                    text_width=int(model_cfg.text.width), complete=False)
    paths.makedirs(out_dir)
    old = ef.read_manifest(out_dir)
    if old is not None and any(old.get(k) != manifest[k] for k in
                               ("dataset", "split", "num_examples", "chunk_size", "clip")):
        raise UserError(f"{out_dir} already holds embeddings of another run ({old['dataset']} "
                        f"{old['split']}, clip {old['clip']}); pass an empty --out directory")
    ef.write_manifest(out_dir, manifest)

    params = jax.device_put(params, parallel.replicated(mesh))
    size = int(model_cfg.vision.image_size)
    records = sources.read_records(builder, split).map(
        lambda ex: {"image": degrade.resize(
            decode(ex["image"]), size), "caption": ex["caption"], "index": ex["index"]})

    def encode(images, captions):
        ids, _ = tokenizer([c.decode("utf-8") for c in captions])
        ids = np.asarray(ids, np.int32)
        m = len(images)
        pad = (-m) % ndev
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, 0)])
            ids = np.concatenate([ids, np.repeat(ids[-1:], pad, 0)])
        img = jax.device_put(images, parallel.batch_sharding(mesh, 4))
        tok = jax.device_put(ids, parallel.batch_sharding(mesh, 2))
        with parallel.activate(mesh):
            zi = clip_encode_images(params, model_cfg, img)["embeds"]
            t = clip_encode_text(params, model_cfg, tok)
        return {"z_i": np.asarray(zi, np.float32)[:m],
                "z_t": np.asarray(t["embeds"], np.float32)[:m],
                "text_states": np.asarray(t["states"]).astype(np.float16)[:m],
                "text_mask": np.asarray(t["mask"]).astype(bool)[:m]}

    written = 0
    for k in range(num_chunks):
        if ef.chunk_done(out_dir, k):
            continue
        if max_chunks is not None and written >= max_chunks:
            return manifest
        ds = records.skip(k * chunk_size).take(chunk_size).batch(batch_size)
        parts = []
        for batch in ds.as_numpy_iterator():
            out = encode(batch["image"], batch["caption"])
            out["index"] = batch["index"].astype(np.int64)
            parts.append(out)
        ef.write_chunk(out_dir, k, {f: np.concatenate([p[f] for p in parts]) for f in ef.FIELDS})
        written += 1
    manifest["complete"] = True
    ef.write_manifest(out_dir, manifest)
    return manifest

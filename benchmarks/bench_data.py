"""Input-pipeline throughput (examples/s) per stage on the small unclip_shapes build.

  python benchmarks/bench_data.py [--data_dir DIR] [--batches 20] [--shapes_build 0]

Builds unclip_shapes/small, writes random embeddings of the shapes config's sizes for the
prior/decoder stages (their cost is the lookup, not the values), times each
stage's `make_pipeline` after one warm-up batch, optionally times an N-example shapes build
(`--shapes_build 5000`), and rewrites the "## Input pipelines" section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from unclip_jax.configs import shapes as shapes_cfg  # noqa: E402
from unclip_jax.data import embedding_files as ef, shapes, sources  # noqa: E402
from unclip_jax.data.pipeline import make_pipeline  # noqa: E402

SECTION = "## Input pipelines"


def caption_tokenizer(builder, directory):
    """The clip stage's real tokenizer: a BPE built from the train captions (as the README's
    shapes recipe does), so the benchmark pays real tokenisation."""
    from unclip_jax.clip.tokenizer import Tokenizer, build_tokenizer
    caps = [c.decode() for c in sources.read_records(builder, "train")
            .map(lambda e: e["caption"]).as_numpy_iterator()]
    build_tokenizer(caps, 1024, directory, context_length=shapes_cfg.TEXT_LEN)
    return Tokenizer(directory, context_length=shapes_cfg.TEXT_LEN)


def write_embeddings(directory, builder, split, d=shapes_cfg.EMBED_DIM,
                     length=shapes_cfg.TEXT_LEN, width=shapes_cfg.TEXT_WIDTH):
    """Random embeddings with the shapes config's sizes for every example of `split`."""
    n = sources.num_examples(builder, split)
    rng = np.random.default_rng(0)
    ef.write_chunk(directory, 0, {
        "z_i": rng.standard_normal((n, d)).astype(np.float32),
        "z_t": rng.standard_normal((n, d)).astype(np.float32),
        "text_states": rng.standard_normal((n, length, width)).astype(np.float16),
        "text_mask": np.ones((n, length), bool), "index": np.arange(n)})
    ef.write_manifest(directory, dict(split=split, num_examples=n, num_chunks=1, complete=True,
                                      dataset="unclip_shapes/small", chunk_size=n))


def bench(stage, data_dir, emb, batches, tokenizer):
    cfg = shapes_cfg.get_config(stage)
    with cfg.unlocked():
        cfg.data.name = "unclip_shapes/small"
        cfg.data.data_dir = data_dir
        cfg.data.embeddings_dir = emb
    it = make_pipeline(cfg, process_index=0, process_count=1, tokenizer=tokenizer)
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t
    return cfg.train.batch_size * batches / dt, cfg


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "unclip_bench_data"))
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--shapes_build", type=int, default=0,
                   help="also time building N training examples (extrapolated to 100k)")
    p.add_argument("--doc", default="docs/benchmarks.md")
    a = p.parse_args()
    builder = shapes.build(a.data_dir, "small")
    emb = os.path.join(a.data_dir, "embeddings_train")
    shutil.rmtree(emb, ignore_errors=True)          # rewritten on every run
    write_embeddings(emb, builder, "train")
    tokenizer = caption_tokenizer(builder, os.path.join(a.data_dir, "tokenizer"))
    rows = []
    for stage in ("clip", "prior", "decoder", "upsampler1", "upsampler2"):
        rate, cfg = bench(stage, a.data_dir, emb, a.batches, tokenizer)
        d = cfg.data
        what = {"clip": f"{d.image_size}px + BPE tokens", "prior": "embeddings only",
                "decoder": f"{d.image_size}px + embeddings",
                "upsampler1": f"{d.image_size}px, blur, crop {d.crop_size}",
                "upsampler2": f"{d.image_size}px, BSR, crop {d.crop_size}"}[stage]
        rows.append((stage, what, cfg.train.batch_size, rate))
        print(f"{stage:11s} {rate:9.1f} examples/s ({what})", flush=True)
    build_line = ""
    if a.shapes_build:
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            b = shapes.UnclipShapes(data_dir=tmp, config="small")
            list(b._generate_examples("train", a.shapes_build))
        gen = time.perf_counter() - t
        build_line = (f"\nShapes generation (render + PNG encode), {a.shapes_build} examples: "
                      f"{gen:.1f} s → extrapolated 110k ('default': 100k + 5k + 5k) "
                      f"≈ {gen / a.shapes_build * 110_000 / 60:.1f} min before TFDS writing.\n")
    cmd = "python benchmarks/bench_data.py" + (f" --shapes_build {a.shapes_build}"
                                               if a.shapes_build else "")
    lines = [SECTION, "", f"Measured with `{cmd}` on this machine (CPU, shared), small build, "
             f"{a.batches} batches after one warm-up, one process.", "",
             "| stage | work per example | batch | examples/s |", "|---|---|---|---|"]
    lines += [f"| {s} | {w} | {b} | {r:.0f} |" for s, w, b, r in rows]
    text = "\n".join(lines) + "\n" + build_line
    update_doc(a.doc, text)


def update_doc(path, section):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    old = open(path).read() if os.path.isfile(path) else "# Benchmarks\n"
    if SECTION in old:
        head, rest = old.split(SECTION, 1)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1:] if nxt >= 0 else ""
        new = head + section + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(new)


if __name__ == "__main__":
    main()

"""CLIP-embedding precompute: matches clip_encode_*, resumes to identical files, feeds the prior."""
import os
import shutil

import jax
import numpy as np
import pytest
import tensorflow as tf

from unclip_jax.configs import shapes as shapes_cfg
from unclip_jax import export
from unclip_jax.clip.model import CLIP, clip_encode_images, clip_encode_text
from unclip_jax.clip.tokenizer import Tokenizer, build_tokenizer
from unclip_jax.data import embed, embedding_files as ef, shapes, sources
from unclip_jax.data.pipeline import decode, make_pipeline

SPLIT = "validation"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    data_dir = str(base / "shapes_data")
    builder = shapes.build(data_dir, "small")
    cfg = shapes_cfg.get_config("clip")
    with cfg.unlocked():
        cfg.model.embed_dim = 16
        cfg.model.text.update(dict(vocab_size=160, context_length=48, width=16, layers=1,
                                   heads=2))
        cfg.model.vision.update(dict(image_size=16, patch_size=8, width=16, layers=1, heads=2))
    ckpt = str(base / "tiny_clip")
    captions = [e["caption"].decode() for e in
                builder.as_dataset(split="train").take(128).as_numpy_iterator()]
    build_tokenizer(captions, 160, os.path.join(ckpt, "tokenizer"), context_length=48)
    model = CLIP.from_config(cfg.model)
    params = model.init(jax.random.key(0), np.zeros((1, 48), np.int32),
                        np.zeros((1, 16, 16, 3), np.float32))
    params = jax.tree.map(np.asarray, jax.tree.map(lambda x: getattr(x, "value", x), params,
                                                   is_leaf=lambda x: hasattr(x, "value")))
    export.save(ckpt, params["params"], cfg)
    return data_dir, ckpt, cfg


def _run(setup, out, **kw):
    data_dir, ckpt, _ = setup
    return embed.embed_dataset(ckpt, data_dir, out, dataset="unclip_shapes/small", split=SPLIT,
                               batch_size=8, chunk_size=16, **kw)


def _files(d):
    return {f"{c}/{f}": np.load(os.path.join(d, c, f))
            for c in sorted(os.listdir(d)) if c.startswith("chunk_")
            for f in sorted(os.listdir(os.path.join(d, c)))}


def test_resume_after_interruption_gives_the_same_files(setup, tmp_path, devices8):
    full = _run(setup, str(tmp_path / "full"))
    assert full["complete"] and full["num_chunks"] == 4
    part = str(tmp_path / "part")
    m = _run(setup, part, max_chunks=1)                    # interrupted after one chunk
    assert not m["complete"] and sorted(os.listdir(part)) == ["chunk_00000", "manifest.json"]
    os.makedirs(os.path.join(part, "chunk_00001.tmp"))     # a half-written chunk
    open(os.path.join(part, "chunk_00001.tmp", "z_i.npy"), "wb").write(b"partial")
    with pytest.raises(Exception, match="incomplete"):
        make_pipeline(_prior_cfg(setup, part), SPLIT, process_index=0, process_count=1)
    assert _run(setup, part)["complete"]
    a, b = _files(str(tmp_path / "full")), _files(part)
    assert a.keys() == b.keys() and not any(n.endswith(".tmp") for n in os.listdir(part))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert a["chunk_00000/text_states.npy"].dtype == np.float16


def _prior_cfg(setup, emb):
    data_dir, _, clip_cfg = setup
    cfg = shapes_cfg.get_config("prior")
    with cfg.unlocked():
        cfg.data.name = "unclip_shapes/small"
        cfg.data.data_dir = data_dir
        cfg.data.embeddings_dir = emb
        cfg.train.batch_size = 8
        cfg.model.update(dict(embed_dim=16, text_len=48, text_width=16))
    return cfg


def test_stored_embeddings_equal_clip_encode(setup, tmp_path):
    data_dir, ckpt, cfg = setup
    out = str(tmp_path / "emb")
    _run(setup, out)
    store = ef.EmbeddingStore(out, split=SPLIT)
    params, _, _ = export.load(ckpt, "clip")
    builder = sources.builder_for("unclip_shapes/small", data_dir)
    ex = list(sources.read_records(builder, SPLIT).take(8).as_numpy_iterator())
    images = np.stack([tf.image.resize(decode(e["image"]), (16, 16), "area", antialias=True)
                       for e in ex])
    idx = np.array([e["index"] for e in ex])
    got = store.lookup(idx)
    want_i = np.asarray(clip_encode_images(params, cfg.model, images)["embeds"])
    np.testing.assert_allclose(got["z_i"], want_i, rtol=1e-4, atol=1e-5)
    ids, _ = Tokenizer(os.path.join(ckpt, "tokenizer"), 48)([e["caption"].decode() for e in ex])
    t = clip_encode_text(params, cfg.model, ids)
    np.testing.assert_allclose(got["z_t"], np.asarray(t["embeds"]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["text_states"], np.asarray(t["states"]), rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(got["text_mask"], np.asarray(t["mask"]))
    # and the prior pipeline serves them
    b = next(make_pipeline(_prior_cfg(setup, out), SPLIT, process_index=0, process_count=1))
    assert b["z_i"].shape == (8, 16) and b["text_states"].shape == (8, 48, 16)


def test_embed_cli_and_mismatch(setup, tmp_path):
    from unclip_jax.cli import main
    data_dir, ckpt, _ = setup
    out = str(tmp_path / "cli")
    assert main(["embed", "--clip", ckpt, "--data_dir", data_dir, "--dataset",
                 "unclip_shapes/small", "--split", SPLIT, "--out", out, "--batch_size", "16",
                 "--chunk_size", "32"]) == 0
    assert ef.read_manifest(out)["complete"]
    # reusing the directory for another split is refused with a clear message
    assert main(["embed", "--clip", ckpt, "--data_dir", data_dir, "--dataset",
                 "unclip_shapes/small", "--split", "test_heldout", "--out", out]) == 2
    shutil.rmtree(out)

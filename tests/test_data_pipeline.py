"""Per-stage pipelines: shapes, per-process disjoint shards, exact resumption, clear errors."""
import json

import numpy as np
import pytest

from unclip_jax import stages
from unclip_jax.configs import shapes as shapes_cfg
from unclip_jax.data import embedding_files as ef, shapes
from unclip_jax.data.pipeline import make_pipeline
from unclip_jax.errors import UserError


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.getbasetemp() / "shapes_data")
    shapes.build(d, "small")
    return d


def char_tokenizer(captions, length=32):
    ids = np.zeros((len(captions), length), np.int32)
    for i, c in enumerate(captions):
        b = [1 + ord(ch) % 200 for ch in c][:length]
        ids[i, :len(b)] = b
    return ids, ids > 0


def config(stage, data_dir, batch_size=16, **data):
    cfg = shapes_cfg.get_config(stage)
    with cfg.unlocked():
        cfg.data.name = "unclip_shapes/small"
        cfg.data.data_dir = data_dir
        cfg.data.shuffle_buffer = 64
        cfg.data.update(data)
        cfg.train.batch_size = batch_size
    return cfg


@pytest.mark.parametrize("stage", stages.STAGES)
def test_synthetic_shapes_and_determinism(stage):
    cfg = shapes_cfg.get_config(stage)
    with cfg.unlocked():
        cfg.data.name = "synthetic"
        cfg.train.batch_size = 4
    it = make_pipeline(cfg, process_index=0, process_count=2)
    b = next(it)
    m, d = cfg.model, cfg.data
    if stage == "clip":
        expect = {"image": (2, d.image_size, d.image_size, 3), "tokens": (2, m.text.context_length)}
    elif stage in ("prior", "ar_prior"):
        expect = {"z_i": (2, m.embed_dim), "z_t": (2, m.embed_dim),
                  "text_states": (2, m.text_len, m.text_width), "text_mask": (2, m.text_len)}
    elif stage == "decoder":
        expect = {"image": (2, 16, 16, 3), "z_i": (2, m.embed_dim),
                  "text_states": (2, m.text_len, m.text_width), "text_mask": (2, m.text_len)}
    else:
        c, r = d.crop_size, d.image_size // d.low_res_size
        expect = {"image": (2, c, c, 3), "low_res": (2, c // r, c // r, 3)}
    assert {k: v.shape for k, v in b.items()} == expect
    assert set(stages.CONDITIONED_ON[stage]) <= set(b)     # what the stage is conditioned on
    assert b.get("image", np.zeros(1)).max() <= 1
    it2 = make_pipeline(cfg, process_index=0, process_count=2)
    it2.set_state(json.loads(json.dumps(it.get_state())))
    nxt = next(it)
    assert all(np.array_equal(nxt[k], v) for k, v in next(it2).items())


def test_processes_see_disjoint_examples_covering_the_split(data_dir):
    cfg = config("clip", data_dir, batch_size=32)
    seen = []
    for p in range(2):
        it = make_pipeline(cfg, process_index=p, process_count=2, tokenizer=char_tokenizer,
                           keep_index=True)
        idx = np.concatenate([next(it)["index"] for _ in range(384 // 32)])
        assert len(set(idx)) == len(idx) == 192          # one epoch, no repeats
        seen.append(set(idx.tolist()))
    assert not (seen[0] & seen[1])
    assert seen[0] | seen[1] == set(range(384))


def test_clip_batch_contents(data_dir):
    it = make_pipeline(config("clip", data_dir), process_index=0, process_count=1,
                       tokenizer=char_tokenizer)
    b = next(it)
    assert b["image"].shape == (16, 64, 64, 3) and b["image"].dtype == np.float32
    assert -1 <= b["image"].min() < 0 < b["image"].max() <= 1
    assert b["tokens"].dtype == np.int32 and b["tokens"].shape == (16, 32)
    assert set(b) == {"image", "tokens"}


def _batches(it, k):
    return [next(it) for _ in range(k)]


def _same(a, b):
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def test_resume_is_exact_across_an_epoch_boundary(data_dir):
    cfg = config("upsampler1", data_dir, batch_size=64)    # blur + random crops, seeded per example
    it = make_pipeline(cfg, process_index=0, process_count=1, keep_index=True)
    _batches(it, 5)                                         # 6 batches per epoch
    state = json.loads(json.dumps(it.get_state()))
    assert state["batches"] == 5
    expected = _batches(it, 3)
    resumed = make_pipeline(cfg, process_index=0, process_count=1, keep_index=True)
    resumed.set_state(state)
    assert _same(_batches(resumed, 3), expected)
    # a fresh run with the same seed repeats itself; another seed does not
    again = make_pipeline(cfg, process_index=0, process_count=1, keep_index=True)
    first = _batches(again, 1)[0]
    other = next(make_pipeline(cfg, process_index=0, process_count=1, seed=123, keep_index=True))
    assert not np.array_equal(first["index"], other["index"])
    # epoch 2 is a different permutation of the same examples
    e1 = np.concatenate([first["index"]] + [b["index"] for b in _batches(again, 5)])
    e2 = np.concatenate([b["index"] for b in _batches(again, 6)])
    assert sorted(e1) == sorted(e2) == list(range(384)) and not np.array_equal(e1, e2)


def test_resume_is_exact_with_bsr(data_dir):
    cfg = config("upsampler2", data_dir, batch_size=4)     # random BSR chain per example
    it = make_pipeline(cfg, process_index=1, process_count=2)
    _batches(it, 2)
    state = it.get_state()
    expected = _batches(it, 2)
    resumed = make_pipeline(cfg, process_index=1, process_count=2)
    resumed.set_state(state)
    assert _same(_batches(resumed, 2), expected)


def test_state_from_another_layout_is_refused(data_dir):
    cfg = config("upsampler1", data_dir)
    a = make_pipeline(cfg, process_index=0, process_count=2)
    b = make_pipeline(cfg, process_index=1, process_count=2)
    with pytest.raises(UserError, match="same data config and process layout"):
        b.set_state(a.get_state())


def _fake_embeddings(directory, split, n, d=128, length=32, width=128):
    """index i has z_i = i, z_t = -i, text_states = i / 1000."""
    idx = np.arange(n)
    ef.write_chunk(directory, 0, {
        "z_i": np.repeat(idx[:, None], d, 1).astype(np.float32),
        "z_t": -np.repeat(idx[:, None], d, 1).astype(np.float32),
        "text_states": np.broadcast_to((idx / 1000)[:, None, None], (n, length, width)).astype(np.float16),
        "text_mask": np.ones((n, length), bool), "index": idx})
    ef.write_manifest(directory, dict(split=split, num_examples=n, num_chunks=1, complete=True,
                                      dataset="unclip_shapes/small", chunk_size=n))


def test_decoder_and_prior_join_embeddings_by_index(data_dir, tmp_path):
    _fake_embeddings(str(tmp_path), "validation", 64)
    cfg = config("decoder", data_dir, batch_size=8, embeddings_dir=str(tmp_path))
    b = next(make_pipeline(cfg, "validation", process_index=0, process_count=1, keep_index=True))
    assert b["image"].shape == (8, 16, 16, 3)
    np.testing.assert_array_equal(b["z_i"][:, 0], b["index"])
    np.testing.assert_allclose(b["text_states"][:, 3, 5], b["index"] / 1000, rtol=1e-3)
    assert b["text_states"].dtype == np.float32 and b["text_mask"].dtype == bool
    cfg = config("prior", data_dir, batch_size=8, embeddings_dir=str(tmp_path))
    b = next(make_pipeline(cfg, "validation", process_index=0, process_count=1))
    assert set(b) == {"z_i", "z_t", "text_states", "text_mask"}
    np.testing.assert_array_equal(b["z_t"], -b["z_i"])
    # the §5.1 baseline decoder reads the caption's z_t in the z_i slot
    cfg = config("decoder", data_dir, batch_size=8, embeddings_dir=str(tmp_path),
                 decoder_embedding="text")
    b = next(make_pipeline(cfg, "validation", process_index=0, process_count=1, keep_index=True))
    assert "z_t" not in b
    np.testing.assert_array_equal(b["z_i"][:, 0], -b["index"])


def test_only_a_decoder_with_a_caption_encoder_reads_the_captions(data_dir, tmp_path):
    """A decoder's batch carries no caption; with model.caption_vocab > 0 it carries each
    example's caption tokenized (`caption_ids`), joined by index like the embeddings."""
    from unclip_jax.data import sources
    _fake_embeddings(str(tmp_path), "validation", 64)
    cfg = config("decoder", data_dir, batch_size=8, embeddings_dir=str(tmp_path))
    b = next(make_pipeline(cfg, "validation", process_index=0, process_count=1, keep_index=True))
    assert set(b) == {"image", "index", "z_i", "text_states", "text_mask"}
    with cfg.unlocked():
        cfg.model.caption_vocab, cfg.model.caption_len = 256, 32

    def tok(captions):                  # the fake embeddings' mask is all True
        return char_tokenizer(captions)[0], np.ones((len(captions), 32), bool)
    b = next(make_pipeline(cfg, "validation", process_index=0, process_count=1, keep_index=True,
                           tokenizer=tok))
    records = sources.read_records(sources.builder_for("unclip_shapes/small", data_dir),
                                   "validation")
    caption = {int(e["index"]): e["caption"].decode() for e in records.as_numpy_iterator()}
    assert b["caption_ids"].dtype == np.int32
    np.testing.assert_array_equal(b["caption_ids"], tok([caption[int(i)] for i in b["index"]])[0])


def test_bad_input_messages(data_dir, tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'imagenet'.*choose one of"):
        make_pipeline(config("clip", data_dir, name="imagenet"), process_index=0, process_count=1)
    with pytest.raises(UserError, match="does not exist; build the dataset first"):
        make_pipeline(config("clip", str(tmp_path / "missing")), process_index=0, process_count=1)
    with pytest.raises(UserError, match="data_dir is empty"):
        make_pipeline(config("clip", ""), process_index=0, process_count=1)
    with pytest.raises(UserError, match="not built in"):
        make_pipeline(config("clip", str(tmp_path)), process_index=0, process_count=1)
    _fake_embeddings(str(tmp_path / "emb"), "validation", 64)
    cfg = config("prior", data_dir, embeddings_dir=str(tmp_path / "emb"))
    with pytest.raises(UserError, match="holds the 'validation' split but the 'train' split"):
        make_pipeline(cfg, "train", process_index=0, process_count=1)
    cfg = config("decoder", data_dir, embeddings_dir=str(tmp_path / "emb"),
                 decoder_embedding="caption")
    with pytest.raises(UserError, match="decoder_embedding='caption'; choose 'image'"):
        make_pipeline(cfg, "validation", process_index=0, process_count=1)
    with pytest.raises(UserError, match="run `unclip-jax embed"):
        make_pipeline(config("prior", data_dir), process_index=0, process_count=1)
    with pytest.raises(UserError, match="not divisible by the 3 processes"):
        make_pipeline(config("upsampler1", data_dir), process_index=0, process_count=3)
    with pytest.raises(UserError, match="crop_size=30 must be"):
        make_pipeline(config("upsampler1", data_dir, crop_size=30), process_index=0,
                      process_count=1)
    with pytest.raises(UserError, match="degradation='jpeg'"):
        make_pipeline(config("upsampler1", data_dir, degradation="jpeg"), process_index=0,
                      process_count=1)
    with pytest.raises(UserError, match="split 'test' does not exist"):
        make_pipeline(config("upsampler1", data_dir), "test", process_index=0, process_count=1)

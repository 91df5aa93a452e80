"""Hard-negative captions (one attribute of the scene changed), their place in the CLIP loss and
pipeline, and the zero-shot probes that score a CLIP on the same attributes."""
import json

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unclip_jax.clip.loss import contrastive_loss
from unclip_jax.data import hard_negatives as hn
from unclip_jax.data import render, shapes
from unclip_jax.errors import UserError
from unclip_jax.eval import clip_zeroshot as zs

SCENES = [hn.scene(0, "train", i) for i in range(60)]


def _diff(a, b):
    """{(object index, attribute)} that differ between two equally long object lists."""
    return {(j, k) for j, (x, y) in enumerate(zip(a, b)) for k in hn.ATTRS if x[k] != y[k]}


@pytest.mark.parametrize("kind", hn.KINDS)
def test_each_edit_changes_only_its_kind(kind):
    rng = np.random.default_rng(0)
    applied = 0
    for objs, _, _ in SCENES:
        new = hn.edit(objs, kind, rng)
        if new is None:
            # only binding can fail: one object, or every swap would make a held-out pair
            assert kind == "binding"
            continue
        applied += 1
        assert all((o["colour"], o["shape"]) not in render.HELDOUT_PAIRS for o in new)
        assert 1 <= len(new) <= 3 and len({o["position"] for o in new}) == len(new)
        if kind == "count":
            assert abs(len(new) - len(objs)) == 1
            continue
        d = _diff(objs, new)
        if kind == "binding":
            (a, k), (b, k2) = sorted(d)
            assert k == k2 and (objs[a][k], objs[b][k]) == (new[b][k], new[a][k])
        else:
            assert len(d) == 1 and next(iter(d))[1] == kind
    assert applied > 20


def test_scene_negatives_keep_template_and_differ():
    rng = np.random.default_rng(1)
    for objs, bg, cap in SCENES[:30]:
        assert render.caption(objs, bg, hn.template_of(cap, bg)) == cap
        negs = hn.scene_negatives(objs, bg, cap, 4, rng)
        assert len(negs) == 4 and cap not in negs
        t = hn.template_of(cap, bg)
        assert all(hn.template_of(n, bg) == t for n in negs)
    with pytest.raises(UserError, match="choose from"):
        hn.parse_kinds("colour,texture")
    one = [s for s in SCENES if len(s[0]) == 1][0]
    with pytest.raises(UserError, match="no hard negative"):
        hn.scene_negatives(*one, 2, rng, kinds=("binding",))


def test_loss_with_hard_negatives():
    rng = np.random.default_rng(0)
    t, i = (jnp.asarray(rng.standard_normal((6, 8)), jnp.float32) for _ in range(2))
    neg = jnp.asarray(rng.standard_normal((12, 8)), jnp.float32)
    scale = jnp.log(10.0)
    base, m0 = contrastive_loss(t, i, scale)
    loss, m = contrastive_loss(t, i, scale, negatives=neg)
    n = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)     # noqa: E731
    logits = 10.0 * n(i) @ n(jnp.concatenate([t, neg])).T
    labels = jnp.arange(6)
    i2t = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    t2i = optax.softmax_cross_entropy_with_integer_labels(logits[:, :6].T, labels).mean()
    np.testing.assert_allclose(loss, 0.5 * (i2t + t2i), rtol=1e-5)
    assert loss > base and "accuracy_hard" in m and "accuracy_hard" not in m0
    # a negative equal to each image's own caption ties it: never counted as beaten
    _, m_same = contrastive_loss(t, i, scale, negatives=t)
    assert float(m_same["accuracy_hard"]) == 0.0


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("hn_data"))
    shapes.build(d, "small")
    return d


def test_clip_pipeline_emits_negatives_of_each_scene(small_data):
    from unclip_jax.configs import shapes as shapes_cfg
    from unclip_jax.data.pipeline import make_pipeline

    cfg = shapes_cfg.get_config("clip2")
    texts = {}

    def tok(captions):            # records what it was asked, ids = caption number
        ids = np.zeros((len(captions), 4), np.int32)
        for r, c in enumerate(captions):
            ids[r, 0] = texts.setdefault(c, len(texts) + 1)
        return ids, ids > 0

    with cfg.unlocked():
        cfg.data.update(name="unclip_shapes/small", data_dir=small_data, shuffle_buffer=64,
                        hard_negatives=3)
        cfg.train.batch_size = 8
    it = make_pipeline(cfg, process_index=0, process_count=1, tokenizer=tok, keep_index=True)
    b = next(it)
    assert b["neg_tokens"].shape == (8, 3, 4) and b["tokens"].shape == (8, 4)
    assert set(b) == {"image", "tokens", "neg_tokens", "index"}
    by_id = {v: k for k, v in texts.items()}
    for r in range(8):
        objs, bg, cap = hn.scene(0, "train", int(b["index"][r]))
        assert by_id[b["tokens"][r, 0]] == cap
        for k in range(3):
            neg = by_id[b["neg_tokens"][r, k, 0]]
            assert neg != cap and hn.template_of(neg, bg) == hn.template_of(cap, bg)
    # resumable: the same negatives after set_state
    nxt = next(it)
    it2 = make_pipeline(cfg, process_index=0, process_count=1, tokenizer=tok, keep_index=True)
    it2.set_state(json.loads(json.dumps({**it.get_state(), "batches": 1})))
    assert np.array_equal(next(it2)["neg_tokens"], nxt["neg_tokens"])


def test_zero_shot_probes_with_an_oracle_and_a_blind_encoder():
    def oracle(texts):            # the text embedding is the caption's hash direction
        return np.stack([np.random.default_rng(abs(hash(t)) % 2 ** 32).standard_normal(16)
                         for t in texts])

    images = oracle([cap for _, _, cap in SCENES])
    acc = zs.score(images, oracle, SCENES)
    for p in zs.PROBES:
        assert acc[p] == 1.0 and acc[p + "_n"] > 0, p
    assert acc["count_n"] == len(SCENES)

    def blind(texts):             # ignores the caption: every candidate ties, argmax picks 0
        return np.ones((len(texts), 16))
    acc = zs.score(np.ones((len(SCENES), 16)), blind, SCENES, probes=("count", "binding"))
    counts = np.array([len(o) for o, _, _ in SCENES])
    assert acc["count"] == pytest.approx(np.mean(counts == 1)) and acc["binding"] == 1.0
    texts, true = zs.candidates(*SCENES[0], "count", np.random.default_rng(0))
    assert len(texts) == 3 and texts[true] == SCENES[0][2]

"""unclip_shapes builder: declared features, captions vs attributes, held-out split, determinism."""
import os
import re

import numpy as np
import pytest

from unclip_jax.data import render, shapes


@pytest.fixture(scope="session")
def shapes_builder(tmp_path_factory):
    return shapes.build(str(tmp_path_factory.getbasetemp() / "shapes_data"), "small")


def _examples(builder, split):
    return list(builder.as_dataset(split=split, shuffle_files=False).as_numpy_iterator())


def test_features_and_split_sizes(shapes_builder):
    info = shapes_builder.info
    assert set(info.features.keys()) == {"image", "caption", "objects", "background",
                                         "num_objects", "index"}
    cfg = shapes_builder.builder_config
    assert {k: v.num_examples for k, v in info.splits.items()} == {
        "train": cfg.num_train, "validation": cfg.num_validation, "test_heldout": cfg.num_test}
    ex = _examples(shapes_builder, "validation")
    assert sorted(e["index"] for e in ex) == list(range(cfg.num_validation))
    for e in ex[:8]:
        assert e["image"].shape == (256, 256, 3) and e["image"].dtype == np.uint8
        assert 1 <= e["num_objects"] <= 3 and len(e["objects"]["shape"]) == e["num_objects"]
        # anti-aliased edges: more than the background + object colours appear
        assert len(np.unique(e["image"].reshape(-1, 3), axis=0)) > e["num_objects"] + 1


def test_caption_names_every_attribute(shapes_builder):
    feats = shapes_builder.info.features
    ob = feats["objects"].feature
    for e in _examples(shapes_builder, "validation"):
        cap = e["caption"].decode()
        n = int(e["num_objects"])
        positions = []
        for k in range(n):
            shape = ob["shape"].int2str(e["objects"]["shape"][k])
            colour = ob["colour"].int2str(e["objects"]["colour"][k])
            size = ob["size"].int2str(e["objects"]["size"][k])
            pos = ob["position"].int2str(e["objects"]["position"][k])
            positions.append(pos)
            # "<size> <colour> <shape> <preposition> [the] <position words>[ corner]"
            pattern = rf"\b{size} {colour} {shape} (in|at|on) (the )?{pos}( corner)?\b"
            assert re.search(pattern, cap), (pattern, cap)
        assert len(set(positions)) == n           # one object per grid cell
        assert cap.count(" a ") + cap.startswith("a ") >= n
        bg = feats["background"].int2str(e["background"])
        if "background" in cap or "picture" in cap:
            assert bg in cap


def _pairs(builder, split):
    ob = builder.info.features["objects"].feature
    out = []
    for e in _examples(builder, split):
        out.append({(ob["colour"].int2str(c), ob["shape"].int2str(s))
                    for c, s in zip(e["objects"]["colour"], e["objects"]["shape"])})
    return out


def test_heldout_pairs_only_in_test_heldout(shapes_builder):
    held = set(render.HELDOUT_PAIRS)
    for split in ("train", "validation"):
        assert all(not (p & held) for p in _pairs(shapes_builder, split)), split
    test = _pairs(shapes_builder, "test_heldout")
    assert all(p & held for p in test)
    assert set().union(*test) >= held        # every held-out pair shows up


def test_same_seed_same_images_via_cli(shapes_builder, tmp_path):
    from unclip_jax.cli import main
    assert main(["data", "build", "shapes", "--data_dir", str(tmp_path), "--config", "small"]) == 0
    other = shapes.UnclipShapes(data_dir=str(tmp_path), config="small")
    a = {e["index"]: e for e in _examples(shapes_builder, "test_heldout")}
    b = {e["index"]: e for e in _examples(other, "test_heldout")}
    assert a.keys() == b.keys()
    for i in a:
        assert np.array_equal(a[i]["image"], b[i]["image"]) and a[i]["caption"] == b[i]["caption"]
    # and a different seed gives different scenes
    caps = [[render.sample_scene(seed, "train", i)["caption"] for i in range(5)] for seed in (0, 1)]
    assert caps[0] != caps[1]


def test_unknown_config_message(tmp_path):
    with pytest.raises(ValueError, match="choose one of"):
        shapes.build(str(tmp_path), "huge")

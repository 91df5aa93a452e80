"""HF CLIP import: parity with transformers' PyTorch CLIPModel, CLI round trip, bad checkpoints.

The references are the stored ones (tests/golden/, no torch) and, under `-m parity`, the same
tiny CLIPModels built and run with torch here (tests/references.py)."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import references as R
from unclip_jax import cli, export
from unclip_jax.clip.convert import load_hf_clip
from unclip_jax.clip.model import CLIP
from unclip_jax.errors import CheckpointError

CTX, IMG = R.CLIP_CTX, R.CLIP_IMG


def hf_clip(tmp_path, source="golden", act="quick_gelu", eos=2, fmt="safetensors"):
    """A tiny HF CLIP checkpoint directory and a function seed → (tokens, images, the
    original's outputs on them): stored (golden) or built and run with torch (live)."""
    if source == "golden":
        src = R.copy_golden(f"clip_{act}_{eos}", str(tmp_path / f"hf_{act}_{eos}"))
        stored = R.load_golden("clip")

        def case(seed):
            p = f"{act}_{eos}/{seed}/"
            got = {k[len(p):]: v for k, v in stored.items() if k.startswith(p)}
            return got.pop("tokens"), got.pop("images"), got
        return src, case
    model, src = R.make_hf_clip(tmp_path, act, eos, fmt)

    def case(seed):
        tokens, images = R.clip_inputs(eos, seed)
        return tokens, images, R.clip_outputs(model, tokens, images)
    return src, case


def our_outputs(cfg, params, tokens, images):
    model = CLIP.from_config(cfg)
    t = model.apply({"params": params}, jnp.asarray(tokens, jnp.int32), method=CLIP.encode_text)
    v = model.apply({"params": params}, jnp.asarray(images), method=CLIP.encode_image)
    return dict(text_embeds=t["embeds"], text_states=t["states"], image_embeds=v["embeds"],
                image_states=v["states"])


def assert_parity(ours, ref):
    assert set(ref) == {"text_embeds", "text_states", "image_embeds", "image_states"}
    for k in ref:
        np.testing.assert_allclose(np.asarray(ours[k]), ref[k], atol=1e-4, rtol=1e-4, err_msg=k)


@pytest.mark.parametrize("source", R.SOURCES)
@pytest.mark.parametrize("act,eos,fmt", [("quick_gelu", 2, "safetensors"),
                                         ("gelu", 5, "safetensors")])
def test_parity_with_transformers(tmp_path, source, act, eos, fmt):
    src, case = hf_clip(tmp_path, source, act, eos, fmt)
    cfg, params = load_hf_clip(src)
    assert cfg.text.activation == act and cfg.text.eos_token_id == eos
    assert cfg.vision.image_size == IMG and cfg.embed_dim == 16
    np.testing.assert_allclose(params["logit_scale"], 2.0)
    tokens, images, ref = case(0)
    assert_parity(our_outputs(cfg, params, tokens, images), ref)


@pytest.mark.parity          # reading pytorch_model.bin needs torch
def test_parity_with_a_torch_bin_checkpoint(tmp_path):
    src, case = hf_clip(tmp_path, "live", "gelu", 2, "bin")
    assert os.path.isfile(os.path.join(src, "pytorch_model.bin"))
    cfg, params = load_hf_clip(src)
    tokens, images, ref = case(0)
    assert_parity(our_outputs(cfg, params, tokens, images), ref)


def test_cli_round_trip_copies_tokenizer(tmp_path):
    from unclip_jax.clip.tokenizer import Tokenizer, build_tokenizer

    src, case = hf_clip(tmp_path)
    build_tokenizer(["a red square", "a blue circle"], 40, src, context_length=CTX)
    dst = str(tmp_path / "ckpt")
    assert cli.main(["convert-clip", src, dst]) == 0
    params, config, extra = export.load(dst, expect_stage="clip")
    assert config.stage == "clip" and config.data.image_size == IMG
    assert os.path.isfile(os.path.join(dst, "tokenizer", "tokenizer.json"))
    assert config.model.tokenizer == os.path.join(dst, "tokenizer")
    ids, _ = Tokenizer(config.model.tokenizer, CTX)(["a red circle"])
    assert ids.shape == (1, CTX)
    tokens, images, ref = case(1)
    assert_parity(our_outputs(config.model, params, tokens, images), ref)


def test_not_a_clip_checkpoint(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_hf_clip(str(empty))
    assert cli.main(["convert-clip", str(empty), str(tmp_path / "out")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="model_type 'bert', not 'clip'"):
        load_hf_clip(str(bert))

    src, _ = hf_clip(tmp_path)
    os.remove(os.path.join(src, "model.safetensors"))
    with pytest.raises(CheckpointError, match="has no weights: expected model.safetensors"):
        load_hf_clip(src)


def test_shape_mismatch_names_parameter(tmp_path):
    src, _ = hf_clip(tmp_path)
    path = os.path.join(src, "model.safetensors")
    state = load_file(path)
    name = "text_model.encoder.layers.1.mlp.fc1.weight"
    state[name] = np.zeros((65, 32), np.float32)          # config says [64, 32]
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(CheckpointError,
                       match=r"text_model\.encoder\.layers\.1\.mlp\.fc1\.weight has shape "
                             r"\(65, 32\).*implies \(32, 64\)"):
        load_hf_clip(src)


def test_missing_tensor_named(tmp_path):
    src, _ = hf_clip(tmp_path)
    path = os.path.join(src, "model.safetensors")
    state = load_file(path)
    del state["visual_projection.weight"]
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="no tensor 'visual_projection.weight'"):
        load_hf_clip(src)

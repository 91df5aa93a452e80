"""HF CLIP import: parity with transformers' PyTorch CLIPModel, CLI round trip, bad checkpoints."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.numpy import load_file, save_file  # noqa: E402
from transformers import CLIPConfig, CLIPModel  # noqa: E402

from unclip_jax import cli, export  # noqa: E402
from unclip_jax.clip.convert import load_hf_clip  # noqa: E402
from unclip_jax.clip.model import CLIP  # noqa: E402
from unclip_jax.errors import CheckpointError  # noqa: E402

VOCAB, CTX, IMG = 99, 16, 32


def make_hf_clip(tmp_path, act="quick_gelu", eos=2, fmt="safetensors", seed=0):
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=CTX,
                         hidden_act=act, eos_token_id=eos, bos_token_id=0, pad_token_id=1),
        vision_config=dict(image_size=IMG, patch_size=8, hidden_size=24, intermediate_size=48,
                           num_hidden_layers=2, num_attention_heads=2, hidden_act=act),
        projection_dim=16, logit_scale_init_value=2.0)
    model = CLIPModel(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases so every tensor matters
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layrnorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    d = str(tmp_path / f"hf_{act}_{eos}_{fmt}")
    if fmt == "safetensors":
        model.save_pretrained(d)
    else:  # the legacy PyTorch layout: pytorch_model.bin + config.json
        os.makedirs(d)
        model.config.save_pretrained(d)
        torch.save(model.state_dict(), os.path.join(d, "pytorch_model.bin"))
    return model, d


def make_inputs(eos, seed=0):
    """Token rows of different lengths ending in the end-of-text token, then padding."""
    rng = np.random.default_rng(seed)
    lengths = [3, 7, CTX]
    tokens = np.ones((3, CTX), np.int64)                       # pad = 1
    for b, n in enumerate(lengths):
        if eos == 2:   # legacy: the eos is the largest id in the row
            tokens[b, :n] = rng.integers(3, VOCAB - 1, n)
            tokens[b, n - 1] = VOCAB - 1
        else:          # first-match rule: larger ids elsewhere, padding with eos (OpenAI style)
            tokens[b, :n] = rng.integers(eos + 1, VOCAB, n)
            tokens[b, n - 1:] = eos
    images = rng.normal(size=(2, IMG, IMG, 3)).astype(np.float32)
    return tokens, images


def hf_outputs(model, tokens, images):
    with torch.no_grad():
        t = model.text_model(input_ids=torch.from_numpy(tokens))
        v = model.vision_model(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2))
        return dict(text_embeds=model.text_projection(t.pooler_output).numpy(),
                    text_states=t.last_hidden_state.numpy(),
                    image_embeds=model.visual_projection(v.pooler_output).numpy(),
                    image_states=v.last_hidden_state.numpy())


def our_outputs(cfg, params, tokens, images):
    model = CLIP.from_config(cfg)
    t = model.apply({"params": params}, jnp.asarray(tokens, jnp.int32), method=CLIP.encode_text)
    v = model.apply({"params": params}, jnp.asarray(images), method=CLIP.encode_image)
    return dict(text_embeds=t["embeds"], text_states=t["states"], image_embeds=v["embeds"],
                image_states=v["states"])


def assert_parity(ours, ref, tokens=None):
    for k in ref:
        np.testing.assert_allclose(np.asarray(ours[k]), ref[k], atol=1e-4, rtol=1e-4, err_msg=k)


@pytest.mark.parametrize("act,eos,fmt", [("quick_gelu", 2, "safetensors"),
                                         ("gelu", 2, "bin"),
                                         ("gelu", 5, "safetensors")])
def test_parity_with_transformers(tmp_path, act, eos, fmt):
    hf, src = make_hf_clip(tmp_path, act, eos, fmt)
    cfg, params = load_hf_clip(src)
    assert cfg.text.activation == act and cfg.text.eos_token_id == eos
    assert cfg.vision.image_size == IMG and cfg.embed_dim == 16
    np.testing.assert_allclose(params["logit_scale"], 2.0)
    tokens, images = make_inputs(eos)
    assert_parity(our_outputs(cfg, params, tokens, images), hf_outputs(hf, tokens, images))


def test_cli_round_trip_copies_tokenizer(tmp_path):
    from unclip_jax.clip.tokenizer import Tokenizer, build_tokenizer

    hf, src = make_hf_clip(tmp_path, "quick_gelu", 2)
    build_tokenizer(["a red square", "a blue circle"], 40, src, context_length=CTX)
    dst = str(tmp_path / "ckpt")
    assert cli.main(["convert-clip", src, dst]) == 0
    params, config, extra = export.load(dst, expect_stage="clip")
    assert config.stage == "clip" and config.data.image_size == IMG
    assert os.path.isfile(os.path.join(dst, "tokenizer", "tokenizer.json"))
    assert config.model.tokenizer == os.path.join(dst, "tokenizer")
    ids, _ = Tokenizer(config.model.tokenizer, CTX)(["a red circle"])
    assert ids.shape == (1, CTX)
    tokens, images = make_inputs(2, seed=1)
    assert_parity(our_outputs(config.model, params, tokens, images), hf_outputs(hf, tokens, images))


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

    _, src = make_hf_clip(tmp_path)
    os.remove(os.path.join(src, "model.safetensors"))
    with pytest.raises(CheckpointError, match="has no weights: expected model.safetensors"):
        load_hf_clip(src)


def test_shape_mismatch_names_parameter(tmp_path):
    _, src = make_hf_clip(tmp_path)
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
    _, src = make_hf_clip(tmp_path)
    path = os.path.join(src, "model.safetensors")
    state = load_file(path)
    del state["visual_projection.weight"]
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="no tensor 'visual_projection.weight'"):
        load_hf_clip(src)

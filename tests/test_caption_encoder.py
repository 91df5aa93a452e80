"""The decoder's own caption encoder (models/caption_encoder.py): added to a trained decoder it
changes nothing until trained; once trained the decoder hears token ids that CLIP's token states
do not tell apart; dropped captions and padding stay unheard; bad inputs are clear errors; the
trainer adds it to an export without one.

Tiny UNets run eagerly (no jit): each compile costs more here than the few calls it would speed.
"""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax.errors import UserError
from unclip_jax.models.unet import UNet
from test_unet import B, L, decoder_inputs, perturb, tiny_decoder

VOCAB = 12


def with_captions(**kw):
    return tiny_decoder(caption_vocab=VOCAB, caption_len=L, caption_layers=1, **kw)


def caption_inputs(key):
    inp = decoder_inputs(key)
    ids = jax.random.randint(jax.random.fold_in(key, 7), (B, L), 1, VOCAB)
    return dict(inp, caption_ids=jnp.where(inp["text_mask"], ids, 0))


def init(model, inp, key):
    kw = {k: v for k, v in inp.items() if k not in ("x", "t")}
    return nn.meta.unbox(model.init(key, inp["x"], inp["t"], **kw))["params"]


def run(model, params, inp, **over):
    inp = dict(inp, **over)
    x, t = inp.pop("x"), inp.pop("t")
    return np.asarray(model.apply({"params": params}, x, t, **inp))


@pytest.fixture(scope="module")
def trained():
    """A caption-encoder decoder with every parameter perturbed (as if trained) and inputs."""
    model = with_captions()
    inp = caption_inputs(jax.random.key(0))
    params = perturb({"params": init(model, inp, jax.random.key(1))}, jax.random.key(2))
    return model, params["params"], inp


def test_an_added_encoder_leaves_a_trained_decoder_unchanged():
    """The zero output projection: the grown decoder computes what the one without it did."""
    inp = caption_inputs(jax.random.key(0))
    plain, grown = tiny_decoder(), with_captions()
    old = perturb({"params": init(plain, {k: v for k, v in inp.items() if k != "caption_ids"},
                                  jax.random.key(1))}, jax.random.key(2))["params"]
    new = dict(init(grown, inp, jax.random.key(3)))
    assert set(new) - set(old) == {"caption_encoder"}
    new.update(old)
    want = run(plain, old, {k: v for k, v in inp.items() if k != "caption_ids"})
    np.testing.assert_array_equal(run(grown, new, inp), want)


def test_the_decoder_hears_ids_that_identical_clip_states_hide(trained):
    """Same CLIP token states, one valid token id changed: the output moves. An id changed at a
    padded position, or in a dropped caption, moves nothing."""
    model, params, inp = trained
    base = run(model, params, inp)
    ids = np.array(inp["caption_ids"])
    swapped = ids.copy()
    swapped[1, 2] = (ids[1, 2] % (VOCAB - 1)) + 1          # example 1 has all L tokens valid
    out = run(model, params, inp, caption_ids=jnp.asarray(swapped))
    assert np.abs(out[1] - base[1]).max() > 1e-3
    np.testing.assert_allclose(out[0], base[0], atol=1e-6)  # other examples untouched
    padded = ids.copy()
    padded[0, 4] = 5                                        # example 0 has 3 valid tokens
    np.testing.assert_allclose(run(model, params, inp, caption_ids=jnp.asarray(padded)), base,
                               atol=1e-6)
    drop = jnp.array([True, True])
    a = run(model, params, inp, drop_text=drop)
    b = run(model, params, inp, drop_text=drop, caption_ids=jnp.asarray(swapped))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_fully_masked_caption_gives_finite_output(trained):
    model, params, inp = trained
    mask = jnp.zeros_like(inp["text_mask"])
    assert np.isfinite(run(model, params, inp, text_mask=mask)).all()


def test_bad_caption_inputs_are_clear_errors(trained):
    model, params, inp = trained
    with pytest.raises(UserError, match=r"own caption encoder: pass caption_ids=\[B, L\] = "
                                        r"\[2, 5\] integer token ids"):
        run(model, params, inp, caption_ids=None)
    with pytest.raises(UserError, match="integer token ids"):
        run(model, params, inp, caption_ids=inp["caption_ids"][:, :3])
    with pytest.raises(UserError, match="integer token ids"):
        run(model, params, inp, caption_ids=inp["caption_ids"].astype(jnp.float32))
    plain = tiny_decoder()
    with pytest.raises(UserError, match="caption_ids given but model.caption_vocab is 0"):
        plain.init(jax.random.key(0), inp["x"], inp["t"], z_i=inp["z_i"],
                   text_states=inp["text_states"], text_mask=inp["text_mask"],
                   caption_ids=inp["caption_ids"])
    with pytest.raises(UserError, match="caption_vocab > 0 .* needs model.text_width > 0 and "
                                        "model.caption_len > 0"):
        tiny_decoder(caption_vocab=VOCAB).init(
            jax.random.key(0), inp["x"], inp["t"], z_i=inp["z_i"],
            text_states=inp["text_states"], text_mask=inp["text_mask"],
            caption_ids=inp["caption_ids"])


def test_sampling_model_fn_passes_ids_through_guidance(trained):
    """stage_fns.unet_model_fn: guided output = uncond + s (cond − uncond) with the ids in the
    conditional half; a caption without its ids is refused; no caption needs no ids."""
    from unclip_jax.sample import stage_fns
    model, params, inp = trained
    cond = dict(z_i=inp["z_i"], text_states=inp["text_states"], text_mask=inp["text_mask"])
    x, t = inp["x"], inp["t"]
    fn = stage_fns.unet_model_fn(params, model, **cond, caption_ids=inp["caption_ids"],
                                 guidance=3.0, learned_variance=True)
    c = run(model, params, inp)
    u = run(model, params, inp, drop_text=jnp.ones(B, bool), drop_image_embed=jnp.ones(B, bool))
    want_eps = u[..., :3] + 3.0 * (c[..., :3] - u[..., :3])
    np.testing.assert_allclose(np.asarray(fn(x, t))[..., :3], want_eps, atol=1e-4)
    with pytest.raises(UserError, match="pass the caption's token ids"):
        stage_fns.unet_model_fn(params, model, **cond)
    nocap = stage_fns.unet_model_fn(params, model, z_i=inp["z_i"])
    want = run(model, params, inp, drop_text=jnp.ones(B, bool),
               text_states=jnp.zeros((B, 1, inp["text_states"].shape[-1])),
               text_mask=jnp.zeros((B, 1), bool), caption_ids=jnp.zeros((B, 1), jnp.int32))
    np.testing.assert_allclose(np.asarray(nocap(x, t)), want, atol=1e-6)


class FakeTokenizer:
    vocab_size = 20

    def __call__(self, captions):
        ids = np.zeros((len(captions), 6), np.int32)
        for i, c in enumerate(captions):
            words = c.split()[:6]
            ids[i, :len(words)] = [1 + len(w) for w in words]
        return ids, ids > 0


def test_caption_ids_must_line_up_with_the_embeddings_mask():
    from unclip_jax.data.decoder_captions import caption_ids
    tok = FakeTokenizer()
    mask = np.zeros((2, 6), bool)
    mask[0, :3], mask[1, :1] = True, True
    ids = caption_ids(tok, ["a red circle", "square"], mask)
    np.testing.assert_array_equal(ids[0, :3], [2, 4, 7])
    with pytest.raises(UserError, match="does not tokenize these captions as the CLIP that "
                                        "wrote the embeddings did"):
        caption_ids(tok, ["a red circle left", "square"], mask)


def test_a_tokenizer_larger_than_the_encoder_vocab_is_refused():
    from unclip_jax.configs import shapes
    from unclip_jax.data.decoder_captions import resolve_tokenizer as _resolve_caption_tokenizer
    cfg = shapes.get_config("decoder32k")
    assert _resolve_caption_tokenizer(cfg, FakeTokenizer()).vocab_size == 20
    cfg.model.caption_vocab = 16
    with pytest.raises(UserError, match="has 20 tokens but model.caption_vocab is 16"):
        _resolve_caption_tokenizer(cfg, FakeTokenizer())
    cfg.data.caption_tokenizer = ""
    with pytest.raises(UserError, match="set config.data.caption_tokenizer"):
        _resolve_caption_tokenizer(cfg, None)


def test_bundled_tokenizer_fits_the_decoder32k_preset():
    from unclip_jax.configs import shapes
    from unclip_jax.data.decoder_captions import resolve_tokenizer as _resolve_caption_tokenizer
    cfg = shapes.get_config("decoder32k")
    tok = _resolve_caption_tokenizer(cfg, None)
    ids, mask = tok(["a small red circle in the top left corner"])
    assert ids.shape == (1, cfg.model.text_len) and 0 < mask.sum() < cfg.model.text_len
    assert ids.max() < cfg.model.caption_vocab


def test_synthetic_decoder_batch_carries_caption_ids():
    from unclip_jax.configs import shapes
    from unclip_jax.data.pipeline import synthetic_batch
    cfg = shapes.get_config("decoder32k")
    batch = synthetic_batch(cfg, np.random.default_rng(0), 4)
    assert batch["caption_ids"].shape == batch["text_mask"].shape
    assert (batch["caption_ids"][~batch["text_mask"]] == 0).all()
    assert batch["caption_ids"].max() < cfg.model.caption_vocab


def test_decoder32k_is_decoder32i_with_a_caption_encoder():
    """The preset changes only the model's caption keys and the caption tokenizer: the band,
    the object weight and the schedule are decoder32i's."""
    from unclip_jax.configs import shapes
    i, k = shapes.get_config("decoder32i").to_dict(), shapes.get_config("decoder32k").to_dict()
    added = {"caption_vocab": 256, "caption_len": i["model"]["text_len"], "caption_layers": 2}
    assert k["model"] == {**i["model"], **added}
    assert k["data"] == {**i["data"], "caption_tokenizer": "bundled"}
    assert {s: v for s, v in k.items() if s not in ("model", "data")} == \
        {s: v for s, v in i.items() if s not in ("model", "data")}


def test_decoder32l_continues_the_bundled_decoder_with_half_its_steps_in_the_band():
    """decoder32l is decoder32k with t_band_p 0.5, and its model is decoder32k's tree as the
    bundled decoder was exported (so `train.init_from` takes such an export as is, no growth)."""
    from unclip_jax.configs import shapes
    from unclip_jax.paths import BUNDLED_MODEL
    k, l_ = (json.loads(json.dumps(shapes.get_config(n).to_dict()))
             for n in ("decoder32k", "decoder32l"))
    assert l_["train"] == {**k["train"], "t_band_p": 0.5} and k["train"]["t_band_p"] == 0.7
    assert {s: v for s, v in l_.items() if s != "train"} == \
        {s: v for s, v in k.items() if s != "train"}
    with open(os.path.join(BUNDLED_MODEL, "decoder", "config.json")) as f:
        bundled = json.load(f)["model"]
    assert {key: bundled.get(key) for key in l_["model"]} == l_["model"]
    # decoder32m continues it with the same recipe; decoder32n swaps its caption colours,
    # decoder32o more of them, decoder32p continues decoder32o and decoder32q decoder32p
    assert json.loads(json.dumps(shapes.get_config("decoder32m").to_dict())) == l_
    n = json.loads(json.dumps(shapes.get_config("decoder32n").to_dict()))
    assert n["data"] == {**l_["data"], "caption_colour_swap": 0.3}
    o = json.loads(json.dumps(shapes.get_config("decoder32o").to_dict()))
    assert o == {**n, "data": {**n["data"], "caption_colour_swap": 0.5}}
    for continuation in ("decoder32p", "decoder32q"):
        assert json.loads(json.dumps(shapes.get_config(continuation).to_dict())) == o
    assert l_["data"]["caption_colour_swap"] == 0.0
    assert {s: v for s, v in n.items() if s != "data"} == \
        {s: v for s, v in l_.items() if s != "data"}


def test_decoder32k_grows_a_decoder32i_export_by_a_caption_encoder_only():
    from unclip_jax.configs import shapes
    from unclip_jax.train.init_from import _growth
    i = json.loads(json.dumps(shapes.get_config("decoder32i").model.to_dict()))
    k = shapes.get_config("decoder32k").model
    assert _growth(i, k) == {"caption_encoder"}
    # the other way round (removing the encoder) or changing it is not a growth
    assert _growth(json.loads(json.dumps(k.to_dict())), shapes.get_config("decoder32i").model) \
        == set()
    k2 = shapes.get_config("decoder32k").model
    k2.caption_layers = 3
    assert _growth(json.loads(json.dumps(k.to_dict())), k2) == set()


@pytest.mark.slow                       # ~1–2 min each: two decoder compiles and an export
@pytest.mark.parametrize("blocks", [1, 2], ids=["caption encoder", "and deeper"])
def test_init_from_adds_a_caption_encoder_to_an_export(tmp_path, devices8, blocks):
    """A decoder export without a caption encoder starts one with it (and, at the same time,
    with more residual blocks per level): step 0 computes what the export computes; three steps
    later the encoder's output projection has moved."""
    from test_train_stages import grow_tiny_decoder_export, tiny_config, tiny_decoder_inputs
    from unclip_jax.train.loop import train
    from unclip_jax.train.checkpoint import path_name
    cfg, out, old_params = grow_tiny_decoder_export(tmp_path, devices8[:1], caption_vocab=32,
                                                    caption_len=4, caption_layers=1,
                                                    num_res_blocks=blocks)
    x, t, inputs = tiny_decoder_inputs()
    want = UNet.from_config(tiny_config("decoder").model).apply(
        {"params": old_params}, x, t, **inputs)
    start = jax.device_get(out["state"].params)
    got = UNet.from_config(cfg.model).apply(
        {"params": start}, x, t, caption_ids=jnp.array([[3, 4, 5, 6], [7, 8, 0, 0]]), **inputs)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-5)
    after = train(cfg, str(tmp_path / "grown"), devices=devices8[:1], progress=False)
    assert after["step"] == 3
    flat = lambda p: {path_name(q): np.asarray(v)
                      for q, v in jax.tree_util.tree_flatten_with_path(p)[0]}
    moved = flat(jax.device_get(after["state"].params))
    proj = [n for n in moved if "caption_encoder" in n and "out_proj" in n and "kernel" in n]
    assert proj and np.abs(moved[proj[0]]).max() > 0
    assert np.abs(flat(start)[proj[0]]).max() == 0


def test_the_pipeline_feeds_the_caption_ids_to_the_decoder(tmp_path_factory):
    """UnCLIP.encode_text gives the ids and decoder_sample passes them: other ids under the same
    CLIP states change the image; text without ids is refused with a clear message."""
    import os
    import shutil
    from pipeline_fixtures import CTX, checkpoints, random_init
    from unclip_jax import export
    from unclip_jax.sample.unclip import UnCLIP
    tiny = checkpoints(tmp_path_factory)
    root = str(tmp_path_factory.mktemp("caption_model"))
    for name in ("clip", "tokenizer"):
        shutil.copytree(os.path.join(tiny["root"], name), os.path.join(root, name))
    params, cfg, _ = export.load(tiny["decoder"], dtype="float32")
    cfg = cfg.unlock()
    cfg.model.caption_vocab, cfg.model.caption_len, cfg.model.caption_layers = 64, CTX, 1
    model = UNet.from_config(cfg.model)
    m = cfg.model
    kw = dict(z_i=jnp.zeros((1, m.embed_dim)), text_states=jnp.zeros((1, CTX, m.text_width)),
              text_mask=jnp.ones((1, CTX), bool), caption_ids=jnp.zeros((1, CTX), jnp.int32))
    grown = random_init(model, 5, jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,), jnp.int32), **kw)
    grown["params"]["conv_out"] = jax.tree.map(lambda a: 0.1 * a, grown["params"]["conv_out"])
    export.save(os.path.join(root, "decoder"), grown, cfg)
    pipe = UnCLIP.from_directory(root, prior="none", progress=False)
    text = pipe.encode_text(["a circle"])
    assert text["ids"].shape == text["mask"].shape and text["ids"].dtype == np.int32
    z = np.random.default_rng(0).normal(size=(1, m.embed_dim)).astype(np.float32)
    x_T = np.random.default_rng(1).normal(size=(1, 8, 8, 3)).astype(np.float32)
    key = jax.random.key(0)
    a = pipe.decoder_sample(z, x_T, key, text=text, steps="4")
    again = pipe.decoder_sample(z, x_T, key, text=text, steps="4")
    np.testing.assert_array_equal(a, again)
    other = np.where(text["mask"], (text["ids"] + 1) % 64, 0).astype(np.int32)
    b = pipe.decoder_sample(z, x_T, key, text=dict(text, ids=other), steps="4")
    assert np.abs(a - b).max() > 1e-4
    with pytest.raises(UserError, match="own caption encoder; pass text=encode_text"):
        pipe.decoder_sample(z, x_T, key, text={k: v for k, v in text.items() if k != "ids"},
                            steps="4")
    assert np.isfinite(pipe.decoder_sample(z, x_T, key, steps="4")).all()

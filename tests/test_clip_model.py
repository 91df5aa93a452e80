"""Flax CLIP: pooling/mask properties, contrastive loss, training, sharded init."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unclip_jax.configs.shapes import clip_model
from sharded_init import init_sharded
from unclip_jax import parallel
from unclip_jax.clip.loss import contrastive_loss
from unclip_jax.clip.model import CLIP, clip_encode_images, clip_encode_text, normalize
from unclip_jax.clip.preprocess import preprocess
from unclip_jax.errors import UserError


def tiny_config(**text):
    cfg = clip_model()
    cfg.embed_dim = 16
    cfg.text.update(dict(vocab_size=40, context_length=8, width=32, layers=1, heads=4))
    cfg.text.update(text)
    cfg.vision.update(dict(image_size=16, patch_size=8, width=32, layers=1, heads=4))
    return cfg


def init(cfg, seed=0, batch=2):
    model = CLIP.from_config(cfg)
    tokens = jnp.zeros((batch, cfg.text.context_length), jnp.int32)
    images = jnp.zeros((batch, cfg.vision.image_size, cfg.vision.image_size, 3))
    variables = jax.jit(model.init)(jax.random.key(seed), tokens, images)
    return model, nn.meta.unbox(variables)["params"]


def jitted(model, method=None):
    """model.apply, jitted (eager Flax dispatch is slow on a busy CPU)."""
    return jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=method))


def random_tokens(rng, batch, length, vocab, lengths):
    """Rows `<bos=1> words… <eos=vocab-1>` then <pad=0> (the layout build_tokenizer gives)."""
    t = np.zeros((batch, length), np.int32)
    for b, n in enumerate(lengths):
        t[b, :n] = rng.integers(3, vocab - 1, n)
        t[b, 0], t[b, n - 1] = 1, vocab - 1
    return t


def test_text_mask_and_padding_invariance():
    cfg = tiny_config()
    model, params = init(cfg)
    rng = np.random.default_rng(0)
    tokens = random_tokens(rng, 3, 8, 40, [3, 5, 8])
    encode = jitted(model, CLIP.encode_text)
    out = encode(params, tokens)
    np.testing.assert_array_equal(out["mask"], tokens != 0)
    assert out["embeds"].shape == (3, 16) and out["states"].shape == (3, 8, 32)
    np.testing.assert_allclose(out["pooled"], out["states"][np.arange(3), [2, 4, 7]], atol=1e-6)
    # whatever follows the end-of-text token changes nothing that is valid
    noisy = np.where(tokens == 0, rng.integers(3, 39, tokens.shape), tokens)
    out2 = encode(params, noisy)
    np.testing.assert_allclose(out2["embeds"], out["embeds"], atol=1e-5)
    m = out["mask"][..., None]
    np.testing.assert_allclose(out2["states"] * m, out["states"] * m, atol=1e-5)
    # shorter token sequences (fewer positions) give the same valid outputs
    short = encode(params, tokens[:1, :3])
    np.testing.assert_allclose(short["embeds"], out["embeds"][:1], atol=1e-5)


def test_first_match_pooling_rule():
    cfg = tiny_config(eos_token_id=7)
    model, params = init(cfg)
    tokens = np.array([[1, 30, 7, 7, 7, 7, 7, 7], [1, 30, 31, 39, 7, 0, 0, 0]], np.int32)
    out = jitted(model, CLIP.encode_text)(params, tokens)
    np.testing.assert_array_equal(out["mask"].sum(1), [3, 5])
    np.testing.assert_allclose(out["pooled"], out["states"][np.arange(2), [2, 4]], atol=1e-6)


def test_remat_and_bfloat16_match_float32():
    cfg = tiny_config()
    model, params = init(cfg)
    tokens = random_tokens(np.random.default_rng(1), 2, 8, 40, [4, 8])
    images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    ref = jitted(model)(params, tokens, images)
    cfg.remat = True
    out = jitted(CLIP.from_config(cfg))(params, tokens, images)
    for a, b in zip(out, ref):
        np.testing.assert_allclose(a, b, atol=1e-5)
    cfg.remat, cfg.dtype = False, "bfloat16"
    t, i, _ = jitted(CLIP.from_config(cfg))(params, tokens, images)
    assert t.dtype == jnp.float32
    cos = lambda a, b: np.sum(normalize(a) * normalize(b), -1)  # noqa: E731
    assert np.all(cos(t, ref[0]) > 0.99) and np.all(cos(i, ref[1]) > 0.99)


def test_free_functions_match_apply_and_preprocess():
    cfg = tiny_config()
    model, params = init(cfg)
    tokens = random_tokens(np.random.default_rng(2), 2, 8, 40, [4, 6])
    out = clip_encode_text(params, cfg, tokens)
    ref = jitted(model, CLIP.encode_text)(params, tokens)
    np.testing.assert_allclose(out["embeds"], ref["embeds"], atol=1e-6)
    imgs = np.random.default_rng(3).integers(0, 256, (2, 24, 20, 3), dtype=np.uint8)
    out = clip_encode_images({"params": params}, cfg, imgs)
    ref = jitted(model, CLIP.encode_image)(params, preprocess(imgs, 16))
    np.testing.assert_allclose(out["embeds"], ref["embeds"], atol=1e-5)


def test_wrong_input_shapes_are_explained():
    cfg = tiny_config()
    model, params = init(cfg)
    with pytest.raises(UserError, match="run clip.preprocess.preprocess first"):
        model.apply({"params": params}, jnp.zeros((1, 32, 32, 3)), method=CLIP.encode_image)
    with pytest.raises(UserError, match="9 tokens exceed the CLIP context length 8"):
        model.apply({"params": params}, jnp.ones((1, 9), jnp.int32), method=CLIP.encode_text)


def test_contrastive_loss_analytic():
    e = jnp.eye(4, 8) * 3.0                       # 4 orthogonal directions, any length
    loss, m = contrastive_loss(e, e, jnp.log(100.0))
    assert float(loss) < 1e-6 and float(m["accuracy_i2t"]) == 1 and float(m["accuracy_t2i"]) == 1
    # every image paired with another caption: each cross entropy is 100 (scale × cos gap)
    loss, m = contrastive_loss(e, e[::-1], jnp.log(100.0))
    np.testing.assert_allclose(loss, 100.0 + math.log1p(3 * math.exp(-100.0)), rtol=1e-5)
    assert float(m["accuracy_i2t"]) == 0
    # the scale is clamped at 100
    loss_big, m = contrastive_loss(e, e[::-1], 10.0)
    np.testing.assert_allclose(loss_big, loss, rtol=1e-6)
    np.testing.assert_allclose(m["logit_scale"], 100.0, rtol=1e-6)


def test_contrastive_loss_matches_numpy():
    rng = np.random.default_rng(0)
    t, i = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    im = i / np.linalg.norm(i, axis=1, keepdims=True)
    logits = math.exp(1.5) * im @ tn.T

    def ce(lg):
        lg = lg - lg.max(1, keepdims=True)
        return np.mean(np.log(np.exp(lg).sum(1)) - np.diag(lg))

    loss, m = contrastive_loss(jnp.asarray(t), jnp.asarray(i), 1.5)
    np.testing.assert_allclose(loss, (ce(logits) + ce(logits.T)) / 2, rtol=1e-5)
    np.testing.assert_allclose(m["accuracy_t2i"], np.mean(logits.argmax(0) == np.arange(5)))


def test_training_drives_loss_down():
    cfg = tiny_config()
    model, params = init(cfg, batch=8)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(random_tokens(rng, 8, 8, 40, rng.integers(3, 9, 8)))
    images = jnp.asarray(rng.normal(size=(8, 16, 16, 3)), jnp.float32)
    opt = optax.adam(3e-3)
    state = opt.init(params)

    def loss_fn(p):
        return contrastive_loss(*model.apply({"params": p}, tokens, images))[0]

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    losses = []
    for _ in range(101):    # the 101st step reports the loss after 100 updates
        params, state, loss = step(params, state)
        losses.append(float(loss))
    first, final = losses[0], losses[-1]
    assert first > 1.5                      # ≈ log(8) at init
    assert final < first / 20, (first, final)


@pytest.mark.slow   # ~17 s; sharding is also checked by test_train_loop's 1-vs-8-device run
def test_sharded_init_matches_unsharded(devices8):
    cfg = tiny_config()
    model, params = init(cfg, seed=3)
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices8)
    tokens = jnp.asarray(random_tokens(np.random.default_rng(4), 4, 8, 40, [3, 4, 6, 8]))
    images = jax.random.normal(jax.random.key(4), (4, 16, 16, 3))
    init_fn = lambda k: model.init(k, tokens, images)  # noqa: E731
    variables, shardings = init_sharded(init_fn, mesh, parallel.DEFAULT_RULES,
                                        jax.random.key(3))
    sharded = variables["params"]
    kernel = sharded["text_model"]["encoder"]["layers_0"]["mlp"]["fc1"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert len({s.device for s in kernel.addressable_shards}) == 8
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), sharded, params)
    batch = parallel.global_batch(dict(tokens=np.asarray(tokens), images=np.asarray(images)), mesh)

    @jax.jit
    def embed(p, b):
        return model.apply({"params": p}, b["tokens"], b["images"])

    with mesh, nn.logical_axis_rules(parallel.DEFAULT_RULES):
        out = embed(sharded, batch)
    ref = jitted(model)(params, tokens, images)
    for a, b in zip(out, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_sincos_position_codes_are_the_analytic_grid():
    from unclip_jax.clip.model import sincos_2d
    codes = np.asarray(sincos_2d(3, 8))             # 2 frequencies: 1 and 10000^(-1/2)
    assert codes.shape == (10, 8) and not codes[0].any()     # class token row is zero
    for r in range(3):
        for c in range(3):
            row = codes[1 + 3 * r + c]
            for k, w in enumerate((1.0, 0.01)):
                np.testing.assert_allclose(
                    row[[k, 2 + k, 4 + k, 6 + k]],
                    [math.sin(r * w), math.cos(r * w), math.sin(c * w), math.cos(c * w)],
                    atol=1e-6)
    with pytest.raises(UserError, match="divisible by 4"):
        sincos_2d(3, 6)


def test_sincos_position_init_keeps_the_parameter_tree():
    """'sincos2d' changes where the position table starts, not the checkpoint layout."""
    from unclip_jax.clip.model import VisionEmbeddings, sincos_2d
    cfg = tiny_config()
    tokens = jnp.zeros((1, cfg.text.context_length), jnp.int32)
    images = jnp.zeros((1, cfg.vision.image_size, cfg.vision.image_size, 3))
    shapes = {}
    for init_kind in ("normal", "sincos2d"):
        cfg.vision.position_init = init_kind
        shapes[init_kind] = jax.eval_shape(CLIP.from_config(cfg).init, jax.random.key(0),
                                           tokens, images)
    assert jax.tree.structure(shapes["normal"]) == jax.tree.structure(shapes["sincos2d"])
    assert jax.tree.leaves(shapes["normal"]) == jax.tree.leaves(shapes["sincos2d"])
    emb = VisionEmbeddings(16, 8, 32, position_init="sincos2d")
    table = nn.meta.unbox(emb.init(jax.random.key(0), images))["params"]["position_embedding"]
    np.testing.assert_array_equal(table["embedding"], sincos_2d(2, 32))
    cfg.vision.position_init = "random"
    with pytest.raises(UserError, match="position_init 'random'"):
        CLIP.from_config(cfg).init(jax.random.key(0), tokens, images)

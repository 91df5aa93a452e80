"""AR prior: PCA / quantiser codec, model shapes and causality, loss, overfit + sampling, the
key/value-cached sampler against the full-recompute reference (tokens and logits),
sharding and paper-size parameter count."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from unclip_jax.configs import paper, shapes
from sharded_init import assert_matches_unsharded, init_sharded, parameter_count
from unclip_jax import parallel
from unclip_jax.errors import UserError
from unclip_jax.models import ar_codec
from unclip_jax.models import ar_prior as ar
from unclip_jax.models.ar_prior import ARPrior

B, D, L, WT, K, NB, ND = 4, 16, 5, 24, 6, 8, 4


def tiny(dtype=jnp.float32, **kw):
    args = dict(width=32, layers=2, heads=4, embed_dim=D, text_width=WT, text_len=L,
                pca_components=K, num_buckets=NB, dot_buckets=ND, dtype=dtype)
    args.update(kw)
    return ARPrior(**args)


def inputs(seed=0, batch=B):
    r = np.random.default_rng(seed)
    tokens = np.concatenate([r.integers(0, ND, size=(batch, 1)),
                             r.integers(0, NB, size=(batch, K))], axis=1)
    z_t = jnp.asarray(r.normal(size=(batch, D)), jnp.float32)
    text = jnp.asarray(r.normal(size=(batch, L, WT)), jnp.float32)
    lengths = r.integers(2, L + 1, size=batch)
    mask = jnp.asarray(np.arange(L)[None] < lengths[:, None])
    return jnp.asarray(tokens, jnp.int32), z_t, text, mask


def init(model, batch=B):
    return model.init(jax.random.key(0), *inputs(batch=batch))


def low_rank(n=400, rank=4, noise=1e-3, seed=0):
    r = np.random.default_rng(seed)
    return (r.normal(size=(n, rank)) * np.arange(rank, 0, -1)) @ r.normal(size=(rank, D)) \
        + noise * r.normal(size=(n, D)) + 3.0


# ----------------------------------------------------------------------------- codec

def test_pca_orthonormal_and_error_falls():
    z = np.random.default_rng(0).normal(size=(300, D)) * np.linspace(3, 0.1, D)
    errs = []
    for k in (1, 4, 8, 12, D):
        pca = ar_codec.fit_pca(z, k)
        c = pca["components"]
        np.testing.assert_allclose(c @ c.T, np.eye(k), atol=1e-5)
        errs.append(ar_codec.pca_relative_mse(pca, z))
        # relative MSE = unexplained variance fraction
        np.testing.assert_allclose(errs[-1], 1 - pca["explained_variance"].sum()
                                   / pca["total_variance"], atol=1e-4)
    assert all(a > b for a, b in zip(errs, errs[1:]))
    assert errs[-1] < 1e-6
    with pytest.raises(UserError, match="pca_components"):
        ar_codec.fit_pca(z, D + 1)


def test_num_components_for_low_rank_data():
    z = low_rank(rank=4)
    assert ar_codec.num_components_for(z, 0.01) == 4
    assert ar_codec.pca_relative_mse(ar_codec.fit_pca(z, 4), z) < 0.01
    assert ar_codec.pca_relative_mse(ar_codec.fit_pca(z, 3), z) > 0.01


def test_quantizer_range_equal_mass_and_round_trip():
    r = np.random.default_rng(0)
    x = r.normal(size=(4000, 3)) * np.array([1.0, 5.0, 0.1])
    q = ar_codec.fit_quantizer(x, 64)
    tok = np.asarray(ar_codec.quantize(q, x))
    assert tok.min() >= 0 and tok.max() <= 63 and tok.dtype == np.int32
    for k in range(3):   # quantile buckets hold equal shares of the training data
        counts = np.bincount(tok[:, k], minlength=64)
        assert counts.min() >= 4000 / 64 - 2 and counts.max() <= 4000 / 64 + 2
    assert np.all(np.diff(q["centers"], axis=1) > 0)
    # each interior centre lies inside its bucket
    e = q["edges"]
    assert np.all(q["centers"][:, 1:-1] >= e[:, :-1]) and np.all(q["centers"][:, 1:-1] <= e[:, 1:])

    def rel_err(nb):
        qq = ar_codec.fit_quantizer(x, nb)
        back = np.asarray(ar_codec.dequantize(qq, ar_codec.quantize(qq, x)))
        return np.sqrt(np.mean((back - x) ** 2, 0)) / x.std(0)

    rel64, rel512 = rel_err(64), rel_err(512)
    assert np.all(rel64 < 0.1) and np.all(rel512 < rel64 / 2), (rel64, rel512)
    # unseen values beyond the training range land in the end buckets
    edge = np.asarray(ar_codec.quantize(q, np.array([[-1e3, 1e3, 0.0]])))
    assert edge[0, 0] == 0 and edge[0, 1] == 63


def test_codec_round_trip_and_tokens():
    z_i = low_rank(rank=K, noise=1e-4)
    z_t = z_i + np.random.default_rng(1).normal(size=z_i.shape)
    codec = ar_codec.fit_codec(z_i, z_t, K, 256, ND)
    tok = ar_codec.training_tokens(codec, z_i, z_t)
    assert tok.shape == (len(z_i), K + 1)
    assert int(tok[:, 0].max()) < ND and int(tok[:, 1:].max()) < 256
    rec = np.asarray(ar_codec.decode_tokens(codec, tok[:, 1:]))
    rel = np.sum((rec - z_i) ** 2) / np.sum((z_i - z_i.mean(0)) ** 2)
    assert rel < 0.01, rel
    # a codec read back from JSON (nested lists) works the same
    as_lists = jax.tree.map(lambda a: np.asarray(a).tolist(), codec)
    np.testing.assert_array_equal(ar_codec.training_tokens(as_lists, z_i, z_t), tok)
    np.testing.assert_allclose(ar_codec.decode_tokens(as_lists, tok[:, 1:]), rec, atol=1e-6)


def test_dot_token_from_top_half():
    r = np.random.default_rng(0)
    z_i = r.normal(size=(500, D))
    z_t = z_i + 2.0 * r.normal(size=z_i.shape)
    codec = ar_codec.fit_codec(z_i, z_t, K, NB, 16)
    dots = np.asarray(ar_codec.cosine(z_i, z_t))
    drawn = ar_codec.sample_dot_tokens(jax.random.key(0), 2000, 16, 0.5)
    assert int(drawn.min()) == 8 and int(drawn.max()) == 15
    centres = np.asarray(ar_codec.dequantize(codec["dot"], drawn[:, None]))[:, 0]
    assert centres.min() >= np.median(dots)
    # the training distribution does reach below the median: the draw is a real restriction
    assert int(ar_codec.dot_tokens(codec, z_i, z_t).min()) < 8
    with pytest.raises(UserError, match="dot_quantile"):
        ar_codec.sample_dot_tokens(jax.random.key(0), 2, 16, 1.0)


# ----------------------------------------------------------------------------- model

@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_forward_shapes_and_dtypes(dtype):
    ref = tiny()
    params = init(ref)
    x = inputs()
    logits, hidden = tiny(dtype, remat=dtype == jnp.bfloat16).apply(params, *x, return_hidden=True)
    assert logits.shape == (B, K, NB) and logits.dtype == jnp.float32
    assert hidden.shape == (B, L + 1 + K, 32)
    if dtype == jnp.bfloat16:
        ref_logits = ref.apply(params, *x)
        err = float(jnp.max(jnp.abs(logits - ref_logits)))
        assert 0 < err < 0.1 * float(jnp.max(jnp.abs(ref_logits)))


def test_causal_next_token_prediction():
    model = tiny()
    params = init(model)
    tokens, z_t, text, mask = inputs()
    base = model.apply(params, tokens, z_t, text, mask)
    for j in range(K):   # change component j (tokens[:, j+1]): logits for components ≤ j fixed
        changed = tokens.at[:, j + 1].set((tokens[:, j + 1] + 1) % NB)
        out = model.apply(params, changed, z_t, text, mask)
        np.testing.assert_allclose(out[:, :j + 1], base[:, :j + 1], atol=1e-5)
        if j + 1 < K:
            assert float(jnp.max(jnp.abs(out[:, j + 1:] - base[:, j + 1:]))) > 1e-4
    # the dot token conditions every component
    out = model.apply(params, tokens.at[:, 0].set((tokens[:, 0] + 1) % ND), z_t, text, mask)
    assert float(jnp.min(jnp.max(jnp.abs(out - base), axis=(1, 2)))) > 1e-4


def test_dropped_text_ignores_text_and_z_t():
    model = tiny()
    params = init(model)
    tokens, z_t, text, mask = inputs()
    _, z_t2, text2, mask2 = inputs(seed=1)
    drop = jnp.array([True, True, False, False])
    a = model.apply(params, tokens, z_t, text, mask, drop)
    b = model.apply(params, tokens, z_t2, text2, mask2, drop)
    np.testing.assert_allclose(a[drop], b[drop], atol=1e-5)
    assert float(jnp.min(jnp.max(jnp.abs(a[~drop] - b[~drop]), axis=(1, 2)))) > 1e-4


def test_bad_inputs_name_the_fix():
    model = tiny()
    params = init(model)
    tokens, z_t, text, mask = inputs()
    with pytest.raises(UserError, match="pca_components"):
        model.apply(params, tokens[:, :K], z_t, text, mask)
    codec = ar_codec.fit_codec(low_rank(), low_rank(seed=1), K, NB + 1, ND)
    with pytest.raises(UserError, match="refit"):
        ar.ar_sample(params, model, codec, dict(z_t=z_t, text_states=text, text_mask=mask),
                     jax.random.key(0))
    with pytest.raises(UserError, match="ar_prior"):
        ar.from_config(shapes.prior().model)


def test_ar_loss_is_cross_entropy():
    r = np.random.default_rng(0)
    logits = r.normal(size=(3, K, NB)).astype(np.float32)
    tokens = np.concatenate([np.zeros((3, 1), int), r.integers(0, NB, size=(3, K))], 1)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = -np.mean(np.take_along_axis(logp, tokens[:, 1:, None], -1))
    np.testing.assert_allclose(float(ar.ar_loss(jnp.asarray(logits), jnp.asarray(tokens))),
                               want, rtol=1e-5)


def test_guided_logits_match_separate_calls():
    model = tiny()
    params = init(model)
    tokens, z_t, text, mask = inputs()
    cond = model.apply(params, tokens, z_t, text, mask)
    uncond = model.apply(params, tokens, z_t, text, mask, jnp.ones(B, bool))
    got = ar._guided_logits(params, model, tokens, dict(z_t=z_t, text_states=text,
                                                        text_mask=mask), 2.5)
    np.testing.assert_allclose(got, uncond + 2.5 * (cond - uncond), atol=1e-4)
    with pytest.raises(UserError, match="guidance_scale"):
        ar.ar_sample(params, model, None, dict(z_t=z_t), jax.random.key(0), guidance_scale=-1)


@pytest.mark.slow   # ~20 s each; the KV cache's parity with recompute stays in the default suite
def test_overfit_then_sample_reproduces_tokens():
    """~200 Adam steps on one batch: cross-entropy falls ≥ 10×, and greedy ar_sample then
    reproduces each example's training tokens (dot token fixed by dot_quantile=0.75)."""
    model = tiny(width=64)
    n = 6
    r = np.random.default_rng(2)
    z_i, z_t = r.normal(size=(200, D)), r.normal(size=(200, D))
    codec = ar_codec.fit_codec(z_i, z_i + z_t, K, NB, ND)
    _, zt, text, mask = inputs(seed=3, batch=n)
    tokens = ar_codec.training_tokens(codec, z_i[:n], np.asarray(zt)).at[:, 0].set(ND - 1)
    params = model.init(jax.random.key(0), tokens, zt, text, mask)
    opt = optax.adam(2e-3)
    opt_state = opt.init(params)

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(
            lambda p: ar.ar_loss(model.apply(p, tokens, zt, text, mask), tokens))(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    hist = []
    for _ in range(200):
        params, opt_state, loss = step(params, opt_state)
        hist.append(float(loss))
    print(f"AR prior overfit: cross-entropy {hist[0]:.3f} -> {hist[-1]:.4f} "
          f"({hist[0] / hist[-1]:.0f}x)")
    assert hist[-1] * 10 <= hist[0]
    cond = dict(z_t=zt, text_states=text, text_mask=mask)
    z, got = ar.ar_sample(params, model, codec, cond, jax.random.key(1), temperature=0.0,
                          dot_quantile=0.75)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(tokens))
    np.testing.assert_allclose(z, ar_codec.decode_tokens(codec, tokens[:, 1:]), atol=1e-5)


def test_sharded_init_matches_unsharded(devices8):
    model = tiny(layers=1)
    x = inputs(batch=8)
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices8)
    params, _ = init_sharded(lambda k: model.init(k, *x), mesh, parallel.DEFAULT_RULES,
                             jax.random.key(0))
    p = params["params"]
    assert p["head"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert p["token_embed"]["embedding"].sharding.spec == P("tensor", "fsdp")
    assert p["stack"]["transformer"]["layers_0"]["mlp"]["fc2"]["kernel"].sharding.spec == \
        P("tensor", "fsdp")
    assert_matches_unsharded(model, params, x, mesh)


def test_paper_parameter_count():
    cfg = paper.ar_prior()
    model = ar.from_config(cfg.model)
    count = parameter_count(model, *ar.dummy_inputs(model))
    print(f"paper AR prior parameters: {count:,}")
    assert 0.7e9 < count < 1.4e9


def test_shapes_config_builds():
    cfg = shapes.ar_prior()
    model = ar.from_config(cfg.model)
    assert model.pca_components == cfg.model.pca_components
    assert isinstance(cfg.model, mlc.ConfigDict)


# ----------------------------------------------------------------------------- KV-cache sampling

def _cond(x):
    _, z_t, text, mask = x
    return dict(z_t=z_t, text_states=text, text_mask=mask)


def test_cache_mask_is_rows_of_the_prefix_causal_mask():
    from unclip_jax.models.prior import prefix_causal_mask
    _, _, _, mask = inputs()
    valid = jnp.concatenate([mask, jnp.ones((B, 1 + K), bool)], axis=1)     # [B, S]
    full = prefix_causal_mask(valid)
    S = L + 1 + K
    for start, T in [(0, S), (0, L + 2), (L + 2, 1), (S - 1, 1), (3, 4)]:
        np.testing.assert_array_equal(ar.cache_mask(valid, start, T), full[:, :, start:start + T])
        np.testing.assert_array_equal(ar.cache_mask(valid, jnp.int32(start), T),
                                      full[:, :, start:start + T])


def test_extend_in_chunks_matches_the_full_forward():
    """The stack run over the sequence in pieces (prefill, single positions, a chunk), each
    piece attending to the cached keys/values of the earlier ones, gives the full forward's
    hidden states [B, S, W] to float32 rounding."""
    model = tiny()
    params = init(model)
    tokens, z_t, text, mask = inputs()
    drop = jnp.array([False, True, False, True])
    _, want = model.apply(params, tokens, z_t, text, mask, drop, return_hidden=True)
    p = nn.meta.unbox(params)["params"]
    prefix, valid = ar.TextConditioning(model.width, L, model.dtype).apply(
        {"params": p["cond"]}, z_t, text, mask, drop)
    x = jnp.concatenate([prefix, ar._embed(params, model, "dot_embed", tokens[:, :1]),
                         ar._embed(params, model, "token_embed", tokens[:, 1:K])], axis=1)
    valid = jnp.concatenate([valid, jnp.ones((B, K), bool)], axis=1)
    cache = ar.init_cache(model, B)
    assert len(cache) == model.layers and cache[0][0].shape == (B, 4, L + 1 + K, 8)
    got, start = [], 0
    for T in (L + 2, 1, 1, K - 4, 1):
        h, cache = ar.extend(params, model, x[:, start:start + T], valid, cache, start)
        got.append(h)
        start += T
    assert start == L + 1 + K
    np.testing.assert_allclose(jnp.concatenate(got, axis=1), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("guidance_scale", [1.0, 2.5])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_kv_cache_sampler_matches_full_recompute(temperature, guidance_scale):
    """For several keys the cached loop draws exactly the reference loop's tokens, and the
    logits it drew them from equal the (guided) full forward's at every position."""
    model = tiny(width=64)
    params = init(model)
    x = inputs(seed=5)
    cond, dot = _cond(x), x[0][:, 0]
    draws = []
    for seed in range(4):
        key = jax.random.key(seed)
        got, logits = ar.sample_tokens(params, model, cond, dot, key, temperature,
                                       guidance_scale, return_logits=True)
        ref = ar.sample_tokens(params, model, cond, dot, key, temperature, guidance_scale,
                               kv_cache=False)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
        want = ar._guided_logits(params, model, got, cond, guidance_scale)
        assert logits.shape == (B, K, NB)
        np.testing.assert_allclose(logits, want, rtol=1e-5,
                                   atol=1e-5 * float(jnp.max(jnp.abs(want))))
        draws.append(np.asarray(got))
    if temperature > 0:   # the keys matter: a real test of the random draws
        assert len({d.tobytes() for d in draws}) == len(draws)
    # ar_sample uses the cache by default and returns the reference's tokens
    codec = ar_codec.fit_codec(low_rank(), low_rank(seed=1), K, NB, ND)
    z, tok = ar.ar_sample(params, model, codec, cond, jax.random.key(7), temperature,
                          guidance_scale)
    z_ref, tok_ref = ar.ar_sample(params, model, codec, cond, jax.random.key(7), temperature,
                                  guidance_scale, kv_cache=False)
    np.testing.assert_array_equal(np.asarray(tok), np.asarray(tok_ref))
    np.testing.assert_array_equal(np.asarray(z), np.asarray(z_ref))


def test_kv_cache_bfloat16_within_rounding():
    """In bfloat16 the cached loop's logits differ from the full forward's by bfloat16
    rounding only: no further from the float32 forward than the bfloat16 forward is."""
    params = init(tiny())
    x = inputs()
    cond, dot = _cond(x), x[0][:, 0]
    model = tiny(jnp.bfloat16)
    tok, logits = ar.sample_tokens(params, model, cond, dot, jax.random.key(0), 1.0, 2.0,
                                   return_logits=True)
    f32 = ar._guided_logits(params, tiny(), tok, cond, 2.0)
    bf16 = ar._guided_logits(params, model, tok, cond, 2.0)
    err, ref_err = (float(jnp.max(jnp.abs(a - f32))) for a in (logits, bf16))
    assert err < max(2 * ref_err, 1e-3) and err < 0.05 * float(jnp.max(jnp.abs(f32)))


def test_kv_cache_under_vmap_as_the_pipeline_calls_it():
    """pipeline.per_example vmaps ar_sample over batch-1 examples: cached == reference."""
    from unclip_jax.sample.programs import per_example
    model = tiny()
    params = init(model)
    codec = ar_codec.fit_codec(low_rank(), low_rank(seed=1), K, NB, ND)
    _, z_t, text, mask = inputs()
    keys = jax.random.split(jax.random.key(0), B)

    def run(kv_cache):
        one = lambda k, z, s, m: ar.ar_sample(params, model, codec, dict(
            z_t=z, text_states=s, text_mask=m), k, 1.0, 3.0, kv_cache=kv_cache)[1]
        return jax.jit(lambda *a: per_example(one, *a))(keys, z_t, text, mask)

    np.testing.assert_array_equal(np.asarray(run(True)), np.asarray(run(False)))


@pytest.mark.slow   # ~20 s each; the KV cache's parity with recompute stays in the default suite
def test_bundled_model_samples_the_same_tokens_with_the_cache():
    """The packaged shapes AR prior (unclip_jax/assets/shapes/ar_prior) loads unchanged and
    its cached sampler reproduces the full-recompute tokens."""
    from pathlib import Path

    from unclip_jax import export
    from unclip_jax.export import extras_from_json
    d = Path(ar.__file__).resolve().parent.parent / "assets" / "shapes" / "ar_prior"
    params, cfg, extra = export.load(str(d), expect_stage="ar_prior")
    model = ar.from_config(cfg.model)
    codec = extras_from_json(extra)["codec"]
    r = np.random.default_rng(0)
    n = 3
    cond = dict(z_t=jnp.asarray(r.normal(size=(n, model.embed_dim)), jnp.float32),
                text_states=jnp.asarray(r.normal(size=(n, model.text_len, model.text_width)),
                                        jnp.float32),
                text_mask=jnp.asarray(np.arange(model.text_len)[None]
                                      < np.array([[6], [15], [model.text_len]])))
    for temperature, scale in [(1.0, 1.0), (0.0, 3.0)]:
        z, tok = ar.ar_sample({"params": params}, model, codec, cond, jax.random.key(1),
                              temperature, scale)
        z_ref, tok_ref = ar.ar_sample({"params": params}, model, codec, cond,
                                      jax.random.key(1), temperature, scale, kv_cache=False)
        np.testing.assert_array_equal(np.asarray(tok), np.asarray(tok_ref))
        np.testing.assert_array_equal(np.asarray(z), np.asarray(z_ref))

"""Diffusion prior: shapes, causality, guidance conditioning, normalisation, best_of, overfit,
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
from unclip_jax.diffusion import losses, samplers, schedules
from unclip_jax.errors import UserError
from unclip_jax.models import prior as prior_lib
from unclip_jax.models.prior import (DiffusionPrior, best_of, denormalize_embed,
                                     embedding_stats, normalize_embed, prior_model_fn)

B, D, L, WT = 4, 16, 6, 24


def tiny(dtype=jnp.float32, **kw):
    args = dict(width=32, layers=2, heads=4, embed_dim=D, text_width=WT, text_len=L,
                dtype=dtype)
    args.update(kw)
    return DiffusionPrior(**args)


def inputs(seed=0, batch=B):
    r = np.random.default_rng(seed)
    x_t = jnp.asarray(r.normal(size=(batch, D)), jnp.float32)
    t = jnp.asarray(r.integers(0, 1000, size=batch), jnp.int32)
    z_t = jnp.asarray(r.normal(size=(batch, D)), jnp.float32)
    text = jnp.asarray(r.normal(size=(batch, L, WT)), jnp.float32)
    lengths = r.integers(2, L + 1, size=batch)
    mask = jnp.asarray(np.arange(L)[None] < lengths[:, None])
    return x_t, t, z_t, text, mask


def init(model, batch=B):
    return model.init(jax.random.key(0), *inputs(batch=batch))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_forward_shapes_and_dtypes(dtype):
    ref = tiny()
    params = init(ref)
    x = inputs()
    out, hidden = tiny(dtype, remat=dtype == jnp.bfloat16).apply(params, *x, return_hidden=True)
    assert out.shape == (B, D) and out.dtype == jnp.float32
    assert hidden.shape == (B, L + 4, 32) and hidden.dtype == jnp.float32
    assert jax.tree.leaves(jax.tree.map(lambda a: a.dtype, params)) == [jnp.float32] * len(
        jax.tree.leaves(params))
    if dtype == jnp.bfloat16:   # same params, lower precision: close but not identical
        out32 = ref.apply(params, *x)
        err = float(jnp.max(jnp.abs(out - out32)))
        assert 0 < err < 0.1 * float(jnp.max(jnp.abs(out32)))


def test_causal_sequence():
    model = tiny()
    params = init(model)
    x_t, t, z_t, text, mask = inputs()
    _, h0 = model.apply(params, x_t, t, z_t, text, mask, return_hidden=True)
    # noised z_i sits at position L+2: everything before it is unchanged, the query changes
    out1, h1 = model.apply(params, x_t + 1.0, t, z_t, text, mask, return_hidden=True)
    np.testing.assert_allclose(h1[:, :L + 2], h0[:, :L + 2], atol=1e-6)
    assert float(jnp.max(jnp.abs(h1[:, L + 2:] - h0[:, L + 2:]))) > 1e-3
    # the timestep token sits at L+1
    _, h2 = model.apply(params, x_t, t + 7, z_t, text, mask, return_hidden=True)
    np.testing.assert_allclose(h2[:, :L + 1], h0[:, :L + 1], atol=1e-6)
    assert float(jnp.max(jnp.abs(h2[:, L + 1] - h0[:, L + 1]))) > 1e-3


def test_padded_text_tokens_are_ignored():
    model = tiny()
    params = init(model)
    x_t, t, z_t, text, _ = inputs()
    mask = jnp.asarray(np.arange(L)[None] < np.array([2, 3, 4, 6])[:, None])
    out0 = model.apply(params, x_t, t, z_t, text, mask)
    noise = jnp.asarray(np.random.default_rng(5).normal(size=text.shape), jnp.float32)
    out1 = model.apply(params, x_t, t, z_t, jnp.where(mask[..., None], text, noise), mask)
    np.testing.assert_allclose(out1, out0, atol=1e-5)
    out2 = model.apply(params, x_t, t, z_t, text + noise, mask)   # valid tokens do matter
    assert float(jnp.max(jnp.abs(out2 - out0))) > 1e-3


def test_dropped_text_ignores_text_and_z_t():
    model = tiny()
    params = init(model)
    x_t, t, z_t, text, mask = inputs()
    drop = jnp.array([True, False, True, False])
    out0 = model.apply(params, x_t, t, z_t, text, mask, drop)
    _, _, z_t2, text2, mask2 = inputs(seed=1)
    out1 = model.apply(params, x_t, t, z_t2, text2, mask2, drop)
    np.testing.assert_allclose(out1[drop], out0[drop], atol=1e-5)
    assert float(jnp.min(jnp.max(jnp.abs(out1[~drop] - out0[~drop]), axis=-1))) > 1e-3
    # drop=False everywhere equals passing no drop_text at all
    np.testing.assert_allclose(model.apply(params, x_t, t, z_t, text, mask, jnp.zeros(B, bool)),
                               model.apply(params, x_t, t, z_t, text, mask), atol=1e-6)


def test_bad_inputs_name_the_fix():
    model = tiny()
    params = init(model)
    x_t, t, z_t, text, mask = inputs()
    with pytest.raises(UserError, match="model.text_len"):
        model.apply(params, x_t, t, z_t, text[:, :3], mask[:, :3])
    with pytest.raises(UserError, match="embed_dim"):
        model.apply(params, x_t[:, :8], t, z_t[:, :8], text, mask)
    cfg = shapes.prior().model
    with pytest.raises(UserError, match="float32"):
        prior_lib.from_config(mlc.ConfigDict({**cfg.to_dict(), "dtype": "float8"}))


def test_normalize_scale_round_trip():
    cfg = mlc.ConfigDict(dict(normalize="scale", embed_scale=17.2))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(5, D)), jnp.float32)
    y = normalize_embed(x, cfg)
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), 17.2, rtol=1e-5)
    back = denormalize_embed(y, cfg)
    np.testing.assert_allclose(back, x / jnp.linalg.norm(x, axis=-1, keepdims=True), atol=1e-6)


def test_normalize_meanstd_round_trip():
    cfg = mlc.ConfigDict(dict(normalize="meanstd", embed_scale=17.2))
    r = np.random.default_rng(0)
    z = (r.normal(size=(500, D)) * r.uniform(0.1, 3, size=D) + r.normal(size=D)).astype(np.float32)
    stats = embedding_stats(z)
    y = normalize_embed(z, cfg, stats)
    np.testing.assert_allclose(np.mean(y, 0), 0, atol=1e-4)
    np.testing.assert_allclose(np.std(y, 0), 1, atol=1e-4)
    np.testing.assert_allclose(denormalize_embed(y, cfg, stats), z, atol=1e-5)
    stats2 = prior_lib.stats_from_json(prior_lib.stats_to_json(stats))
    np.testing.assert_array_equal(stats2["mean"], stats["mean"])
    with pytest.raises(UserError, match="embedding_stats"):
        normalize_embed(z, cfg, None)
    with pytest.raises(UserError, match="one of"):
        normalize_embed(z, mlc.ConfigDict(dict(normalize="l2", embed_scale=1.0)))


def test_best_of_picks_higher_cosine():
    r = np.random.default_rng(0)
    z_t = r.normal(size=(3, D))
    far = r.normal(size=(3, D))
    near = z_t * 5.0 + 0.1 * r.normal(size=(3, D))    # large norm must not matter: cosine
    cands = np.stack([far, near])                       # [2, 3, D]
    cands[:, 1] = cands[::-1, 1]                        # example 1: the near one comes first
    got = np.asarray(best_of(jnp.asarray(cands), jnp.asarray(z_t)))
    np.testing.assert_allclose(got, near, rtol=1e-6)


def test_prior_model_fn_guidance_matches_separate_calls():
    model = tiny()
    params = init(model)
    x_t, t, z_t, text, mask = inputs()
    cond = model.apply(params, x_t, t, z_t, text, mask)
    uncond = model.apply(params, x_t, t, z_t, text, mask, jnp.ones(B, bool))
    fn1 = prior_model_fn(params, model, z_t, text, mask)
    np.testing.assert_allclose(fn1(x_t, t), cond, atol=1e-6)
    fn = prior_model_fn(params, model, z_t, text, mask, guidance_scale=3.0, clamp=0.5)
    np.testing.assert_allclose(fn(x_t, t), jnp.clip(uncond + 3.0 * (cond - uncond), -0.5, 0.5),
                               atol=1e-5)
    # it drives a sampler end to end (respaced schedule, original timesteps into the model)
    sched = schedules.respace("cosine", 1000, "8")
    z = samplers.ddpm_sample(fn, sched, (B, D), jax.random.key(1), predict="x0",
                             variance="fixed_small", clip_denoised=False)
    assert z.shape == (B, D) and bool(jnp.all(jnp.isfinite(z)))


def test_overfit_one_batch():
    """~200 Adam steps of x0-MSE on one batch of 8 (z_i, caption) pairs: loss falls ≥ 10×."""
    model = tiny(width=64, layers=2)
    cfg = mlc.ConfigDict(dict(normalize="scale", embed_scale=17.2))
    n = 8
    x_t, _, z_t, text, mask = inputs(seed=3, batch=n)
    x0 = normalize_embed(jnp.asarray(np.random.default_rng(4).normal(size=(n, D))), cfg)
    sched = schedules.make_schedule("cosine", 1000)
    params = model.init(jax.random.key(0), x_t, jnp.zeros(n, jnp.int32), z_t, text, mask)
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)

    def loss_fn(p, key):
        kt, kn = jax.random.split(key)
        t = jax.random.randint(kt, (n,), 0, 1000)
        noise = jax.random.normal(kn, x0.shape)
        fn = lambda x, tm: model.apply(p, x, tm, z_t, text, mask)
        return jnp.mean(losses.training_losses(sched, fn, x0, t, noise, predict="x0",
                                               variance="fixed_small")["loss"])

    @jax.jit
    def step(p, s, key):
        loss, g = jax.value_and_grad(loss_fn)(p, key)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    hist = []
    for i in range(200):
        params, opt_state, loss = step(params, opt_state, jax.random.key(i))
        hist.append(float(loss))
    first, last = np.mean(hist[:10]), np.mean(hist[-10:])
    print(f"diffusion prior overfit: x0-MSE {first:.3f} -> {last:.4f} ({first / last:.0f}x)")
    assert last * 10 <= first
    # sampling the memorised model (16 respaced steps, best of 2) returns each example's z_i
    config = shapes.prior()
    config.diffusion.sample_steps = "16"
    z = prior_lib.sample_prior(params, model, config, dict(z_t=z_t, text_states=text,
                                                           text_mask=mask),
                               jax.random.key(7), guidance_scale=1.0)
    cos = np.asarray(prior_lib.cosine(z, x0))
    print(f"diffusion prior overfit: sampled z_i cosine to training z_i min {cos.min():.4f}")
    assert z.shape == (n, D) and cos.min() > 0.95
    with pytest.raises(UserError, match="guidance_scale"):
        prior_lib.sample_prior(params, model, config, dict(z_t=z_t, text_states=text,
                                                           text_mask=mask),
                               jax.random.key(7), guidance_scale=-1.0)


def test_sharded_init_matches_unsharded(devices8):
    model = tiny(layers=1)
    x = inputs(batch=8)
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices8)
    params, shardings = init_sharded(lambda k: model.init(k, *x), mesh,
                                     parallel.DEFAULT_RULES, jax.random.key(0))
    fc1 = params["params"]["stack"]["transformer"]["layers_0"]["mlp"]["fc1"]["kernel"]
    assert fc1.sharding.spec == P("fsdp", "tensor")
    assert len({s.device for s in fc1.addressable_shards}) == 8
    assert fc1.addressable_shards[0].data.shape == (16, 64)
    q = params["params"]["stack"]["transformer"]["layers_0"]["self_attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == P("fsdp", "tensor")
    assert_matches_unsharded(model, params, x, mesh)


def test_paper_parameter_count():
    cfg = paper.prior()
    model = prior_lib.from_config(cfg.model)
    count = parameter_count(model, *prior_lib.dummy_inputs(model))
    print(f"paper diffusion prior parameters: {count:,}")
    assert 0.7e9 < count < 1.4e9


def test_architecture_options():
    """normalize_z_t / time_mlp_ratio / norm_in (the Karlo layout) change what they say."""
    x_t, t, z_t, text, mask = inputs()
    plain = tiny()
    karlo = tiny(normalize_z_t=False, time_mlp_ratio=1.0, norm_in=True)
    pp = nn.meta.unbox(init(plain))["params"]
    kp = nn.meta.unbox(init(karlo))["params"]
    assert pp["time_mlp"]["fc1"]["kernel"].shape == (32, 128)
    assert kp["time_mlp"]["fc1"]["kernel"].shape == (32, 32)
    assert "norm_in" in kp["stack"] and "norm_in" not in pp["stack"]
    # z_t is L2-normalised by default, so its scale does not matter; with Karlo's layout it does
    np.testing.assert_allclose(plain.apply({"params": pp}, x_t, t, 3 * z_t, text, mask),
                               plain.apply({"params": pp}, x_t, t, z_t, text, mask), atol=1e-5)
    a = karlo.apply({"params": kp}, x_t, t, 3 * z_t, text, mask)
    b = karlo.apply({"params": kp}, x_t, t, z_t, text, mask)
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3
    cfg = shapes.prior().model
    model = prior_lib.from_config(cfg)
    assert (model.normalize_z_t, model.time_mlp_ratio, model.norm_in) == (
        cfg.normalize_z_t, cfg.time_mlp_ratio, cfg.norm_in)

"""ADM/GLIDE UNet: shapes, conditioning and guidance drops, overfitting, sharding, paper sizes."""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from unclip_jax.configs import paper, shapes
from sharded_init import init_sharded
from unclip_jax import parallel
from unclip_jax.diffusion import losses, schedules
from unclip_jax.errors import UserError
from unclip_jax.models.unet import UNet

B, S, L = 2, 8, 5          # batch, decoder image size, text length
EMBED, TEXT_W = 16, 24


def tiny_decoder(**kw):
    cfg = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(8, 4), image_size=S, out_channels=6,
               num_head_channels=16, norm_groups=8, embed_dim=EMBED, clip_tokens=4,
               text_width=TEXT_W, context_dim=32, dropout=0.0)
    cfg.update(kw)
    return UNet(**cfg)


def tiny_upsampler(**kw):
    cfg = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, image_size=16,
               out_channels=3, norm_groups=8, low_res_channels=3, dropout=0.0)
    cfg.update(kw)
    return UNet(**cfg)


def decoder_inputs(key, batch=B):
    k = jax.random.split(key, 4)
    return dict(
        x=jax.random.normal(k[0], (batch, S, S, 3)),
        t=jnp.arange(batch) * 300 + 10,
        z_i=jax.random.normal(k[1], (batch, EMBED)),
        text_states=jax.random.normal(k[2], (batch, L, TEXT_W)),
        text_mask=jnp.arange(L)[None, :] < jnp.array([3, L, 1, 4])[:batch, None],
    )


@functools.lru_cache(maxsize=None)
def _jitted_apply(model, train):
    def f(params, x, t, kw, rngs):
        return model.apply(params, x, t, **kw, train=train, rngs=rngs)
    return jax.jit(f)


def call(model, params, inp, train=False, rngs=None, **kw):
    """model.apply on a dict of inputs (x, t, conditioning), jitted once per model and mode."""
    inp = dict(inp, **kw)
    x, t = inp.pop("x"), inp.pop("t")
    return _jitted_apply(model, train)(params, x, t, inp, rngs)


def init(model, key, x, t, **kw):
    """Jitted model.init with the partitioning boxes removed."""
    return nn.meta.unbox(jax.jit(model.init)(key, x, t, **kw))


def perturb(params, key, scale=0.1):
    """Add noise to every parameter, so zero-initialised output layers stop hiding inputs."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        tree, [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def decoder_setup():
    model = tiny_decoder()
    inp = decoder_inputs(jax.random.key(0))
    params = init(model, jax.random.key(1), inp["x"], inp["t"],
                  **{k: v for k, v in inp.items() if k not in ("x", "t")})
    return model, perturb(params, jax.random.key(2)), inp, params


@pytest.fixture(scope="module")
def upsampler_setup():
    model = tiny_upsampler()
    x, lo = jnp.zeros((B, 16, 16, 3)), jnp.zeros((B, 8, 8, 3))
    return model, init(model, jax.random.key(0), x, jnp.zeros((B,)), low_res=lo)


# ---------------------------------------------------------------------------------------------
# Shapes, dtypes, roles
# ---------------------------------------------------------------------------------------------
def test_decoder_tree_follows_the_documented_layout(decoder_setup):
    model, params, _, _ = decoder_setup
    p = params["params"]
    assert set(p) == {"time_embedding", "image_embed_proj", "clip_tokens_proj", "text_proj",
                      "text_norm", "conv_in", "down_blocks_0", "down_blocks_1", "mid_block",
                      "up_blocks_0", "up_blocks_1", "conv_norm_out", "conv_out"}
    assert set(p["down_blocks_0"]) == {"resnets_0", "attentions_0", "downsamplers_0"}
    assert set(p["down_blocks_1"]) == {"resnets_0", "attentions_0"}       # last level: no down
    assert set(p["mid_block"]) == {"resnets_0", "attentions_0", "resnets_1"}
    # up path: num_res_blocks + 1 = 2 blocks per level, skip concatenation widens the input.
    assert set(p["up_blocks_0"]) == {"resnets_0", "attentions_0", "resnets_1", "attentions_1",
                                     "upsamplers_0"}
    assert p["up_blocks_0"]["resnets_0"]["conv1"]["kernel"].shape == (3, 3, 64 + 64, 64)
    assert p["up_blocks_1"]["resnets_1"]["conv1"]["kernel"].shape == (3, 3, 32 + 32, 32)
    assert set(p["up_blocks_0"]["attentions_0"]) == {"group_norm", "to_q", "to_k", "to_v",
                                                     "add_k_proj", "add_v_proj", "to_out"}
    # scale-shift norm: the time projection gives 2 × channels
    assert p["down_blocks_1"]["resnets_0"]["time_emb_proj"]["kernel"].shape == (128, 128)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decoder_forward_shape_dtype_and_bf16_close(decoder_setup, dtype):
    model, params, inp, _ = decoder_setup
    ref = call(model, params, inp)
    out = call(model.clone(dtype=jnp.dtype(dtype)), params, inp)
    assert out.shape == (B, S, S, 6) and out.dtype == jnp.float32
    assert np.isfinite(np.asarray(out)).all()
    err = float(jnp.abs(out - ref).max() / jnp.abs(ref).max())
    assert err < (1e-6 if dtype == "float32" else 5e-2), err


def test_upsampler_shapes_and_any_size(upsampler_setup):
    model, params = upsampler_setup
    # no size-dependent parameters: the tree built at 32×32 has the same shapes
    big = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,)),
                                              low_res=jnp.zeros((1, 16, 16, 3))),
                         jax.random.key(0))
    assert jax.tree.map(lambda a: a.shape, params) == \
        jax.tree.map(lambda a: a.shape, nn.meta.unbox(big))
    assert "attentions_0" not in params["params"]["mid_block"]
    params = perturb(params, jax.random.key(1))
    for size, bf16 in ((16, False), (32, False), (32, True)):
        m = model.clone(dtype=jnp.bfloat16) if bf16 else model
        k1, k2 = jax.random.split(jax.random.key(size))
        out = call(m, params, dict(x=jax.random.normal(k1, (B, size, size, 3)),
                                   t=jnp.array([3, 700]),
                                   low_res=jax.random.normal(k2, (B, size // 2, size // 2, 3))))
        assert out.shape == (B, size, size, 3) and out.dtype == jnp.float32
        assert np.isfinite(np.asarray(out)).all()


def test_upsampler_uses_low_res(upsampler_setup):
    model, params = upsampler_setup
    params = perturb(params, jax.random.key(1))
    inp = dict(x=jnp.zeros((B, 16, 16, 3)), t=jnp.array([5, 5]),
               low_res=jax.random.normal(jax.random.key(3), (B, 8, 8, 3)))
    a = call(model, params, inp)
    b = call(model, params, dict(inp, low_res=-inp["low_res"]))
    assert float(jnp.abs(a - b).max()) > 1e-3


def test_dropout_in_train_mode(decoder_setup):
    model, params, inp, _ = decoder_setup
    m = model.clone(dropout=0.5)
    a = call(m, params, inp, train=True, rngs={"dropout": jax.random.key(0)})
    b = call(m, params, inp, train=True, rngs={"dropout": jax.random.key(1)})
    assert float(jnp.abs(a - b).max()) > 1e-4     # eval mode (other tests) is deterministic


# ---------------------------------------------------------------------------------------------
# Conditioning and classifier-free-guidance drops
# ---------------------------------------------------------------------------------------------
def _max_diff_per_example(a, b):
    return np.asarray(jnp.abs(a - b).reshape(a.shape[0], -1).max(-1))


def test_attention_attends_to_text_unless_dropped(decoder_setup):
    model, params, inp, _ = decoder_setup
    other = dict(inp, text_states=jax.random.normal(jax.random.key(9), inp["text_states"].shape))
    # not dropped: the output depends on the text token states (through encoder_kv only)
    d = _max_diff_per_example(call(model, params, inp), call(model, params, other))
    assert (d > 1e-3).all(), d
    # per-example drop: example 0 dropped (independent of text), example 1 kept
    drop = jnp.array([True, False])
    d = _max_diff_per_example(call(model, params, inp, drop_text=drop),
                              call(model, params, other, drop_text=drop))
    assert d[0] == 0.0 and d[1] > 1e-3, d


def test_masked_text_tokens_are_ignored(decoder_setup):
    model, params, inp, _ = decoder_setup
    states = inp["text_states"].at[0, 3:].set(100.0)      # example 0 masks tokens 3, 4
    d = _max_diff_per_example(call(model, params, inp),
                              call(model, params, dict(inp, text_states=states)))
    assert d[0] < 1e-6 and d[1] == 0.0, d


def test_image_embedding_conditions_unless_dropped(decoder_setup):
    model, params, inp, _ = decoder_setup
    other = dict(inp, z_i=jax.random.normal(jax.random.key(7), inp["z_i"].shape))
    d = _max_diff_per_example(call(model, params, inp), call(model, params, other))
    assert (d > 1e-3).all(), d
    drop = jnp.array([False, True])
    d = _max_diff_per_example(call(model, params, inp, drop_image_embed=drop),
                              call(model, params, other, drop_image_embed=drop))
    assert d[0] > 1e-3 and d[1] == 0.0, d
    # both dropped: only the timestep and the image remain
    both = dict(drop_image_embed=jnp.ones(B, bool), drop_text=jnp.ones(B, bool))
    np.testing.assert_array_equal(call(model, params, inp, **both),
                                  call(model, params, dict(other, text_states=-inp["text_states"]),
                                       **both))


def test_normalize_z_i_sees_only_the_direction(decoder_setup):
    """normalize_z_i adds no parameters; with it the output ignores z_i's norm and equals the
    plain model fed z_i·√D / ‖z_i‖ (so a unit-norm prior sample and a raw CLIP embedding
    agree)."""
    model, params, inp, _ = decoder_setup
    norm_model = tiny_decoder(normalize_z_i=True)
    scaled = dict(inp, z_i=inp["z_i"] * jnp.array([[9.0], [0.25]]))
    unit = dict(inp, z_i=inp["z_i"] * EMBED ** 0.5 / jnp.linalg.norm(inp["z_i"], axis=-1,
                                                                       keepdims=True))
    a = call(norm_model, params, inp)
    np.testing.assert_allclose(call(norm_model, params, scaled), a, atol=2e-5)
    np.testing.assert_allclose(call(model, params, unit), a, atol=2e-5)
    assert (_max_diff_per_example(call(model, params, inp),
                                  call(model, params, scaled)) > 1e-3).all()


def test_timestep_conditions_output(decoder_setup):
    model, params, inp, _ = decoder_setup
    d = _max_diff_per_example(call(model, params, inp), call(model, params, dict(inp, t=inp["t"] + 50)))
    assert (d > 1e-3).all(), d


# ---------------------------------------------------------------------------------------------
# Overfitting one tiny batch through the diffusion losses
# ---------------------------------------------------------------------------------------------
def _overfit(model, params, batch, extra, *, variance, loss, steps, lr=2e-3):
    sched = schedules.make_schedule("cosine", 1000)
    opt = optax.adam(lr)
    state = opt.init(params)

    def loss_fn(p):
        fn = lambda x_t, t: model.apply(p, x_t, t, **extra)  # noqa: E731
        terms = losses.training_losses(sched, fn, batch["x0"], batch["t"], batch["noise"],
                                       predict="eps", variance=variance, loss=loss)
        return terms["loss"].mean()

    @jax.jit
    def step(p, s):
        value, g = jax.value_and_grad(loss_fn)(p)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, value

    history = []
    for _ in range(steps):
        params, state, value = step(params, state)
        history.append(float(value))
    return params, np.array(history)


def _image_batch(key, size, batch=B):
    k1, k2 = jax.random.split(key)
    yy, xx = jnp.meshgrid(jnp.linspace(-1, 1, size), jnp.linspace(-1, 1, size), indexing="ij")
    x0 = jnp.stack([jnp.stack([xx, yy, xx * yy], -1) * (i + 1) / batch for i in range(batch)])
    return dict(x0=x0, t=jnp.array([150, 600][:batch]),
                noise=jax.random.normal(k1, x0.shape))


@pytest.mark.slow
def test_overfit_decoder_learned_variance_hybrid(decoder_setup):
    model, _, inp, params = decoder_setup
    extra = dict(z_i=inp["z_i"], text_states=inp["text_states"], text_mask=inp["text_mask"])
    batch = _image_batch(jax.random.key(1), S)
    # remat on: gradients through nn.remat'd ResBlocks / attention blocks must still train it
    _, hist = _overfit(model.clone(remat=True), params, batch, extra, variance="learned_range",
                       loss="hybrid", steps=200)
    print(f"decoder hybrid loss {hist[0]:.4f} -> {hist[-5:].mean():.5f}")
    assert hist[-5:].mean() < hist[0] / 10, (hist[0], hist[-5:])


@pytest.mark.slow
def test_overfit_upsampler_then_run_larger(upsampler_setup):
    model, params = upsampler_setup
    batch = _image_batch(jax.random.key(3), 16)
    low = jax.image.resize(batch["x0"], (B, 8, 8, 3), "bilinear")
    params, hist = _overfit(model, params, batch, dict(low_res=low), variance="fixed_small",
                            loss="mse", steps=200)
    print(f"upsampler mse {hist[0]:.4f} -> {hist[-5:].mean():.5f}")
    assert hist[-5:].mean() < hist[0] / 10, (hist[0], hist[-5:])
    # trained on 16×16 crops, the same parameters run on 32×32
    big = call(model, params, dict(x=jnp.zeros((B, 32, 32, 3)), t=jnp.array([10, 10]),
                                   low_res=jnp.zeros((B, 16, 16, 3))))
    assert big.shape == (B, 32, 32, 3) and np.isfinite(np.asarray(big)).all()


# ---------------------------------------------------------------------------------------------
# Sharding
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow   # ~50 s; sharding is also checked by test_train_loop's 1-vs-8-device run
def test_sharded_init_and_forward_match_unsharded(devices8, decoder_setup):
    model, params, inp, plain = decoder_setup
    extra = {k: v for k, v in inp.items() if k not in ("x", "t")}
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices8)
    init_fn = lambda k: model.init(k, inp["x"], inp["t"], **extra)  # noqa: E731
    sharded, shardings = init_sharded(init_fn, mesh, parallel.DEFAULT_RULES,
                                      jax.random.key(1))

    s = shardings["params"]
    assert s["down_blocks_1"]["resnets_0"]["conv1"]["kernel"].spec == P(None, None, "fsdp", "tensor")
    assert s["up_blocks_0"]["attentions_0"]["to_q"]["kernel"].spec == P("fsdp", "tensor")
    assert s["conv_in"]["kernel"].spec == P(None, None, None, "tensor")
    k = sharded["params"]["down_blocks_1"]["resnets_0"]["conv1"]["kernel"]
    assert k.addressable_shards[0].data.shape == (3, 3, 32 // 2, 64 // 2)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 sharded, plain)

    inp = decoder_inputs(jax.random.key(5), batch=4)     # 4 = data × fsdp
    ref = jnp.concatenate([call(model, params, jax.tree.map(lambda a: a[:2], inp)),
                           call(model, params, jax.tree.map(lambda a: a[2:], inp))])
    params_sharded = jax.device_put(params, shardings)
    inp_sharded = {k: jax.device_put(v, parallel.batch_sharding(mesh, v.ndim))
                   for k, v in inp.items()}
    # Sharded parameters, a sharded batch, and both at once reproduce the unsharded output.
    # Both at once needs the activation constraints active (parallel.activate): without them
    # XLA's partitioner miscomputed the attention's residual add on this mesh.
    f = jax.jit(lambda p, i: call(model, p, i))
    with parallel.activate(mesh):
        for p, i in ((params_sharded, inp), (params, inp_sharded), (params_sharded, inp_sharded)):
            np.testing.assert_allclose(np.asarray(f(p, i)), np.asarray(ref), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Configs and sizes
# ---------------------------------------------------------------------------------------------
def _param_count(cfg):
    m = UNet.from_config(cfg.model)
    size = 64
    kw = {}
    if m.embed_dim:
        kw = dict(z_i=jnp.zeros((1, m.embed_dim)), text_states=jnp.zeros((1, 8, m.text_width)))
    if m.low_res_channels:
        kw["low_res"] = jnp.zeros((1, size // 4, size // 4, m.low_res_channels))
    tree = jax.eval_shape(lambda k: m.init(k, jnp.zeros((1, size, size, 3)), jnp.zeros((1,)),
                                           **kw), jax.random.key(0))
    return sum(math.prod(a.shape) for a in jax.tree.leaves(tree))


def test_paper_parameter_counts():
    """Table 3: decoder 3.5B = GLIDE's ~1.2B text transformer (not used here; CLIP token states
    are projected instead) + a ~2.3B UNet; upsamplers 700M and 300M."""
    n = {s: _param_count(paper.get_config(s)) for s in ("decoder", "upsampler1", "upsampler2")}
    print({k: f"{v / 1e6:.0f}M" for k, v in n.items()})
    assert 2.1e9 < n["decoder"] < 2.5e9, n          # the UNet alone, near 2.3B
    assert 0.63e9 < n["upsampler1"] < 0.77e9, n     # ≈ 700M
    assert 0.25e9 < n["upsampler2"] < 0.35e9, n     # ≈ 300M


@pytest.mark.parametrize("stage", ["decoder", "upsampler1", "upsampler2"])
def test_shapes_configs_build(stage):
    cfg = shapes.get_config(stage)
    m = UNet.from_config(cfg.model)
    assert m.out_channels == (6 if stage == "decoder" else 3)
    assert (m.low_res_channels > 0) == (stage != "decoder")
    assert _param_count(cfg) > 0


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_fix(decoder_setup):
    model, params, inp, _ = decoder_setup
    with pytest.raises(UserError, match="needs z_i"):
        call(model, params, dict(inp, z_i=None))
    with pytest.raises(UserError, match="use drop_text"):
        call(model, params, dict(inp, text_states=None, text_mask=None))
    with pytest.raises(UserError, match=r"x_t must be NHWC \[B, H, W, 3\]"):
        call(model, params, dict(inp, x=jnp.zeros((B, S, S, 4))))
    with pytest.raises(UserError, match="not divisible by 2"):
        call(model, params, dict(inp, x=jnp.zeros((B, 7, 7, 3))))
    with pytest.raises(UserError, match="low_res_channels is 0"):
        call(model, params, inp, low_res=jnp.zeros((B, 4, 4, 3)))
    up = tiny_upsampler()
    with pytest.raises(UserError, match="pass low_res"):
        up.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1,)))


def test_bad_config_names_the_fix():
    with pytest.raises(ValueError, match="set model.norm_groups"):
        tiny_upsampler(norm_groups=12).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                                            jnp.zeros((1,)), low_res=jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(UserError, match="are not level resolutions"):
        tiny_upsampler(attention_resolutions=(2,)).init(
            jax.random.key(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1,)),
            low_res=jnp.zeros((1, 8, 8, 3)))
    cfg = shapes.get_config("decoder").model.to_dict()
    cfg["num_res_block"] = 2
    with pytest.raises(UserError, match=r"unknown UNet config keys \['num_res_block'\]"):
        UNet.from_config(cfg)


@pytest.mark.parametrize("shape,groups", [((2, 8, 8, 16), 4), ((3, 5, 7, 12), 3), ((2, 6, 24), 8)])
def test_group_norm_matches_flax_groupnorm_and_its_gradient(shape, groups):
    """The fused two-pass GroupNorm equals flax.linen.GroupNorm (values and gradients, all of
    x, scale, bias) on inputs with a large mean, where a one-pass E[x²]−E[x]² would lose digits."""
    from unclip_jax.models.unet_blocks import group_norm
    x = 3.0 * jax.random.normal(jax.random.key(0), shape) + 20.0
    C = shape[-1]
    scale, bias = jnp.linspace(0.5, 1.5, C), jnp.linspace(-1.0, 1.0, C)
    ref = nn.GroupNorm(num_groups=groups, epsilon=1e-5, use_fast_variance=False)

    def ours(x, s, b):
        return jnp.sum(jnp.sin(group_norm(x, s, b, groups)))

    def theirs(x, s, b):
        return jnp.sum(jnp.sin(ref.apply({"params": {"scale": s, "bias": b}}, x)))

    np.testing.assert_allclose(group_norm(x, scale, bias, groups),
                               ref.apply({"params": {"scale": scale, "bias": bias}}, x),
                               rtol=1e-5, atol=2e-5)
    for g1, g2 in zip(jax.grad(ours, (0, 1, 2))(x, scale, bias),
                      jax.grad(theirs, (0, 1, 2))(x, scale, bias)):
        np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-4)

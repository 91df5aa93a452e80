"""Editing: inpainting, img2img, negative prompts, mixing (tiny random checkpoints from
tests/pipeline_fixtures.py, and a toy ε-model for the sampler math)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from pipeline_fixtures import CAPTIONS, dirs, pipe, read_png, smooth_image  # noqa: F401 (fixtures)
from unclip_jax import cli
from unclip_jax.sample.images import to_uint8
from unclip_jax.sample.sidecars import sidecar_path
from unclip_jax.diffusion import editing as E
from unclip_jax.diffusion import samplers, schedules
from unclip_jax.errors import UserError
from unclip_jax.eval.upsamplers import psnr
from unclip_jax.sample.unclip import UnCLIP
from unclip_jax.sample.stage_fns import unet_model_fn

DEC = dict(prior_steps="2", decoder_steps="6")
FAST = dict(DEC, upsampler_steps="ddim2")


@pytest.fixture(scope="module")
def pipe8(dirs):
    """Decoder only (8 px), with the diffusion prior."""
    return UnCLIP.load(clip=dirs["clip"], prior=dirs["prior"], decoder=dirs["decoder"],
                       tokenizer=dirs["tokenizer"], progress=False)


def _image(seed=0, size=32):
    return to_uint8(smooth_image(seed, size))


def _mask(size=32):
    m = np.zeros((size, size), np.uint8)
    m[size // 4:size // 2 + 2, size // 3:size - 4] = 255
    return m


# ------------------------------------------------------------------------- sampler math

def _toy():
    sched = schedules.respace("cosine", 100, "10")
    w = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3)) * 0.3, jnp.float32)

    def model_fn(x, t):
        return jnp.tanh(x @ w) * (1 + t[:, None, None, None] / 100.0)
    x0 = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 4, 4, 3)), jnp.float32)
    return sched, model_fn, x0


@pytest.mark.parametrize("ddim", [False, True])
def test_edit_sample_start_full_is_plain_sampling_and_start_zero_the_input(ddim):
    sched, model_fn, x0 = _toy()
    key = jax.random.key(3)
    kw = dict(predict="eps", variance="fixed_small")
    plain = (samplers.ddim_sample(model_fn, sched, x0.shape, key, predict="eps", eta=0.5)
             if ddim else samplers.ddpm_sample(model_fn, sched, x0.shape, key, **kw))
    run = jax.jit(lambda start: E.edit_sample(model_fn, sched, x0, key, ddim=ddim, eta=0.5,
                                              start=start, **kw))
    np.testing.assert_array_equal(np.asarray(run(10)), np.asarray(plain))
    np.testing.assert_array_equal(np.asarray(run(0)), np.asarray(x0))
    # strength in between: closer to the input the earlier it starts
    d = [float(jnp.abs(run(s) - x0).mean()) for s in (0, 3, 6, 10)]
    assert d == sorted(d) and d[1] > 0


def test_repaint_keeps_the_known_region_exactly_with_jumps():
    sched, model_fn, x0 = _toy()
    mask = jnp.zeros((2, 4, 4, 1)).at[:, :2].set(1.0)
    ops = E.repaint_ops(10, 2, 3)
    out = E.edit_sample(model_fn, sched, x0, jax.random.key(0), predict="eps",
                        variance="fixed_small", ddim=False, mask=mask, ops=ops)
    np.testing.assert_array_equal(np.asarray(out)[:, 2:], np.asarray(x0)[:, 2:])
    assert float(jnp.abs(out - x0)[:, :2].mean()) > 0.1
    # the jump schedule walks levels N → 0 one level at a time, never above N
    level, downs = 10, 0
    for s, kind, _ in ops:
        if kind == E.DOWN:
            assert s == level - 1
            level, downs = level - 1, downs + 1
        else:
            assert s == level
            level += 1
        assert 0 <= level <= 10
    assert level == 0 and downs == 10 + 2 * 2 * 4     # 4 jump levels (8, 6, 4, 2), 2 jumps each
    np.testing.assert_array_equal(E.repaint_ops(10)[:, 0], np.arange(9, -1, -1))


def test_mix_embeddings_one_hot_symmetric_and_moves_toward_heavier_input():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 16)).astype(np.float32) * np.array([[1.0], [2.0], [0.5]], np.float32)
    np.testing.assert_allclose(E.mix_embeddings(z, [1, 0, 0]), z[0], rtol=1e-5, atol=1e-6)
    perm = [2, 0, 1]
    np.testing.assert_allclose(E.mix_embeddings(z, [0.2, 0.3, 0.5]),
                               E.mix_embeddings(z[perm], np.array([0.2, 0.3, 0.5])[perm]),
                               rtol=1e-5, atol=1e-6)
    for k in range(3):
        cos = []
        for w in np.linspace(0.0, 1.0, 6):
            weights = np.full(3, (1 - w) / 2)
            weights[k] = w
            m = np.asarray(E.mix_embeddings(z, weights))
            cos.append(m @ z[k] / np.linalg.norm(m) / np.linalg.norm(z[k]))
        assert np.all(np.diff(cos) > 0), (k, cos)


# ------------------------------------------------------------------------- negative prompts

@pytest.mark.slow   # ~40 s; test_negative_equal_to_prompt_gives_the_conditional_result stays
def test_negative_prompt_replaces_the_unconditional_branch(dirs, pipe8):
    """Decoder level: the guided ε with a negative equals uncond(negative) + s·(cond −
    uncond(negative)) computed by hand from two unguided calls."""
    st = pipe8.stages["decoder"]
    text = pipe8.encode_text(CAPTIONS[:2])
    neg = pipe8.encode_text(CAPTIONS[2:4])
    rng = np.random.default_rng(0)
    z, z_neg = (jnp.asarray(rng.normal(size=(2, 16)), jnp.float32) for _ in range(2))
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
    t = jnp.array([50, 10])
    cfg = st.config.diffusion
    common = dict(predict=cfg.predict, learned_variance=cfg.variance == "learned_range")
    guided = unet_model_fn(st.params, st.model, z_i=z, text_states=text["states"],
                           text_mask=text["mask"], guidance=3.0, uncond=dict(neg, z_i=z_neg),
                           **common)(x, t)
    cond = unet_model_fn(st.params, st.model, z_i=z, text_states=text["states"],
                         text_mask=text["mask"], **common)(x, t)
    unc = unet_model_fn(st.params, st.model, z_i=z_neg, text_states=neg["states"],
                        text_mask=neg["mask"], **common)(x, t)
    c = 3   # the ε channels (a learned-variance half, if any, comes from the cond rows)
    want = unc[..., :c] + 3.0 * (cond[..., :c] - unc[..., :c])
    np.testing.assert_allclose(guided[..., :c], want, rtol=1e-4, atol=1e-4)


def test_negative_equal_to_prompt_gives_the_conditional_result(pipe8):
    """negative = prompt: both guided stages reduce to their conditional prediction, so the
    result is the unguided (guidance 1) one; another negative changes it."""
    p = CAPTIONS[:2]
    _, a = pipe8.generate(p, 0, negative_prompts=p, prior_guidance=3.0, decoder_guidance=3.0,
                          return_intermediates=True, **DEC)
    _, b = pipe8.generate(p, 0, prior_guidance=1.0, decoder_guidance=1.0,
                          return_intermediates=True, **DEC)
    _, c = pipe8.generate(p, 0, negative_prompts=CAPTIONS[4:6], prior_guidance=3.0,
                          decoder_guidance=3.0, return_intermediates=True, **DEC)
    np.testing.assert_allclose(a["z_i"], b["z_i"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(a["decoder"], b["decoder"], rtol=1e-3, atol=1e-3)
    assert np.abs(c["z_i"] - b["z_i"]).max() > 1e-2


# ------------------------------------------------------------------------- inpaint / img2img

def _check_inpaint(pipe, size, steps, **kw):
    img, mask = _image(0, size), _mask(size)
    out, inter = pipe.inpaint(img, mask, CAPTIONS[0], 0, n=2, return_intermediates=True,
                              **kw, **steps)
    assert out.shape == (2, size, size, 3)
    keep = inter["mask"][..., 0] == 0            # the mask at the final size
    assert keep[0].sum() > 0.5 * keep[0].size and (~keep[0]).sum() > 0
    for i in range(2):
        assert psnr(out[i][keep[i]][None], img[keep[i]][None])[0] >= 35.0
        assert np.abs(out[i][~keep[i]].astype(int) - img[~keep[i]]).mean() > 5


def test_inpaint_preserves_the_unmasked_region(pipe8):
    """Decoder only (8 px): the kept pixels are the input's, with resampling jumps too; the
    mask reaches a coarser stage with soft edges."""
    _check_inpaint(pipe8, 8, DEC)
    _check_inpaint(pipe8, 8, DEC, jump_length=2, resamplings=2)
    from unclip_jax.sample.masks import stage_mask
    m = _mask(32).astype(np.float32) / 255
    for feather in (0.0, 2.0):
        soft = stage_mask(m, 8, feather)[..., 0]     # the decoder's 8 px mask
        assert ((soft > 0.05) & (soft < 0.95)).any() and soft.max() > 0.9 and soft.min() < 0.01
    np.testing.assert_array_equal(stage_mask(m, 32)[..., 0], m)    # same size: unchanged


@pytest.mark.slow
def test_inpaint_full_chain_preserves_the_unmasked_region_at_the_final_size(pipe):
    """Decoder and both upsamplers, the mask resized for each stage, PSNR at 32 px."""
    _check_inpaint(pipe, 32, FAST, jump_length=2, resamplings=2)


def _check_img2img(pipe, size, steps):
    img = _image(1, size)
    outs = {s: pipe.img2img(img, CAPTIONS[1], 0, strength=s, **steps)
            for s in (0.0, 0.5, 1.0)}
    assert np.abs(outs[0.0].astype(int) - img).max() <= 1
    d = [np.abs(outs[s].astype(float) - img).mean() for s in (0.0, 0.5, 1.0)]
    assert d[0] < d[1] < d[2], d
    plain = pipe.generate([CAPTIONS[1]], 0, **steps)
    assert np.abs(outs[1.0].astype(int) - plain).max() <= 1


def test_img2img_strength_zero_is_identity_one_is_generation_distance_grows(pipe8):
    _check_img2img(pipe8, 8, dict(prior_steps="2", decoder_steps="8"))


@pytest.mark.slow
def test_img2img_full_chain(pipe):
    _check_img2img(pipe, 32, dict(prior_steps="2", decoder_steps="8", upsampler_steps="ddim4"))


# ------------------------------------------------------------------------- mixing

def test_mix_one_hot_weights_reproduce_the_single_input(pipe8):
    img = _image(2, 16)
    a, ia = pipe8.mix([img, CAPTIONS[0]], [1.0, 0.0], 0, n=2, return_intermediates=True, **DEC)
    b = pipe8.mix([img], [1.0], 0, n=2, **DEC)
    np.testing.assert_array_equal(a, b)
    z_img = pipe8.encode_images(img[None])[0]
    np.testing.assert_allclose(ia["z_i"][0], z_img, rtol=1e-5, atol=1e-5)
    direct = pipe8.decode(np.repeat(z_img[None], 2, 0), 0, decoder_steps=DEC["decoder_steps"])
    np.testing.assert_array_equal(a, to_uint8(direct["decoder"]))
    # a prompt alone: its prior sample
    p = pipe8.mix([CAPTIONS[0], img], [1.0, 0.0], 0, return_intermediates=True, **DEC)[1]
    np.testing.assert_allclose(p["z_i"][0], p["inputs"][0], rtol=1e-5, atol=1e-5)
    # heavier weight → the mixed embedding is closer to that input
    cos = []
    for w in (0.2, 0.5, 0.8):
        z = pipe8.mix([img, CAPTIONS[0]], [w, 1 - w], 0, return_intermediates=True,
                      **DEC)[1]["z_i"][0]
        cos.append(z @ z_img / np.linalg.norm(z) / np.linalg.norm(z_img))
    assert cos[0] < cos[1] < cos[2]


# ------------------------------------------------------------------------- sharded

@pytest.mark.slow
def test_edits_sharded_equal_single_device(dirs, devices8):
    kw = dict(clip=dirs["clip"], prior=dirs["prior"], decoder=dirs["decoder"],
              tokenizer=dirs["tokenizer"], progress=False)
    one = UnCLIP.load(**kw, devices=devices8[:1])
    eight = UnCLIP.load(**kw, devices=devices8)
    img, mask = _image(0, 16), _mask(16)
    runs = [lambda p: p.inpaint([img, _image(1, 16)], mask, CAPTIONS[:2], 3, n=2, **DEC),
            lambda p: p.img2img(img, CAPTIONS[0], 3, strength=0.5, n=3, **DEC),
            lambda p: p.generate(CAPTIONS[:3], 3, negative_prompts=CAPTIONS[3], **DEC),
            lambda p: p.mix([img, CAPTIONS[0]], [0.3, 0.7], 3, n=3, **DEC)]
    for run in runs:
        a, b = run(one), run(eight)
        assert a.shape == b.shape
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


# ------------------------------------------------------------------------- CLI and errors

def _files(tmp_path):
    img = tmp_path / "in.png"
    Image.fromarray(_image(0, 32)).save(img)
    mask = tmp_path / "mask.png"
    Image.fromarray(_mask(32), "L").save(mask)
    return str(img), str(mask)


@pytest.mark.slow
def test_edit_commands_write_grids_and_sidecars_that_regenerate(dirs, tmp_path):
    img, mask = _files(tmp_path)
    common = ["--checkpoint", dirs["root"], "--decoder-steps", "2", "--prior-steps", "2",
              "--upsampler-steps", "ddim1", "--no-progress", "-n", "2", "--cols", "2"]
    for argv in (["inpaint", img, CAPTIONS[0], "--mask", mask, "--negative", CAPTIONS[1]],
                 ["img2img", img, CAPTIONS[0], "--strength", "0.5"],
                 ["mix", img, CAPTIONS[0], "--weights", "0.4", "0.6"],
                 ["sample", CAPTIONS[0], "--negative", CAPTIONS[1]]):
        out = str(tmp_path / f"{argv[0]}.png")
        assert cli.main(argv + common + ["--out", out]) == 0
        rec = json.load(open(sidecar_path(out)))
        assert rec["command"] == argv[0]
        regen = str(tmp_path / f"{argv[0]}-again.png")
        assert cli.main(["sample", "--from-sidecar", sidecar_path(out), "--out", regen,
                         "--no-progress"]) == 0
        np.testing.assert_array_equal(read_png(regen), read_png(out))
    assert rec["settings"]["negative_prompts"] == CAPTIONS[1]


def _bad_masks(tmp_path):
    out = {}
    for name, arr in [("small", np.zeros((16, 16), np.uint8)),
                      ("empty", np.zeros((32, 32), np.uint8)),
                      ("full", np.full((32, 32), 255, np.uint8)),
                      ("gray", np.random.default_rng(0).integers(0, 256, (32, 32)).astype(np.uint8))]:
        if name == "small":
            arr[4:8, 4:8] = 255
        p = tmp_path / f"{name}.png"
        Image.fromarray(arr, "L").save(p)
        out[name] = str(p)
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[8:16, 8:16] = (255, 0, 0)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    out["colour"] = str(tmp_path / "colour.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    out["broken"] = str(tmp_path / "broken.png")
    return out


@pytest.mark.parametrize("argv,msg", [
    (["inpaint", "IMG", "a", "--mask", "small"], "is 16×16 but the image is 32×32"),
    (["inpaint", "IMG", "a", "--mask", "colour"], "colours"),
    (["inpaint", "IMG", "a", "--mask", "gray"], "not black and white"),
    (["inpaint", "IMG", "a", "--mask", "empty"], "all black"),
    (["inpaint", "IMG", "a", "--mask", "full"], "all white"),
    (["inpaint", "broken", "a", "--mask", "MASK"], "cannot read image"),
    (["img2img", "IMG", "a", "--strength", "1.5"], "strength 1.5 must lie in [0, 1]"),
    (["img2img", "IMG", "a", "--strength", "-0.1"], "must lie in [0, 1]"),
    (["mix", "IMG", "a", "--weights", "1"], "1 weights for 2 inputs"),
    (["mix", "IMG", "a", "--weights", "1", "-1"], "sum to 0"),
    (["mix", "broken", "a"], "cannot read image"),
    (["sample", "a", "--negative", " "], "negative prompt 0 is empty"),
])
def test_bad_edit_inputs_are_one_line_and_write_nothing(dirs, tmp_path, capsys, argv, msg):
    img, mask = _files(tmp_path)
    bad = _bad_masks(tmp_path)
    sub = dict(bad, IMG=img, MASK=mask)
    argv = [sub.get(a, a) for a in argv]
    out = tmp_path / "x.png"
    rc = cli.main(argv + ["--checkpoint", dirs["root"], "--out", str(out), "--no-progress",
                          "--decoder-steps", "2", "--prior-steps", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[-1].startswith("unclip-jax: error:") and msg in err[-1], err
    assert not out.exists() and not os.path.exists(sidecar_path(str(out)))


def test_mask_arrays_and_api_errors(pipe8):
    img = _image(0, 16)
    with pytest.raises(UserError, match="one grayscale channel"):
        pipe8.inpaint(img, np.zeros((16, 16, 4), np.uint8), "a", 0, **DEC)
    with pytest.raises(UserError, match="2 masks for 1 images"):
        pipe8.inpaint(img, [_mask(16), _mask(16)], "a", 0, **DEC)
    with pytest.raises(UserError, match="weights sum to 0"):
        pipe8.mix([img, "a"], [0.0, 0.0], 0)
    with pytest.raises(UserError, match="2 negative prompts for 1 prompts"):
        pipe8.generate(["a"], 0, negative_prompts=["b", "c"], **DEC)
    # a bool mask works as well as the uint8 one
    m = _mask(16)
    a = pipe8.inpaint(img, m, "a", 0, **DEC)
    b = pipe8.inpaint(img, m > 0, "a", 0, **DEC)
    np.testing.assert_array_equal(a, b)

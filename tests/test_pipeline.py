"""UnCLIP sampling pipeline on tiny random checkpoints (tests/pipeline_fixtures.py)."""
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from pipeline_fixtures import CAPTIONS, T, dirs, pipe, smooth_image  # noqa: F401 (fixtures)
from unclip_jax.sample.images import image_to_float, load_image, to_uint8
from unclip_jax.errors import CheckpointError, UserError
from unclip_jax.sample.unclip import UnCLIP
from unclip_jax.sample.manipulations import slerp, slerp_flat

FAST = dict(prior_steps="2", decoder_steps="2", upsampler_steps="ddim1")


@pytest.fixture(scope="module")
def pipe64(dirs):
    """No upsamplers: the chain ends at the decoder (8 px here)."""
    return UnCLIP.load(clip=dirs["clip"], decoder=dirs["decoder"], tokenizer=dirs["tokenizer"],
                       progress=False)


# ------------------------------------------------------------------------- slerp

def test_slerp_endpoints_norm_and_angle():
    rng = np.random.default_rng(0)
    a, b = (io_l2(rng.normal(size=16)) for _ in range(2))
    t = jnp.linspace(0, 1, 7)[:, None]
    path = np.asarray(slerp(a, b, t))
    np.testing.assert_allclose(path[0], a, atol=1e-6)
    np.testing.assert_allclose(path[-1], b, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(path, axis=-1), 1.0, atol=1e-5)
    # equal angular steps: angle(a, path_k) = t_k · angle(a, b)
    def angle(u, v):   # atan2 form: accurate near 0 as well
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        dot = u @ v
        return np.arctan2(np.linalg.norm(u - np.outer(dot, v) if u.ndim > 1 else u - dot * v,
                                         axis=-1), dot)
    full = angle(a, b)
    got = angle(path, a)
    np.testing.assert_allclose(got, np.asarray(t[:, 0]) * full, atol=1e-4)


def test_slerp_near_parallel_and_flat():
    a = np.array([1.0, 0.0, 0.0], np.float32)
    b = np.array([1.0, 1e-7, 0.0], np.float32)
    mid = np.asarray(slerp(a, b, 0.5))
    assert np.all(np.isfinite(mid))
    np.testing.assert_allclose(mid, (a + b) / 2, atol=1e-6)
    x = np.random.default_rng(1).normal(size=(2, 4, 4, 3)).astype(np.float32)
    frames = np.asarray(slerp_flat(x[0], x[1], jnp.array([0.0, 1.0])))
    np.testing.assert_allclose(frames, x, atol=1e-5)


def io_l2(v):
    return (v / np.linalg.norm(v)).astype(np.float32)


# ------------------------------------------------------------------------- generate

def test_generate_end_to_end_seeds(pipe):
    prompts = CAPTIONS[:2]
    # the program cache is shared by every UnCLIP on these checkpoints (other test files load
    # them too): count only what this test's calls add
    before = set(pipe.compiled)
    imgs, inter = pipe.generate(prompts, 0, return_intermediates=True, **FAST)
    assert imgs.dtype == np.uint8 and imgs.shape == (2, 32, 32, 3)
    assert inter["z_i"].shape == (2, 16) and inter["x_T"].shape == (2, 8, 8, 3)
    assert inter["decoder"].shape == (2, 8, 8, 3) and inter["upsampler1"].shape == (2, 16, 16, 3)
    assert [pipe.image_size(s) for s in ("clip", "decoder", "upsampler1")] == [16, 8, 16]
    np.testing.assert_array_equal(imgs, to_uint8(inter["upsampler2"]))
    assert np.all(np.isfinite(inter["z_i"]))
    after_first = set(pipe.compiled)
    again = pipe.generate(prompts, 0, **FAST)
    np.testing.assert_array_equal(imgs, again)
    other = pipe.generate(prompts, 1, **FAST)
    assert np.abs(other.astype(int) - imgs.astype(int)).max() > 0
    # one compiled program per stage for these shapes and settings, reused by the re-runs
    added = {k for k in after_first - before if k[0] in ("prior", "decoder")}
    assert len(added) <= 2 and len({k[0] for k in added}) == len(added)
    assert set(pipe.compiled) == after_first


def test_generate_decode_reproduces_from_intermediates(pipe):
    imgs, inter = pipe.generate(CAPTIONS[:2], 5, return_intermediates=True, **FAST)
    text = pipe.encode_text(CAPTIONS[:2])
    redo = pipe.decode(inter["z_i"], 5, x_T=inter["x_T"], text=text,
                       decoder_steps=FAST["decoder_steps"],
                       upsampler_steps=FAST["upsampler_steps"])
    np.testing.assert_array_equal(to_uint8(redo["upsampler2"]), imgs)


def test_sharded_equals_single_device(dirs, devices8):
    one = UnCLIP.load(clip=dirs["clip"], prior=dirs["prior"], decoder=dirs["decoder"],
                      tokenizer=dirs["tokenizer"], devices=devices8[:1], progress=False)
    eight = UnCLIP.load(clip=dirs["clip"], prior=dirs["prior"], decoder=dirs["decoder"],
                        tokenizer=dirs["tokenizer"], devices=devices8, progress=False)
    assert eight.num_devices == 8 and one.num_devices == 1
    kw = dict(prior_steps="2", decoder_steps="2")
    a, ia = one.generate(CAPTIONS[:3], 7, return_intermediates=True, **kw)
    b, ib = eight.generate(CAPTIONS[:3], 7, return_intermediates=True, **kw)
    np.testing.assert_allclose(ia["z_i"], ib["z_i"], atol=1e-5)
    # The untrained decoder's outputs reach ~1e3; a different reduction order across devices
    # moves single elements by float32 rounding of that scale, so the tolerance follows it.
    scale = float(np.abs(ia["decoder"]).max())
    np.testing.assert_allclose(ia["decoder"], ib["decoder"], rtol=1e-3, atol=1e-4 * max(scale, 1.0))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_ar_prior_generates(dirs, pipe64):
    ar = UnCLIP.load(clip=dirs["clip"], ar_prior=dirs["ar_prior"], decoder=dirs["decoder"],
                     tokenizer=dirs["tokenizer"], progress=False)
    imgs, inter = ar.generate(CAPTIONS[:2], 0, decoder_steps="2", return_intermediates=True)
    assert imgs.shape == (2, 8, 8, 3) and imgs.dtype == np.uint8
    assert np.all(np.isfinite(inter["z_i"])) and inter["z_i"].shape == (2, 16)


# ------------------------------------------------------------------------- manipulations

def test_one_pil_image_is_a_batch_of_one(pipe64):
    """text_diff / invert / variations take one PIL image as well as a list of them."""
    from PIL import Image
    pil = Image.fromarray(((smooth_image(0) + 1) * 127.5).round().astype(np.uint8))
    kw = dict(decoder_steps="ddim2", decoder_guidance=1.0)
    x0, z, xt = pipe64.invert(pil, **kw)
    x0_list, z_list, xt_list = pipe64.invert([pil], **kw)
    assert x0.shape == (1, 8, 8, 3)
    for a, b in ((x0, x0_list), (z, z_list), (xt, xt_list)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_variations_eta0_reconstructs_input(pipe64):
    """decode(invert(x)) ≈ x with DDIM η = 0. (With an untrained ε model the inversion is
    ill-conditioned at the last, nearly pure-noise steps, so few steps work best here.)"""
    x = np.stack([smooth_image(0), smooth_image(1)])
    kw = dict(decoder_steps="ddim10", decoder_guidance=1.0)
    imgs, inter = pipe64.variations(x, 0, n=1, eta=0.0, return_intermediates=True, **kw)
    assert imgs.shape == (2, 8, 8, 3) and imgs.dtype == np.uint8
    err = np.abs(inter["decoder"] - x).mean()
    assert err < 0.1, err
    # the same z_i decoded from another x_T lands far from the input
    other = pipe64.decode(inter["z_i"], 3, decoder_steps="ddim10", decoder_guidance=1.0,
                          ddim=True)["decoder"]
    assert np.abs(other - x).mean() > 3 * err
    vary = pipe64.variations(x, 0, n=2, eta=1.0, return_intermediates=True, **kw)[1]["decoder"]
    assert vary.shape == (4, 8, 8, 3) and np.abs(vary[0] - vary[1]).max() > 0.01


def test_interpolate_endpoints(pipe64):
    a, b = smooth_image(2), smooth_image(3)
    imgs, inter = pipe64.interpolate(a, b, 4, 0, decoder_steps="ddim2",
                                     return_intermediates=True)
    assert imgs.shape == (4, 8, 8, 3)
    z = inter["z_i"]
    np.testing.assert_allclose(z[0], inter["endpoints"][0], atol=1e-5)
    np.testing.assert_allclose(z[-1], inter["endpoints"][1], atol=1e-5)
    # CLIP sees the source image resized to its own input size (16 px here)
    clip_size = pipe64.stages["clip"].model.image_size
    np.testing.assert_allclose(z[0], pipe64.encode_images(image_to_float(a, clip_size)[None])[0],
                               atol=1e-5)
    # ... not the decoder-size picture: a 32 px source gives the embedding of its 16 px resize
    big = smooth_image(5, size=32)
    z_big = pipe64.interpolate(big, b, 2, 0, decoder_steps="ddim2",
                               return_intermediates=True)[1]["endpoints"][0]
    np.testing.assert_allclose(z_big, pipe64.encode_images(image_to_float(big, clip_size)[None])[0],
                               atol=1e-5)
    small = image_to_float(big, pipe64.image_size("decoder"))
    assert np.abs(z_big - pipe64.encode_images(small[None])[0]).max() > 1e-2
    fixed = pipe64.interpolate(a, b, 4, 0, fixed_xT=True, decoder_steps="ddim2",
                               return_intermediates=True)[1]
    assert np.all(fixed["x_T"] == fixed["x_T"][:1])


def test_text_diff_angle_zero_is_original(pipe64):
    img = smooth_image(4)
    imgs, inter = pipe64.text_diff(img, CAPTIONS[0], CAPTIONS[1], n=3, max_angle=0.5, key=0,
                                   decoder_steps="ddim2", return_intermediates=True)
    assert imgs.shape == (3, 8, 8, 3)
    clip_size = pipe64.stages["clip"].model.image_size
    z0 = pipe64.encode_images(image_to_float(img, clip_size)[None])[0]
    np.testing.assert_allclose(inter["z_i"][0], z0, atol=1e-6)
    norms = np.linalg.norm(inter["z_i"], axis=-1)
    np.testing.assert_allclose(norms, np.linalg.norm(z0), rtol=1e-5)
    # moving toward z_d: the cosine with z_d grows with the angle
    cos = inter["z_i"] @ inter["z_d"] / norms
    assert cos[0] < cos[1] < cos[2]


# ------------------------------------------------------------------------- bad input

def test_bad_prompts(pipe):
    with pytest.raises(UserError, match="no prompts"):
        pipe.generate([], 0, **FAST)
    with pytest.raises(UserError, match="prompt 1 is empty"):
        pipe.generate(["a red circle", "  "], 0, **FAST)


def test_long_prompt_truncated_with_warning(pipe):
    with pytest.warns(UserWarning, match="truncated"):
        imgs = pipe.generate(["a red circle " * 20, CAPTIONS[1]], 0, **FAST)
    assert imgs.shape == (2, 32, 32, 3)


@pytest.mark.parametrize("kw,msg", [
    (dict(decoder_guidance=-1.0), "decoder guidance must be a finite number >= 0"),
    (dict(prior_guidance=-0.5), "prior guidance must be a finite number >= 0"),
    (dict(decoder_steps="0"), "at least 1"),
    (dict(prior_steps=str(T + 1)), f"at most {T} steps"),
    (dict(upsampler_steps="ddim999"), f"at most {T} steps"),
    (dict(decoder_steps="fast"), "is not a step count"),
    (dict(num_images_per_prompt=0), "must be an integer ≥ 1"),
    (dict(eta=-1.0), "eta=-1.0 must be >= 0"),
])
def test_bad_settings(pipe, kw, msg):
    settings = dict(FAST, **kw)
    with pytest.raises(UserError, match=msg):
        pipe.generate(CAPTIONS[:1], 0, **settings)


def test_wrong_stage_and_missing_parts(dirs):
    with pytest.raises(CheckpointError, match="'decoder' checkpoint but a prior checkpoint"):
        UnCLIP.load(prior=dirs["decoder"])
    with pytest.raises(CheckpointError, match="does not exist"):
        UnCLIP.load(decoder=os.path.join(dirs["root"], "nope"))
    with pytest.raises(UserError, match="either prior= or ar_prior="):
        UnCLIP.load(prior=dirs["prior"], ar_prior=dirs["ar_prior"])
    with pytest.raises(UserError, match="upsampler2 needs upsampler1"):
        UnCLIP.load(decoder=dirs["decoder"], upsampler2=dirs["upsampler2"])
    p = UnCLIP.load(clip=dirs["clip"], decoder=dirs["decoder"], progress=False)
    with pytest.raises(UserError, match="needs a tokenizer"):
        p.generate(["x"], 0)


def test_image_inputs(pipe64, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        pipe64.variations([str(tmp_path / "missing.png")], 0, n=1)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read image"):
        pipe64.variations([str(bad)], 0, n=1)
    rgb = (np.random.default_rng(0).uniform(size=(12, 20, 3)) * 255).astype(np.uint8)
    base = Image.fromarray(rgb, "RGB")
    for mode in ("L", "RGBA", "CMYK", "P", "I;16"):
        path = tmp_path / f"img_{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}"
        base.convert(mode).save(path)
        x = load_image(str(path), 8)
        assert x.shape == (8, 8, 3) and x.dtype == np.float32
        assert -1.0 <= x.min() and x.max() <= 1.0
    # RGBA is composited on white: a fully transparent image becomes white
    Image.new("RGBA", (9, 9), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    np.testing.assert_allclose(load_image(str(tmp_path / "clear.png"), 8), 1.0)
    with pytest.raises(UserError, match="max_angle"):
        pipe64.text_diff(smooth_image(0), "a", "b", n=2, max_angle=2.0)


def test_text_conditioned_decoder_generates_from_z_t_without_prior(dirs, tmp_path):
    """A decoder trained with data.decoder_embedding='text' (the §5.1 baseline) is fed the
    caption's z_t by generate, which then needs no prior."""
    import shutil
    from unclip_jax import export
    src = dirs["decoder"]
    dst = str(tmp_path / "decoder_text")
    shutil.copytree(src, dst)
    cfg = export.load_config(dst)
    cfg.data.decoder_embedding = "text"
    with open(os.path.join(dst, "config.json"), "w") as f:
        f.write(cfg.to_json())
    p = UnCLIP.load(clip=dirs["clip"], decoder=dst, tokenizer=dirs["tokenizer"], progress=False)
    assert p.text_conditioned_decoder
    imgs, inter = p.generate(CAPTIONS[:2], 3, return_intermediates=True,
                             decoder_steps="2")
    text = p.encode_text(CAPTIONS[:2])
    np.testing.assert_array_equal(inter["z_i"], text["embeds"])
    redo = p.decode(text["embeds"], 3, x_T=inter["x_T"], text=text, decoder_steps="2")
    np.testing.assert_array_equal(to_uint8(redo["decoder"]), imgs)
    image_decoder = UnCLIP.load(clip=dirs["clip"], decoder=src, tokenizer=dirs["tokenizer"],
                                progress=False)
    assert not image_decoder.text_conditioned_decoder
    with pytest.raises(UserError, match="this needs a prior; pass prior=DIR"):
        image_decoder.generate(CAPTIONS[:1], 0, decoder_steps="2")


def test_from_directory_picks_the_prior(dirs, tmp_path):
    """A model directory may hold both priors; `prior=` chooses, 'auto' takes the diffusion
    prior, and asking for a prior that is not there says which ones are."""
    root = tmp_path / "both"
    root.mkdir()
    for n in ("clip", "tokenizer", "prior", "ar_prior", "decoder"):
        os.symlink(dirs[n], root / n)
    assert UnCLIP.from_directory(str(root), progress=False).prior_stage.name == "prior"
    assert UnCLIP.from_directory(str(root), prior="diffusion",
                                 progress=False).prior_stage.name == "prior"
    ar = UnCLIP.from_directory(str(root), prior="ar", progress=False)
    assert ar.prior_stage.name == "ar_prior" and "prior" not in ar.stages
    none = UnCLIP.from_directory(str(root), prior="none", progress=False)
    assert not {"prior", "ar_prior"} & set(none.stages)
    with pytest.raises(UserError, match="this needs a prior"):
        none.generate(CAPTIONS[:1], 0, decoder_steps="2")
    assert none.generate(CAPTIONS[:1], 0, decoder_steps="2", text_as_image_embed=True).shape \
        == (1, 8, 8, 3)
    with pytest.raises(CheckpointError, match=r"prior='ar' needs .*ar_prior.*has \['prior'\]"):
        UnCLIP.from_directory(dirs["root"], prior="ar", progress=False)
    with pytest.raises(UserError, match="prior='pca'; choose one of auto, diffusion, ar, none"):
        UnCLIP.from_directory(str(root), prior="pca", progress=False)

"""Upsampler fidelity scores (unclip_jax.eval.upsamplers) on the tiny random checkpoints."""
import jax
import numpy as np
import pytest

from pipeline_fixtures import checkpoints
from unclip_jax.eval.data import load_examples
from unclip_jax.eval.upsamplers import bicubic, psnr, upsampler_scores


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return checkpoints(tmp_path_factory)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    from unclip_jax.data import shapes
    d = str(tmp_path_factory.mktemp("shapes_small"))
    shapes.build(d, "small")
    return d


def test_psnr_analytic():
    a = np.full((2, 4, 4, 3), 100, np.uint8)
    b = a.copy()
    b[0] += 5                                   # every value off by 5 → MSE 25
    b[1, 0, 0, 0] += 8                          # one value of 48 off by 8 → MSE 64/48
    got = psnr(b, a)
    np.testing.assert_allclose(got, [20 * np.log10(255 / 5), 10 * np.log10(255 ** 2 * 48 / 64)])
    assert psnr(a, a)[0] == pytest.approx(10 * np.log10(255 ** 2 / 0.01))
    with pytest.raises(ValueError, match="equal shapes"):
        psnr(a, a[:, :2])


def test_bicubic_of_a_constant_image_is_constant():
    x = np.full((1, 4, 4, 3), 77, np.uint8)
    np.testing.assert_array_equal(bicubic(x, 12), np.full((1, 12, 12, 3), 77, np.uint8))


def test_upsampler_scores_match_an_independent_computation(ckpt, shapes_dir):
    from unclip_jax.pipeline import UnCLIP
    pipe = UnCLIP.from_directory(ckpt["root"], progress=False)
    res = upsampler_scores(pipe, shapes_dir, "validation", num_images=3, key=jax.random.key(0),
                           steps="2", chunk=2, num_resamples=20)
    assert list(res) == ["upsampler1", "upsampler2"]
    assert (res["upsampler1"]["input_size"], res["upsampler1"]["output_size"]) == (8, 16)
    assert (res["upsampler2"]["input_size"], res["upsampler2"]["output_size"]) == (16, 32)
    for stage, u in res.items():
        hi = load_examples(shapes_dir, "validation", image_size=u["output_size"], limit=3)["image"]
        lo = load_examples(shapes_dir, "validation", image_size=u["input_size"], limit=3)["image"]
        up = jax.image.resize(lo.astype(np.float32), (3, u["output_size"], u["output_size"], 3),
                              "bicubic")
        ref = np.clip(np.round(np.asarray(up)), 0, 255)
        mse = ((ref - hi.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
        assert u["psnr_bicubic"]["mean"] == pytest.approx(
            np.mean(10 * np.log10(255 ** 2 / mse)), abs=0.05)
        assert u["psnr"]["n"] == 3 and u["psnr"]["lo"] <= u["psnr"]["mean"] <= u["psnr"]["hi"]
        # a random network is far worse than interpolation
        assert u["psnr"]["mean"] < u["psnr_bicubic"]["mean"]

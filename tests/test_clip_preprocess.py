"""CLIP image preprocessing: value ranges, channels, resize/crop vs Hugging Face, errors."""
import jax
import numpy as np
import pytest
from PIL import Image

from unclip_jax.clip.preprocess import CLIP_MEAN, CLIP_STD, preprocess
from unclip_jax.errors import UserError

MEAN, STD = np.array(CLIP_MEAN), np.array(CLIP_STD)


def smooth_image(h, w, seed=0):
    """A smooth uint8 RGB image (low-frequency sinusoids), so resamplers agree closely."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [np.sin(2 * np.pi * (rng.uniform(0.5, 1.5) * x + rng.uniform(0.5, 1.5) * y)
                    + rng.uniform(0, 6)) for _ in range(3)]
    return np.round(127.5 + 100 * np.stack(chans, -1)).astype(np.uint8)


def test_uint8_and_float_at_model_size():
    img = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    expect = (img / 255.0 - MEAN) / STD
    np.testing.assert_allclose(preprocess(img, 16), expect, atol=1e-5)
    as_float = img.astype(np.float32) / 127.5 - 1.0           # project convention [-1, 1]
    np.testing.assert_allclose(preprocess(as_float, 16), expect, atol=1e-5)
    np.testing.assert_allclose(preprocess(img[0], 16), expect[:1], atol=1e-5)   # HWC → batch


@pytest.mark.parametrize("h,w", [(96, 128), (70, 40)])
def test_resize_crop_matches_hf_image_processor(h, w):
    try:   # the PIL backend (CLIP's reference resize); newer transformers name it explicitly
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor

    img = smooth_image(h, w)
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    ref = proc(images=[Image.fromarray(img)], return_tensors="np")["pixel_values"]
    ref = ref.transpose(0, 2, 3, 1)
    out = np.asarray(preprocess(img[None], 32))
    assert out.shape == (1, 32, 32, 3)
    # two bicubic implementations agree to well under one 8-bit level on a smooth image
    # (a crop one pixel off gives a mean of ≈0.9 levels on these images)
    levels = np.abs(out - ref) * STD.mean() * 255
    assert levels.mean() < 0.5 and levels.max() < 2.0


def test_grey_and_rgba_channels():
    rgba = np.random.default_rng(1).integers(0, 256, (1, 20, 20, 4), dtype=np.uint8)
    pil_rgb = np.asarray(Image.fromarray(rgba[0], "RGBA").convert("RGB"))[None]
    np.testing.assert_allclose(preprocess(rgba, 16), preprocess(pil_rgb, 16), atol=1e-6)
    grey = rgba[..., :1]
    np.testing.assert_allclose(preprocess(grey, 16), preprocess(np.repeat(grey, 3, -1), 16),
                               atol=1e-6)


def test_bad_channel_count_and_rank():
    with pytest.raises(UserError, match="images have 2 channels.*3 \\(RGB\\), 1 \\(grey\\) or 4"):
        preprocess(np.zeros((1, 8, 8, 2), np.uint8), 16)
    with pytest.raises(UserError, match="must be NHWC"):
        preprocess(np.zeros((8, 8), np.uint8), 16)
    with pytest.raises(UserError, match="pass uint8 in \\[0, 255\\] or float"):
        preprocess(np.zeros((1, 8, 8, 3), np.int32), 16)


def test_jittable_and_output_range():
    img = smooth_image(40, 24)
    out = jax.jit(preprocess, static_argnums=1)(img[None], 16)
    np.testing.assert_allclose(out, preprocess(img[None], 16), atol=1e-6)
    lo, hi = (0 - MEAN) / STD, (1 - MEAN) / STD
    assert np.all(out >= lo - 1e-6) and np.all(out <= hi + 1e-6)

"""The embedded shapes model (unclip_jax/assets/shapes): it loads, samples end to end, and its
CLIP has learned the dataset (matching captions rank above mismatching ones) — random weights
fail these checks."""
import json
import os

import numpy as np
import pytest

from unclip_jax import export
from unclip_jax.data import render
from unclip_jax.sample.loading import BUNDLED_MODEL, MODEL_DIRS, default_model
from unclip_jax.sample.unclip import UnCLIP

MAX_BYTES = 30 * 2**20


@pytest.fixture(scope="module")
def pipe():
    return UnCLIP.from_directory(BUNDLED_MODEL, progress=False)


@pytest.fixture(scope="module")
def manifest():
    with open(os.path.join(BUNDLED_MODEL, "MANIFEST.json")) as f:
        return json.load(f)


def _tree_bytes(root):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)


def test_sample_command_defaults_to_the_embedded_model():
    assert os.path.samefile(default_model(), BUNDLED_MODEL)


def test_the_default_prior_is_the_one_the_manifest_names(manifest):
    """The bundled model ships both priors; `prior='auto'` loads the MANIFEST's default (the
    AR prior, chosen on the dev prompt sets) and 'diffusion' still loads the other."""
    from unclip_jax.sample.loading import PRIOR_DIRS, stage_directories
    assert manifest["default_prior"] == "ar"
    auto = stage_directories(None)
    assert PRIOR_DIRS["ar"] in auto and "prior" not in auto
    assert "prior" in stage_directories(None, "diffusion")


def test_manifest_describes_every_shipped_stage(manifest):
    shipped = sorted(n for n in MODEL_DIRS if os.path.isdir(os.path.join(BUNDLED_MODEL, n)))
    assert {"clip", "tokenizer", "decoder"} <= set(shipped)
    assert "prior" in shipped or "ar_prior" in shipped
    assert len(manifest["commit"]) == 40
    for name in shipped:
        if name == "tokenizer":
            continue
        entry = manifest["stages"][name]
        assert entry["steps"] > 0 and np.isfinite(entry["final_loss"])
        _, cfg, extra = export.load(os.path.join(BUNDLED_MODEL, name), expect_stage=name,
                                    dtype=None)
        assert extra["step"] == entry["steps"]
    assert _tree_bytes(BUNDLED_MODEL) < MAX_BYTES


def test_weights_ship_as_float16_and_load_as_float32():
    raw, _, _ = export.load(os.path.join(BUNDLED_MODEL, "decoder"), dtype=None)
    loaded, _, _ = export.load(os.path.join(BUNDLED_MODEL, "decoder"))
    import jax
    assert {a.dtype for a in jax.tree.leaves(raw)} == {np.dtype("float16")}
    assert {a.dtype for a in jax.tree.leaves(loaded)} == {np.dtype("float32")}


def test_clip_ranks_matching_captions_first(pipe):
    """Validation scenes rendered as the dataset stores them (256 px): each image's own caption
    must score highest among the 8 captions far more often than chance (1/8)."""
    scenes = [render.sample_scene(0, "validation", i) for i in range(8)]
    images = np.stack([render.render(s, render_size()) for s in scenes])
    z_i = pipe.encode_images(images)
    z_t = pipe.encode_text([s["caption"] for s in scenes])["embeds"]
    z_i = z_i / np.linalg.norm(z_i, axis=-1, keepdims=True)
    z_t = z_t / np.linalg.norm(z_t, axis=-1, keepdims=True)
    sim = z_i @ z_t.T
    top1 = np.mean(np.argmax(sim, axis=1) == np.arange(8))
    assert top1 >= 0.5, sim
    # own caption above the average mismatching caption for (almost) every image
    off = (sim.sum(1) - np.diag(sim)) / 7
    assert np.mean(np.diag(sim) > off) >= 7 / 8, sim


def test_colour_word_changes_the_ranking(pipe):
    """A single-object caption beats the same caption with another colour."""
    scene = dict(background="white", objects=[dict(shape="circle", colour="red", size="large",
                                                   position="centre", jitter=(0.0, 0.0),
                                                   angle=0.0)])
    image = render.render(scene, render_size())[None]
    good = "a large red circle in the centre"
    bad = ["a large green circle in the centre", "a large blue circle in the centre",
           "a large yellow circle in the centre"]
    z_i = pipe.encode_images(image)[0]
    z_t = pipe.encode_text([good] + bad)["embeds"]
    scores = z_t @ z_i / np.linalg.norm(z_t, axis=-1)
    assert np.argmax(scores) == 0, scores


def test_prior_samples_land_near_their_images(pipe):
    """z_i sampled by the prior for a caption retrieves that caption's image among 8 far more
    often than chance (1/8)."""
    scenes = [render.sample_scene(0, "validation", i) for i in range(8, 16)]
    images = np.stack([render.render(s, render_size()) for s in scenes])
    z_i = pipe.encode_images(images)
    text = pipe.encode_text([s["caption"] for s in scenes])
    z_p = np.asarray(pipe.prior_sample(text, 0, steps="16"))
    z_i = z_i / np.linalg.norm(z_i, axis=-1, keepdims=True)
    z_p = z_p / np.linalg.norm(z_p, axis=-1, keepdims=True)
    sim = z_p @ z_i.T
    assert np.mean(np.argmax(sim, axis=1) == np.arange(8)) >= 0.5, sim
    assert np.mean(np.diag(sim)) > 0.5, np.diag(sim)


def test_ar_prior_samples_land_near_their_images():
    """The shipped AR prior (loaded with prior='ar') is as usable as the diffusion prior: its
    z_i for a caption is close to that caption's image embedding."""
    ar = UnCLIP.from_directory(BUNDLED_MODEL, prior="ar", progress=False)
    scenes = [render.sample_scene(0, "validation", i) for i in range(8, 16)]
    z_i = ar.encode_images(np.stack([render.render(s, render_size()) for s in scenes]))
    z_a = np.asarray(ar.prior_sample(ar.encode_text([s["caption"] for s in scenes]), 0))
    sim = (z_a / np.linalg.norm(z_a, axis=-1, keepdims=True)) @ \
        (z_i / np.linalg.norm(z_i, axis=-1, keepdims=True)).T
    assert np.mean(np.argmax(sim, axis=1) == np.arange(8)) >= 3 / 8, sim
    assert np.mean(np.diag(sim)) > 0.5, np.diag(sim)


@pytest.mark.parametrize("stage", ["upsampler1", pytest.param("upsampler2", marks=pytest.mark.slow)])  # 256 px: ~25 s
def test_upsamplers_restore_real_images(pipe, stage):
    """On real scenes downsampled to the stage's input size, the shipped upsampler lands far
    nearer the real high-resolution image than an untrained one could (measured on 32
    validation images: 32.9 dB and 31.2 dB; bicubic 33.5 and 39.3 dB)."""
    from unclip_jax.sample.images import image_to_float, to_uint8
    from unclip_jax.eval.upsamplers import psnr
    size = pipe.image_size(stage)
    low = pipe.image_size("decoder" if stage == "upsampler1" else "upsampler1")
    scenes = [render.sample_scene(0, "validation", i) for i in range(2)]
    full = [render.render(s, render_size()) for s in scenes]
    hi = to_uint8(np.stack([image_to_float(x, size) for x in full]))
    lo = np.stack([image_to_float(x, low) for x in full])
    out = to_uint8(pipe.upsample(stage, lo, 0))
    assert psnr(out, hi).mean() > 26.0, psnr(out, hi)


def test_samples_end_to_end(pipe):
    fast = {"upsampler_steps": "ddim2"} if "upsampler1" in pipe.stages else {}
    images = pipe.generate(["a small red circle on the left", "a large blue square"], 0,
                           prior_steps="8", decoder_steps="8", **fast)
    size = max(pipe.image_size(n) for n in ("decoder", "upsampler1", "upsampler2")
               if n in pipe.stages)
    assert images.shape == (2, size, size, 3) and images.dtype == np.uint8
    assert images.std() > 5          # not a blank canvas
    assert not np.array_equal(images[0], images[1])


def render_size():
    from unclip_jax.data.shapes import IMAGE_SIZE
    return IMAGE_SIZE

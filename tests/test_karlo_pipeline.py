"""A converted Karlo directory samples through `UnCLIP` and the CLI exactly like diffusers'
`UnCLIPPipeline` on the same tiny random components.

The reference is diffusers' own pipeline code: its prior, decoder and super-res latents are
our pipeline's x_T's, and every `UnCLIPScheduler.step` noise draw is replaced by the noise our
samplers draw at that step (their documented key contract: example b of a stage uses
fold_in(fold_in(seed, stage id), b); x_T from fold_in(·, N), step i from fold_in(·, i)). So
guidance on the empty caption "", the learned null image embedding, z_t in the decoder's time
embedding, the prior clamp, the bicubic 64→256 upscale and the super_res_first / last split
must all agree for the images to match.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

import references as R
import references_karlo as K
from test_karlo import converted_karlo
from unclip_jax import cli
from unclip_jax.sample.unclip import UnCLIP

STEPS, PROMPTS, SEED = K.PIPE_STEPS, K.PIPE_PROMPTS, K.PIPE_SEED
D, SR = K.D, K.SR


@pytest.fixture(scope="module")
def karlo(tmp_path_factory):
    return converted_karlo(tmp_path_factory.mktemp("karlo_pipe"))


@pytest.fixture(scope="module")
def pipe(karlo):
    return UnCLIP.from_directory(karlo["dst"], progress=False)


@pytest.mark.parametrize("source", R.SOURCES)
def test_generate_matches_diffusers_unclip_pipeline(source, request, tmp_path):
    if source == "golden":
        karlo, pipe = request.getfixturevalue("karlo"), request.getfixturevalue("pipe")
    else:
        karlo = converted_karlo(tmp_path, "live")
        pipe = UnCLIP.from_directory(karlo["dst"], progress=False)
    B = len(PROMPTS)
    images, inter = pipe.generate(PROMPTS, SEED, prior_steps=str(STEPS),
                                  decoder_steps=str(STEPS), upsampler_steps=str(STEPS),
                                  return_intermediates=True)
    assert images.shape == (B, SR, SR, 3) and images.dtype == np.uint8
    assert "upsampler2" not in inter      # super_res_last runs inside upsampler1's loop

    if source == "golden":
        x = ref = R.load_golden("karlo_pipeline")
        # the stored latents and step noise are our samplers' draws (the key contract)
        for k, v in K.pipeline_inputs().items():
            np.testing.assert_array_equal(v, x[k], err_msg=k)
    else:
        x = K.pipeline_inputs()
        ref = K.pipeline_outputs(karlo["models"], karlo["src"], x)
    np.testing.assert_array_equal(inter["x_T"], x["decoder_xT"])

    # prior: guided (scale 4 on the empty caption), clamped x0, de-normalised
    np.testing.assert_allclose(inter["z_i"], ref["z_i"], atol=2e-4, rtol=1e-4)
    # decoder: guided (scale 8, learned null z_i + text of ""), seen through the bicubic upscale
    ours_up = np.asarray(jax.image.resize(inter["decoder"], (B, SR, SR, 3), "bicubic"))
    np.testing.assert_allclose(ours_up, ref["upscaled"], atol=2e-4)
    # super-res: first for t > 0, last at t = 0; enough pixels lie inside (0, 1) for the
    # comparison to see more than the [0, 1] clipping
    assert ((ref["images"] > 0.01) & (ref["images"] < 0.99)).mean() > 0.2
    np.testing.assert_allclose(np.clip(inter["upsampler1"] * 0.5 + 0.5, 0, 1), ref["images"],
                               atol=2e-4)


def test_empty_caption_uncond_differs_from_drop_path(pipe):
    """The config-driven unconditional half is the encoded "" (2 real tokens), and sampling
    with it differs from the models' own drop path (so the option is not a no-op)."""
    u = pipe.uncond_text("decoder")
    assert u["mask"].shape == (1, pipe.tokenizer.context_length)
    assert int(u["mask"].sum()) == 2
    assert pipe.uncond_text("prior") is u
    text = pipe.encode_text(PROMPTS[:1])
    z_i = np.ones((1, D), np.float32)
    x_T = pipe.initial_noise(1, 0)
    a = pipe.decoder_sample(z_i, x_T, 0, text=text, steps="2")
    st = pipe.stages["decoder"]
    with st.config.unlocked():
        st.config.diffusion.uncond = "drop"
    try:
        b = pipe.decoder_sample(z_i, x_T, 0, text=text, steps="2")
    finally:
        with st.config.unlocked():
            st.config.diffusion.uncond = "empty_caption"
    assert np.abs(a - b).max() > 1e-3


def test_cli_samples_karlo_with_its_own_defaults(karlo, pipe, tmp_path, capsys):
    # the checkpoint's configs carry Karlo's sampling defaults: nothing to pass on the CLI
    assert pipe.schedule("prior", None)[0] == "25"
    assert pipe.schedule("decoder", None)[0] == "25"
    assert pipe.schedule("upsampler1", None)[0] == "7"
    assert pipe.guidance("prior", None) == 4.0 and pipe.guidance("decoder", None) == 8.0
    assert pipe.stages["prior"].config.model.clamp == 5.0
    assert pipe.stages["prior"].config.model.sample_candidates == 1
    assert pipe.stages["upsampler2"].config.diffusion.final_steps == 1
    out = str(tmp_path / "cat.png")
    assert cli.main(["sample", "--checkpoint", karlo["dst"], "a cat", "--no-progress",
                     "--prior-steps", str(STEPS), "--decoder-steps", str(STEPS),
                     "--upsampler-steps", str(STEPS), "--seed", str(SEED), "--out", out]) == 0
    assert os.path.isfile(out)
    with open(os.path.splitext(out)[0] + ".json") as f:
        rec = json.load(f)
    assert rec["image_shape"] == [1, SR, SR, 3]
    assert rec["settings"]["prior_best_of"] is None     # → the prior config's 1


def test_manipulations_without_vision_tower_name_the_fix(karlo, tmp_path, capsys):
    from PIL import Image
    img = str(tmp_path / "x.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    for argv in (["vary", img], ["interpolate", img, img],
                 ["textdiff", img, "--from", "a red square", "--to", "a blue circle"]):
        capsys.readouterr()
        rc = cli.main(argv + ["--checkpoint", karlo["dst"], "--no-progress",
                              "--out", str(tmp_path / "o.png")])
        err = capsys.readouterr().err.strip()
        assert rc != 0 and "Traceback" not in err, err
        assert len(err.splitlines()) == 1 and "no image encoder" in err
        assert "unclip-jax convert-clip" in err


def test_unknown_uncond_mode_names_the_choices(pipe):
    from unclip_jax.errors import CheckpointError
    st = pipe.stages["prior"]
    with st.config.unlocked():
        st.config.diffusion.uncond = "empty"
    try:
        with pytest.raises(CheckpointError, match="uncond='empty'.*'drop' or 'empty_caption'"):
            pipe.uncond_text("prior")
    finally:
        with st.config.unlocked():
            st.config.diffusion.uncond = "empty_caption"

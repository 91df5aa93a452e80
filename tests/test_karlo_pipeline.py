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
import torch

from test_karlo import SR, D, converted_karlo
from unclip_jax import cli
from unclip_jax.sample.programs import KEY_IDS
from unclip_jax.sample.unclip import UnCLIP

STEPS = 3
PROMPTS = ["a red square", "a blue circle"]
SEED = 7


@pytest.fixture(scope="module")
def karlo(tmp_path_factory):
    return converted_karlo(tmp_path_factory.mktemp("karlo_pipe"))


@pytest.fixture(scope="module")
def pipe(karlo):
    return UnCLIP.from_directory(karlo["dst"], progress=False)


def _noise(stage: str, B: int, shape: tuple, n_steps: int):
    """Our sampler's draws for `stage`: (x_T [B, *shape], [noise of step N−1, ..., step 1])."""
    k = jax.random.fold_in(jax.random.key(SEED), KEY_IDS[stage])
    keys = [jax.random.fold_in(k, b) for b in range(B)]

    def draw(i):
        return np.stack([np.asarray(jax.random.normal(jax.random.fold_in(kb, i), (1,) + shape,
                                                      np.float32))[0] for kb in keys])
    return draw(n_steps), [draw(i) for i in range(n_steps - 1, 0, -1)]


def _nchw(a):
    a = torch.from_numpy(np.ascontiguousarray(a))
    return a.permute(0, 3, 1, 2) if a.ndim == 4 else a


def _float64_coefficients(scheduler):
    """UnCLIPScheduler with its β / ᾱ tables in float64 (samples stay float32: its 0-d
    coefficients do not promote them). In float32 its 1 − ᾱ_t cancels at small t (1 − ᾱ_0 ≈
    4e-5 keeps ~3 digits), which scales the final step's x0 by ≈ 0.9995; our schedules
    compute these coefficients in float64, so the reference does too."""
    betas = scheduler.betas.double()
    scheduler.betas, scheduler.alphas = betas, 1.0 - betas
    scheduler.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


def _reference(karlo, prior_xT, decoder_xT, super_res_xT, step_noise, monkeypatch):
    """diffusers' UnCLIPPipeline with our latents and step noise → (images [B, SR, SR, 3] in
    [0, 1], image embeddings [B, D], the upscaled decoder image [B, SR, SR, 3])."""
    import diffusers.schedulers.scheduling_unclip as sched_mod
    from diffusers import UnCLIPScheduler
    from diffusers.pipelines.deprecated.unclip import UnCLIPPipeline
    from transformers import AutoTokenizer

    src, m = karlo["src"], karlo["models"]
    queue = [_nchw(n) for n in step_noise]

    def fake_randn(shape, **_):
        noise = queue.pop(0)
        assert tuple(noise.shape) == tuple(shape), (noise.shape, shape)
        return noise
    monkeypatch.setattr(sched_mod, "randn_tensor", fake_randn)

    seen = {}

    def keep_z_i(mod, args, kwargs, out):    # hooks must return None (not replace outputs)
        seen.setdefault("z_i", kwargs["image_embeddings"])

    def keep_upscaled(mod, args, kwargs):
        seen.setdefault("upscaled", (args[0] if args else kwargs["sample"])[:, 3:])
    m["text_proj"].register_forward_hook(keep_z_i, with_kwargs=True)
    m["super_res_first"].register_forward_pre_hook(keep_upscaled, with_kwargs=True)
    sched = {n: _float64_coefficients(UnCLIPScheduler.from_pretrained(os.path.join(src, n)))
             for n in ("prior_scheduler", "decoder_scheduler", "super_res_scheduler")}
    ref = UnCLIPPipeline(prior=m["prior"], decoder=m["decoder"], text_proj=m["text_proj"],
                         text_encoder=m["text_encoder"],
                         tokenizer=AutoTokenizer.from_pretrained(os.path.join(src, "tokenizer")),
                         super_res_first=m["super_res_first"],
                         super_res_last=m["super_res_last"], **sched)
    ref.set_progress_bar_config(disable=True)
    out = ref(PROMPTS, prior_num_inference_steps=STEPS, decoder_num_inference_steps=STEPS,
              super_res_num_inference_steps=STEPS, prior_latents=torch.from_numpy(prior_xT),
              decoder_latents=_nchw(decoder_xT), super_res_latents=_nchw(super_res_xT),
              output_type="np")
    assert not queue, "every step noise must be used"
    return (out.images, seen["z_i"].numpy(),
            seen["upscaled"].permute(0, 2, 3, 1).numpy())


def test_generate_matches_diffusers_unclip_pipeline(karlo, pipe, monkeypatch):
    B = len(PROMPTS)
    images, inter = pipe.generate(PROMPTS, SEED, prior_steps=str(STEPS),
                                  decoder_steps=str(STEPS), upsampler_steps=str(STEPS),
                                  return_intermediates=True)
    assert images.shape == (B, SR, SR, 3) and images.dtype == np.uint8
    assert "upsampler2" not in inter      # super_res_last runs inside upsampler1's loop

    prior_xT, prior_noise = _noise("prior", B, (D,), STEPS)
    dec_xT = inter["x_T"]
    _, dec_noise = _noise("decoder", B, dec_xT.shape[1:], STEPS)
    sr_xT, sr_noise = _noise("upsampler1", B, (SR, SR, 3), STEPS)
    ref_images, ref_z_i, ref_up = _reference(karlo, prior_xT, dec_xT, sr_xT,
                                             prior_noise + dec_noise + sr_noise, monkeypatch)

    # prior: guided (scale 4 on the empty caption), clamped x0, de-normalised
    np.testing.assert_allclose(inter["z_i"], ref_z_i, atol=2e-4, rtol=1e-4)
    # decoder: guided (scale 8, learned null z_i + text of ""), seen through the bicubic upscale
    ours_up = np.asarray(jax.image.resize(inter["decoder"], (B, SR, SR, 3), "bicubic"))
    np.testing.assert_allclose(ours_up, ref_up, atol=2e-4)
    # super-res: first for t > 0, last at t = 0; enough pixels lie inside (0, 1) for the
    # comparison to see more than the [0, 1] clipping
    assert ((ref_images > 0.01) & (ref_images < 0.99)).mean() > 0.2
    np.testing.assert_allclose(np.clip(inter["upsampler1"] * 0.5 + 0.5, 0, 1), ref_images,
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

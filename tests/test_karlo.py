"""Karlo import: tiny random diffusers/transformers components of Karlo's types, in the
diffusers unCLIP layout, are converted with `unclip-jax convert-karlo`, and every converted
model must reproduce the PyTorch reference on the same inputs; one UnCLIPScheduler step of each
stage must equal ours; bad directories must fail with messages that name the problem.

The references are the stored ones (tests/golden/, no torch) and, under `-m parity`, the same
components built and run with torch here (tests/references.py)."""
from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import references as R
import references_karlo as K
from unclip_jax.configs import karlo as karlo_cfg
from unclip_jax import cli, export
from unclip_jax.diffusion import gaussian as G
from unclip_jax.diffusion.schedules import space_timesteps
from unclip_jax.errors import UserError
from unclip_jax.diffusion.final_steps import final_steps_model_fn
from unclip_jax.karlo import convert_karlo, karlo_schedule
from unclip_jax.karlo.diffusers_config import from_diffusers, prior_from_diffusers
from unclip_jax.karlo.sampling import karlo_timesteps

D, TW, L, DEC, SR = K.D, K.TW, K.L, K.DEC, K.SR
ATOL = 1e-4


def converted_karlo(root, source: str = "golden") -> dict:
    """Tiny Karlo components under ROOT/src (the stored copy, or built with torch for
    'live'), converted with `unclip-jax convert-karlo` to ROOT/dst.
    → {'src', 'dst', 'ref' (inputs and the originals' outputs), 'models' (torch; live only)}."""
    src, dst = str(root / "src"), str(root / "dst")
    if source == "golden":
        R.copy_golden("karlo", src)
        models, ref = None, R.load_golden("karlo")
    else:
        models = K.build_karlo(src)
        x = K.karlo_inputs(src)
        ref = {**x, **K.karlo_outputs(models, x)}
    assert cli.main(["convert-karlo", src, dst]) == 0
    return dict(src=src, dst=dst, models=models, ref=ref, root=root)


@pytest.fixture(scope="module", params=R.SOURCES)
def karlo(request, tmp_path_factory):
    return converted_karlo(tmp_path_factory.mktemp("karlo"), request.param)


def _load(dst, stage):
    params, cfg, extra = export.load(os.path.join(dst, stage), expect_stage=stage)
    return params, cfg, extra


# ----------------------------------------------------------------------------- model parity

def test_prior_matches_diffusers(karlo):
    from unclip_jax.models import prior as prior_lib
    from unclip_jax.export import extras_from_json

    params, cfg, extra = _load(karlo["dst"], "prior")
    r = karlo["ref"]
    x_t, z_t = r["prior/x_t"], r["prior/z_t"]
    model = prior_lib.from_config(cfg.model)
    ours = jax.jit(model.apply)(params, x_t, r["prior/t"], z_t, r["prior/states"], r["prior/mask"])
    np.testing.assert_allclose(np.asarray(ours), r["prior/out"], atol=ATOL, rtol=0)
    stats = extras_from_json(extra)["stats"]
    np.testing.assert_array_equal(stats["mean"], r["prior/clip_mean"])
    np.testing.assert_array_equal(stats["std"], r["prior/clip_std"])
    # de-normalisation is diffusers' post_process_latents
    np.testing.assert_allclose(prior_lib.denormalize_embed(x_t, cfg.model, stats),
                               r["prior/post_process"], atol=1e-6)


@pytest.mark.parametrize("source", R.SOURCES)
def test_prior_time_embed_dim_not_a_multiple_of_width(tmp_path, source):
    """A PriorTransformer whose time_embed_dim (30) is no whole multiple of its width (22)
    converts and matches diffusers (the timestep MLP keeps its exact hidden width)."""
    from unclip_jax.karlo.convert import convert_prior
    from unclip_jax.models import prior as prior_lib

    if source == "golden":
        R.copy_golden("karlo_prior_te30", str(tmp_path / "src"))
        r = R.load_golden("karlo_prior_te30")
    else:
        x = K.prior_te30_inputs()
        r = {**x, **K.prior_te30_outputs(K.build_prior_te30(str(tmp_path / "src")), x)}
    with open(tmp_path / "src" / "prior" / "config.json") as f:
        cfg = prior_from_diffusers(json.load(f), None)
    assert (cfg.model.width, cfg.model.time_embed_dim) == (22, 30)
    params, _ = convert_prior(str(tmp_path / "src"), cfg)
    ours = prior_lib.from_config(cfg.model).apply(
        {"params": params}, r["x_t"], r["t"], r["z_t"], r["states"], r["mask"])
    np.testing.assert_allclose(np.asarray(ours), r["out"], atol=ATOL, rtol=0)


def test_decoder_with_text_proj_matches_diffusers(karlo):
    from unclip_jax.models.unet import UNet

    params, cfg, _ = _load(karlo["dst"], "decoder")
    model = UNet.from_config(cfg.model)
    r = karlo["ref"]
    B = len(r["decoder/x"])
    # the reference is diffusers' guidance batch [uncond; cond]: in the first half
    # text_proj's learned embedding replaces z_i (our drop_image_embed), the second half is
    # the plain conditional path (image embeddings, prompt embeds and token states end to end)
    two = lambda a: np.concatenate([a, a])  # noqa: E731
    drop = np.array([True] * B + [False] * B)
    fn = jax.jit(lambda p, *a: model.apply(p, *a[:2], z_i=a[2], text_states=a[3],
                                           text_mask=a[4], z_t=a[5], drop_image_embed=a[6]))
    ours = np.asarray(fn(params, *(two(r["decoder/" + k]) for k in
                                   ("x", "t", "z_i", "states", "mask", "z_t")), drop))
    assert ours.shape == (2 * B, DEC, DEC, 6)
    np.testing.assert_allclose(ours[B:], r["decoder/out"][B:], atol=ATOL, rtol=0)
    np.testing.assert_allclose(ours[:B], r["decoder/out"][:B], atol=ATOL, rtol=0)


@pytest.mark.parametrize("stage,component", [("upsampler1", "super_res_first"),
                                             ("upsampler2", "super_res_last")])
def test_super_res_matches_diffusers(karlo, stage, component):
    from unclip_jax.models.unet import UNet

    params, cfg, extra = _load(karlo["dst"], stage)
    assert extra["component"] == component
    model = UNet.from_config(cfg.model)
    r = karlo["ref"]
    # the pipeline upsamples the decoder image before the model; ours takes it at full size
    ours = jax.jit(lambda p, x, t, up: model.apply(p, x, t, low_res=up))(
        params, r["super_res/x"], r["super_res/t"], r["super_res/up"])
    np.testing.assert_allclose(np.asarray(ours), r[f"{component}/out"], atol=ATOL, rtol=0)


def test_clip_text_encoder_matches_transformers(karlo):
    from unclip_jax.clip.model import clip_encode_text
    from unclip_jax.clip.tokenizer import Tokenizer

    params, cfg, extra = _load(karlo["dst"], "clip")
    assert extra["text_only"] is True
    r = karlo["ref"]
    tok = Tokenizer(os.path.join(karlo["dst"], "tokenizer"), L)
    ids, mask = tok(K.KARLO_CAPTIONS)      # the converted tokenizer gives the stored tokens
    np.testing.assert_array_equal(ids, r["clip/ids"])
    np.testing.assert_array_equal(mask, r["clip/mask"])
    out = clip_encode_text(params, cfg, ids)
    np.testing.assert_allclose(np.asarray(out["embeds"]), r["clip/embeds"], atol=ATOL)
    # padded positions differ (transformers masks them, ours relies on the causal mask); the
    # prior and decoder mask them out, so only real tokens must agree
    np.testing.assert_allclose(np.asarray(out["states"])[mask], r["clip/states"][mask],
                               atol=ATOL)


# ----------------------------------------------------------------------------- schedulers

def test_timesteps_match_unclip_scheduler(karlo):
    for n in K.TIMESTEP_COUNTS:
        assert karlo_timesteps(n) == karlo["ref"][f"timesteps/{n}"].tolist(), n
        # so a plain step count ("25") on the sampling CLI visits the same timesteps
        assert space_timesteps(1000, str(n)) == karlo_timesteps(n), n
    # the stage configs store "N": our spacing string must visit Karlo's timesteps for any N
    bad = [n for n in range(1, 1001) if space_timesteps(1000, str(n)) != karlo_timesteps(n)]
    assert not bad, bad[:10]
    cfg = karlo_cfg.get_config("karlo")
    assert cfg.prior_guidance == 4.0 and cfg.decoder_guidance == 8.0
    assert len(cfg.super_res_timesteps) == 7 and cfg.super_res_last_steps == 1


@pytest.mark.parametrize("stage", list(K.STEP_CASES))
def test_scheduler_step_matches(karlo, stage):
    """x_{t-1} of diffusers' UnCLIPScheduler.step equals our p_mean_variance + the same noise."""
    _, cfg, _ = _load(karlo["dst"], stage)
    d = cfg.diffusion
    if stage == "prior":
        assert d.predict == "x0" and d.clip_range == 5.0
    if stage == "decoder":
        assert d.variance == "learned_range"
    _, n, steps, _ = K.STEP_CASES[stage]
    sched = karlo_schedule(d, n)
    for i in steps:
        c = {k: karlo["ref"][f"step/{stage}/{i}/{k}"] for k in ("t", "x", "out", "noise", "prev")}
        idx = int(np.nonzero(np.asarray(sched.timesteps) == int(c["t"]))[0][0])
        p = G.p_mean_variance(sched, c["out"], c["x"], jnp.full((len(c["x"]),), idx),
                              predict=d.predict, variance=d.variance,
                              clip_denoised=d.clip_denoised, clip_range=d.clip_range)
        ours = p["mean"] + jnp.exp(0.5 * p["log_variance"]) * c["noise"]
        np.testing.assert_allclose(np.asarray(ours), c["prev"], atol=ATOL, rtol=1e-5)


def test_super_res_split():
    fn = final_steps_model_fn(lambda x, t: x + 1.0, lambda x, t: x - 1.0, last_timestep=0)
    z = jnp.zeros((2, 4, 4, 3))
    assert float(jax.jit(fn)(z, jnp.array([0, 0]))[0, 0, 0, 0]) == -1.0
    assert float(jax.jit(fn)(z, jnp.array([166, 166]))[0, 0, 0, 0]) == 1.0


# ----------------------------------------------------------------------------- configs

def test_configs_karlo_and_from_diffusers():
    dec = karlo_cfg.get_config("decoder").model
    assert (dec.model_channels, tuple(dec.channel_mult), dec.num_res_blocks) == (320, (1, 2, 3, 4), 3)
    assert tuple(dec.attention_resolutions) == (32, 16, 8) and dec.num_head_channels == 64
    assert dec.context_dim == 1536 and dec.embed_dim == 768
    pri = karlo_cfg.get_config("prior").model
    assert (pri.width, pri.layers, pri.heads, pri.text_len) == (2048, 20, 32, 77)
    cfgs = from_diffusers(os.path.join(R.GOLDEN, "karlo"))
    assert cfgs["decoder"].model.channel_mult == (1, 2)
    assert cfgs["decoder"].model.attention_resolutions == (DEC // 2,)
    assert cfgs["prior"].model.text_len == L and cfgs["prior"].model.time_embed_dim == 16


# ----------------------------------------------------------------------------- bad input

def _copy(tmp_path, name="src"):
    return R.copy_golden("karlo", str(tmp_path / name))


def _edit_json(path, **changes):
    with open(path) as f:
        d = json.load(f)
    d.update(changes)
    with open(path, "w") as f:
        json.dump(d, f)


def test_missing_component_is_named(tmp_path):
    src = _copy(tmp_path)
    shutil.rmtree(os.path.join(src, "text_proj"))
    with pytest.raises(UserError, match="missing the Karlo component.*text_proj"):
        convert_karlo(src, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")
    assert cli.main(["convert-karlo", src, str(tmp_path / "out")]) == 2


def test_architecture_mismatch_names_key_and_values(tmp_path):
    src = _copy(tmp_path)
    _edit_json(os.path.join(src, "decoder", "config.json"), resnet_time_scale_shift="default")
    with pytest.raises(UserError, match="resnet_time_scale_shift='default'.*'scale_shift'"):
        convert_karlo(src, str(tmp_path / "out"))
    src2 = _copy(tmp_path, "src2")
    _edit_json(os.path.join(src2, "text_proj", "config.json"), cross_attention_dim=24)
    with pytest.raises(UserError, match="cross_attention_dim=16.*cross_attention_dim=24"):
        convert_karlo(src2, str(tmp_path / "out"))


def test_weight_shape_mismatch_names_parameter_and_shapes(tmp_path):
    from safetensors.numpy import load_file, save_file

    src = _copy(tmp_path)
    path = os.path.join(src, "super_res_last", "diffusion_pytorch_model.safetensors")
    state = load_file(path)
    state["conv_in.weight"] = np.zeros((8, 5, 3, 3), np.float32)
    save_file(state, path)
    with pytest.raises(Exception, match=r"conv_in.*\(8, 5, 3, 3\).*\(3, 3, 6, 8\)"):
        convert_karlo(src, str(tmp_path / "out"))

"""Karlo import: tiny random diffusers/transformers components of Karlo's types are saved in the
diffusers unCLIP layout, converted with `unclip-jax convert-karlo`, and every converted model
must reproduce the PyTorch reference on the same inputs; one UnCLIPScheduler step of each stage
must equal ours; bad directories must fail with messages that name the problem."""
from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from unclip_jax.configs import karlo as karlo_cfg
from unclip_jax import cli, export
from unclip_jax.diffusion import gaussian as G
from unclip_jax.diffusion.schedules import space_timesteps
from unclip_jax.errors import UserError
from unclip_jax.diffusion.final_steps import final_steps_model_fn
from unclip_jax.karlo import convert_karlo, karlo_schedule
from unclip_jax.karlo.diffusers_config import from_diffusers, prior_from_diffusers
from unclip_jax.karlo.sampling import karlo_timesteps

D, TW, L = 8, 8, 6            # CLIP embedding, CLIP text width, text tokens
CTX = 16                      # decoder context width (cross_attention_dim)
DEC, SR = 8, 16               # decoder / super-res image sizes
ATOL = 1e-4


def _jitter(module, scale=0.05):
    """Perturb every parameter so zero/one initialisations cannot hide a mapping error."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module.eval()


def _build_karlo(root):
    from diffusers import PriorTransformer, UNet2DConditionModel, UNet2DModel, UnCLIPScheduler
    from diffusers.pipelines.deprecated.unclip import UnCLIPTextProjModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from unclip_jax.clip.tokenizer import build_tokenizer

    torch.manual_seed(0)
    models = {}
    models["prior"] = _jitter(PriorTransformer(
        num_attention_heads=2, attention_head_dim=8, num_layers=2, embedding_dim=D,
        num_embeddings=L, additional_embeddings=4), 0.3)
    with torch.no_grad():
        models["prior"].clip_std.copy_(0.5 + torch.rand(1, D))
    models["text_proj"] = _jitter(UnCLIPTextProjModel(
        clip_extra_context_tokens=4, clip_embeddings_dim=D, time_embed_dim=4 * 32,
        cross_attention_dim=CTX), 0.3)
    models["decoder"] = _jitter(UNet2DConditionModel(
        sample_size=DEC, in_channels=3, out_channels=6, block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", attention_head_dim=16,
        cross_attention_dim=CTX, class_embed_type="identity",
        resnet_time_scale_shift="scale_shift", norm_num_groups=8))
    for name in ("super_res_first", "super_res_last"):
        models[name] = _jitter(UNet2DModel(
            sample_size=SR, in_channels=6, out_channels=3, block_out_channels=(32, 64),
            layers_per_block=1, down_block_types=("ResnetDownsampleBlock2D",) * 2,
            up_block_types=("ResnetUpsampleBlock2D",) * 2, resnet_time_scale_shift="scale_shift",
            add_attention=False, norm_num_groups=8))
    tok_dir = build_tokenizer(["a red square", "a blue circle on green"] * 4, 48,
                              os.path.join(root, "tokenizer"), L)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tok_dir)
    models["text_encoder"] = _jitter(CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=TW, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=L, projection_dim=D,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=1)))
    for name, m in models.items():
        # text_proj as a torch .bin, the rest as safetensors: both readers are exercised
        m.save_pretrained(os.path.join(root, name), safe_serialization=name != "text_proj")
    UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                    clip_sample_range=5.0).save_pretrained(os.path.join(root, "prior_scheduler"))
    UnCLIPScheduler(variance_type="learned_range").save_pretrained(
        os.path.join(root, "decoder_scheduler"))
    UnCLIPScheduler(variance_type="fixed_small_log").save_pretrained(
        os.path.join(root, "super_res_scheduler"))
    return models


def converted_karlo(root) -> dict:
    """Tiny Karlo components under ROOT/src, converted with `unclip-jax convert-karlo` to
    ROOT/dst. → {'src', 'dst', 'models' (the torch components), 'root'}."""
    src, dst = str(root / "src"), str(root / "dst")
    models = _build_karlo(src)
    assert cli.main(["convert-karlo", src, dst]) == 0
    return dict(src=src, dst=dst, models=models, root=root)


@pytest.fixture(scope="module")
def karlo(tmp_path_factory):
    return converted_karlo(tmp_path_factory.mktemp("karlo"))


def _load(dst, stage):
    params, cfg, extra = export.load(os.path.join(dst, stage), expect_stage=stage)
    return params, cfg, extra


def _t(a):
    return torch.from_numpy(np.asarray(a))


# ----------------------------------------------------------------------------- model parity

def test_prior_matches_diffusers(karlo):
    from unclip_jax.models import prior as prior_lib
    from unclip_jax.export import extras_from_json

    params, cfg, extra = _load(karlo["dst"], "prior")
    rng = np.random.default_rng(1)
    B = 3
    x_t, z_t = rng.normal(size=(2, B, D)).astype(np.float32)
    states = rng.normal(size=(B, L, TW)).astype(np.float32)
    mask = np.ones((B, L), bool)
    mask[1, 3:] = False
    mask[2, 2:] = False
    t = np.array([0, 417, 999])
    with torch.no_grad():
        ref = karlo["models"]["prior"](_t(x_t), timestep=_t(t), proj_embedding=_t(z_t),
                                       encoder_hidden_states=_t(states),
                                       attention_mask=_t(mask)).predicted_image_embedding
    model = prior_lib.from_config(cfg.model)
    ours = jax.jit(model.apply)(params, x_t, t, z_t, states, mask)
    np.testing.assert_allclose(np.asarray(ours), ref.numpy(), atol=ATOL, rtol=0)
    stats = extras_from_json(extra)["stats"]
    m = karlo["models"]["prior"]
    np.testing.assert_array_equal(stats["mean"], m.clip_mean.detach().numpy()[0])
    np.testing.assert_array_equal(stats["std"], m.clip_std.detach().numpy()[0])
    # de-normalisation is diffusers' post_process_latents
    with torch.no_grad():
        want = m.post_process_latents(_t(x_t)).numpy()
    np.testing.assert_allclose(prior_lib.denormalize_embed(x_t, cfg.model, stats), want,
                               atol=1e-6)


def test_prior_time_embed_dim_not_a_multiple_of_width(tmp_path):
    """A PriorTransformer whose time_embed_dim (30) is no whole multiple of its width (22)
    converts and matches diffusers (the timestep MLP keeps its exact hidden width)."""
    from diffusers import PriorTransformer

    from unclip_jax.karlo.convert import convert_prior
    from unclip_jax.models import prior as prior_lib

    torch.manual_seed(1)
    ref_model = _jitter(PriorTransformer(
        num_attention_heads=2, attention_head_dim=11, num_layers=1, embedding_dim=D,
        num_embeddings=L, additional_embeddings=4, time_embed_dim=30), 0.3)
    ref_model.save_pretrained(str(tmp_path / "prior"))
    with open(tmp_path / "prior" / "config.json") as f:
        cfg = prior_from_diffusers(json.load(f), None)
    assert (cfg.model.width, cfg.model.time_embed_dim) == (22, 30)
    params, _ = convert_prior(str(tmp_path), cfg)
    rng = np.random.default_rng(4)
    x_t, z_t = rng.normal(size=(2, 2, D)).astype(np.float32)
    states = rng.normal(size=(2, L, D)).astype(np.float32)
    mask = np.ones((2, L), bool)
    t = np.array([3, 640])
    with torch.no_grad():
        ref = ref_model(_t(x_t), timestep=_t(t), proj_embedding=_t(z_t),
                        encoder_hidden_states=_t(states),
                        attention_mask=_t(mask)).predicted_image_embedding
    ours = prior_lib.from_config(cfg.model).apply({"params": params}, x_t, t, z_t, states, mask)
    np.testing.assert_allclose(np.asarray(ours), ref.numpy(), atol=ATOL, rtol=0)


def _decoder_reference(models, x, t, z_i, z_t, states, mask, cfg_guidance):
    import torch.nn.functional as F
    with torch.no_grad():
        enc, additive = models["text_proj"](
            image_embeddings=_t(z_i), prompt_embeds=_t(z_t),
            text_encoder_hidden_states=_t(states), do_classifier_free_guidance=cfg_guidance)
        dmask = F.pad(_t(mask), (4, 0), value=True)
        return models["decoder"](sample=_t(x).permute(0, 3, 1, 2), timestep=_t(t),
                                 encoder_hidden_states=enc, class_labels=additive,
                                 attention_mask=dmask).sample.permute(0, 2, 3, 1).numpy()


def test_decoder_with_text_proj_matches_diffusers(karlo):
    from unclip_jax.models.unet import UNet

    params, cfg, _ = _load(karlo["dst"], "decoder")
    model = UNet.from_config(cfg.model)
    rng = np.random.default_rng(2)
    B = 2
    x = rng.normal(size=(B, DEC, DEC, 3)).astype(np.float32)
    z_i, z_t = rng.normal(size=(2, B, D)).astype(np.float32)
    states = rng.normal(size=(B, L, TW)).astype(np.float32)
    mask = np.ones((B, L), bool)
    mask[1, 2:] = False
    t = np.array([5, 730])
    # diffusers' guidance batch [uncond; cond]: in the first half text_proj's learned
    # embedding replaces z_i (our drop_image_embed), the second half is the plain
    # conditional path (image embeddings, prompt embeds and token states end to end)
    two = lambda a: np.concatenate([a, a])  # noqa: E731
    ref = _decoder_reference(karlo["models"], two(x), two(t), z_i, two(z_t), two(states),
                             two(mask), True)
    drop = np.array([True] * B + [False] * B)
    fn = jax.jit(lambda p, *a: model.apply(p, *a[:2], z_i=a[2], text_states=a[3],
                                           text_mask=a[4], z_t=a[5], drop_image_embed=a[6]))
    ours = np.asarray(fn(params, two(x), two(t), two(z_i), two(states), two(mask), two(z_t),
                         drop))
    assert ours.shape == (2 * B, DEC, DEC, 6)
    np.testing.assert_allclose(ours[B:], ref[B:], atol=ATOL, rtol=0)
    np.testing.assert_allclose(ours[:B], ref[:B], atol=ATOL, rtol=0)


@pytest.mark.parametrize("stage,component", [("upsampler1", "super_res_first"),
                                             ("upsampler2", "super_res_last")])
def test_super_res_matches_diffusers(karlo, stage, component):
    from unclip_jax.models.unet import UNet

    params, cfg, extra = _load(karlo["dst"], stage)
    assert extra["component"] == component
    model = UNet.from_config(cfg.model)
    rng = np.random.default_rng(3)
    x, up = rng.normal(size=(2, 2, SR, SR, 3)).astype(np.float32)
    t = np.array([0, 833])
    with torch.no_grad():
        inp = torch.cat([_t(x), _t(up)], dim=-1).permute(0, 3, 1, 2)
        ref = karlo["models"][component](inp, _t(t)).sample.permute(0, 2, 3, 1).numpy()
    # the pipeline upsamples the decoder image before the model; ours takes it at full size
    ours = jax.jit(lambda p, x, t, up: model.apply(p, x, t, low_res=up))(params, x, t, up)
    np.testing.assert_allclose(np.asarray(ours), ref, atol=ATOL, rtol=0)


def test_clip_text_encoder_matches_transformers(karlo):
    from unclip_jax.clip.model import clip_encode_text
    from unclip_jax.clip.tokenizer import Tokenizer

    params, cfg, extra = _load(karlo["dst"], "clip")
    assert extra["text_only"] is True
    tok = Tokenizer(os.path.join(karlo["dst"], "tokenizer"), L)
    ids, mask = tok(["a red square", "blue circle"])
    out = clip_encode_text(params, cfg, ids)
    with torch.no_grad():
        ref = karlo["models"]["text_encoder"](input_ids=_t(ids).long(),
                                              attention_mask=_t(mask).long())
    np.testing.assert_allclose(np.asarray(out["embeds"]), ref.text_embeds.numpy(), atol=ATOL)
    # padded positions differ (transformers masks them, ours relies on the causal mask); the
    # prior and decoder mask them out, so only real tokens must agree
    np.testing.assert_allclose(np.asarray(out["states"])[mask],
                               ref.last_hidden_state.numpy()[mask], atol=ATOL)


# ----------------------------------------------------------------------------- schedulers

def test_timesteps_match_unclip_scheduler():
    from diffusers import UnCLIPScheduler

    for n in (2, 7, 25, 64, 250):
        s = UnCLIPScheduler()
        s.set_timesteps(n)
        assert karlo_timesteps(n) == sorted(s.timesteps.tolist()), n
        # so a plain step count ("25") on the sampling CLI visits the same timesteps
        assert space_timesteps(1000, str(n)) == karlo_timesteps(n), n
    # the stage configs store "N": our spacing string must visit Karlo's timesteps for any N
    bad = [n for n in range(1, 1001) if space_timesteps(1000, str(n)) != karlo_timesteps(n)]
    assert not bad, bad[:10]
    cfg = karlo_cfg.get_config("karlo")
    assert cfg.prior_guidance == 4.0 and cfg.decoder_guidance == 8.0
    assert len(cfg.super_res_timesteps) == 7 and cfg.super_res_last_steps == 1


def _scheduler_step(sched_kwargs, diffusion_cfg, out_torch_nchw, x_nchw, n, i, noise_seed):
    """x_{t-1} from diffusers' UnCLIPScheduler and from our p_mean_variance + the same noise."""
    from diffusers import UnCLIPScheduler

    s = UnCLIPScheduler(**sched_kwargs)
    s.set_timesteps(n)
    t, prev = int(s.timesteps[i]), int(s.timesteps[i + 1])
    g = torch.Generator().manual_seed(noise_seed)
    ref = s.step(out_torch_nchw, t, x_nchw, prev_timestep=prev, generator=g).prev_sample
    noise = torch.randn(x_nchw.shape, generator=torch.Generator().manual_seed(noise_seed))

    sched = karlo_schedule(diffusion_cfg, n)
    idx = int(np.nonzero(np.asarray(sched.timesteps) == t)[0][0])
    perm = (0, 2, 3, 1) if x_nchw.ndim == 4 else (0, 1)
    x = x_nchw.numpy().transpose(perm)
    out = out_torch_nchw.numpy().transpose(perm)
    p = G.p_mean_variance(sched, out, x, jnp.full((x.shape[0],), idx), predict=diffusion_cfg.predict,
                          variance=diffusion_cfg.variance,
                          clip_denoised=diffusion_cfg.clip_denoised,
                          clip_range=diffusion_cfg.clip_range)
    ours = p["mean"] + jnp.exp(0.5 * p["log_variance"]) * noise.numpy().transpose(perm)
    return np.asarray(ours), ref.numpy().transpose(perm)


def test_prior_scheduler_step_matches(karlo):
    _, cfg, _ = _load(karlo["dst"], "prior")
    assert cfg.diffusion.predict == "x0" and cfg.diffusion.clip_range == 5.0
    torch.manual_seed(4)
    x = torch.randn(3, D)
    out = 4.0 * torch.randn(3, D)          # some entries beyond the ±5 clamp
    for i in (0, 10, 22):
        ours, ref = _scheduler_step(dict(variance_type="fixed_small_log",
                                         prediction_type="sample", clip_sample_range=5.0),
                                    cfg.diffusion, out, x, 25, i, 7 + i)
        np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=1e-5)


def test_decoder_scheduler_step_matches(karlo):
    _, cfg, _ = _load(karlo["dst"], "decoder")
    assert cfg.diffusion.variance == "learned_range"
    torch.manual_seed(5)
    x = torch.randn(2, 3, DEC, DEC)
    out = torch.cat([torch.randn(2, 3, DEC, DEC), torch.tanh(torch.randn(2, 3, DEC, DEC))], 1)
    for i in (3, 12, 23):
        ours, ref = _scheduler_step(dict(variance_type="learned_range"), cfg.diffusion, out, x,
                                    25, i, 11 + i)
        np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=1e-5)


def test_super_res_scheduler_step_and_split(karlo):
    _, cfg, _ = _load(karlo["dst"], "upsampler1")
    torch.manual_seed(6)
    x, out = torch.randn(2, 2, 3, SR, SR)
    ours, ref = _scheduler_step(dict(variance_type="fixed_small_log"), cfg.diffusion, out, x,
                                7, 2, 3)
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=1e-5)

    fn = final_steps_model_fn(lambda x, t: x + 1.0, lambda x, t: x - 1.0, last_timestep=0)
    z = jnp.zeros((2, 4, 4, 3))
    assert float(jax.jit(fn)(z, jnp.array([0, 0]))[0, 0, 0, 0]) == -1.0
    assert float(jax.jit(fn)(z, jnp.array([166, 166]))[0, 0, 0, 0]) == 1.0


# ----------------------------------------------------------------------------- configs

def test_configs_karlo_and_from_diffusers(karlo):
    dec = karlo_cfg.get_config("decoder").model
    assert (dec.model_channels, tuple(dec.channel_mult), dec.num_res_blocks) == (320, (1, 2, 3, 4), 3)
    assert tuple(dec.attention_resolutions) == (32, 16, 8) and dec.num_head_channels == 64
    assert dec.context_dim == 1536 and dec.embed_dim == 768
    pri = karlo_cfg.get_config("prior").model
    assert (pri.width, pri.layers, pri.heads, pri.text_len) == (2048, 20, 32, 77)
    cfgs = from_diffusers(karlo["src"])
    assert cfgs["decoder"].model.channel_mult == (1, 2)
    assert cfgs["decoder"].model.attention_resolutions == (DEC // 2,)
    assert cfgs["prior"].model.text_len == L and cfgs["prior"].model.time_embed_dim == 16


# ----------------------------------------------------------------------------- bad input

def _copy(karlo, tmp_path):
    src = str(tmp_path / "src")
    shutil.copytree(karlo["src"], src)
    return src


def _edit_json(path, **changes):
    with open(path) as f:
        d = json.load(f)
    d.update(changes)
    with open(path, "w") as f:
        json.dump(d, f)


def test_missing_component_is_named(karlo, tmp_path):
    src = _copy(karlo, tmp_path)
    shutil.rmtree(os.path.join(src, "text_proj"))
    with pytest.raises(UserError, match="missing the Karlo component.*text_proj"):
        convert_karlo(src, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")
    assert cli.main(["convert-karlo", src, str(tmp_path / "out")]) == 2


def test_architecture_mismatch_names_key_and_values(karlo, tmp_path):
    src = _copy(karlo, tmp_path)
    _edit_json(os.path.join(src, "decoder", "config.json"), resnet_time_scale_shift="default")
    with pytest.raises(UserError, match="resnet_time_scale_shift='default'.*'scale_shift'"):
        convert_karlo(src, str(tmp_path / "out"))
    src2 = str(tmp_path / "src2")
    shutil.copytree(karlo["src"], src2)
    _edit_json(os.path.join(src2, "text_proj", "config.json"), cross_attention_dim=24)
    with pytest.raises(UserError, match="cross_attention_dim=16.*cross_attention_dim=24"):
        convert_karlo(src2, str(tmp_path / "out"))


def test_weight_shape_mismatch_names_parameter_and_shapes(karlo, tmp_path):
    from safetensors.numpy import load_file, save_file

    src = _copy(karlo, tmp_path)
    path = os.path.join(src, "super_res_last", "diffusion_pytorch_model.safetensors")
    state = load_file(path)
    state["conv_in.weight"] = np.zeros((32, 5, 3, 3), np.float32)
    save_file(state, path)
    with pytest.raises(Exception, match=r"conv_in.*\(32, 5, 3, 3\).*\(3, 3, 6, 32\)"):
        convert_karlo(src, str(tmp_path / "out"))

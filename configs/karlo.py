"""Karlo v1-alpha (kakaobrain's public unCLIP, diffusers unCLIP layout) as unclip-jax stages.

`--config configs/karlo.py:STAGE` with STAGE one of decoder, prior, upsampler1, upsampler2,
clip, or `sampling` (alias `karlo`): the sampling preset that reproduces diffusers'
`UnCLIPPipeline` (timestep spacing of `UnCLIPScheduler.set_timesteps`, prior clamp,
guidance 4.0 / 8.0, the super-res split).

The stage configs hold Karlo's published architecture (REFERENCE.md): CLIP ViT-L/14
(embedding 768, text width 768, 77 tokens); prior width 2048 / 20 layers / 32 heads; decoder
64 px, 320 channels, 3 res blocks, mult (1,2,3,4), attention at 32/16/8 with 64-channel heads,
scale-shift norm, learned σ, context width 1536 (CLIP token states projected, 4 extra tokens
from z_i); super-res 64→256, 320 channels, 3 res blocks, mult (1,2,3,4), no attention.

`from_diffusers(src)` builds the same configs from a diffusers directory's config.json files
instead (the architecture is read from the source; unsupported options raise UserError naming
the file, the key and both values). `unclip-jax convert-karlo` uses it.

Super-res split: Karlo runs `super_res_first` for every super-res step but the last and
`super_res_last` for the final step (t = 0). The converter writes them as `upsampler1` and
`upsampler2`; both are 64→256 models (`model.image_size` 256, `data.low_res_size` 64), and
`sampling.super_res_last_steps` = 1 says how many final steps use upsampler2.

What the pipeline (`unclip_jax.pipeline.UnCLIP`) reads from these stage configs, so a
converted checkpoint samples like diffusers' UnCLIPPipeline with no Karlo special case:
  diffusion.sample_steps / guidance_scale   25 / 25 / 7 steps ("N" = UnCLIPScheduler's
                                            spacing), guidance 4.0 (prior) and 8.0 (decoder)
  prior model.clamp, sample_candidates      x0 clipped to ±5; one candidate (no best-of)
  diffusion.uncond = 'empty_caption'        (prior, decoder) guidance's unconditional half
                                            is the CLIP encoding of "" (decoder: with the
                                            learned null image embedding), not a drop path
  diffusion.low_res_upscale = 'bicubic'     (super-res) 64 px → 256 px before the UNet
  diffusion.final_steps = 1                 (upsampler2) runs the last step of upsampler1's
                                            loop instead of being a further stage
"""
from __future__ import annotations

import json
import os

import ml_collections as mlc
import numpy as np

from configs import common, shapes

EMBED_DIM = 768          # CLIP ViT-L/14 joint embedding
TEXT_WIDTH = 768         # CLIP ViT-L/14 text transformer width
TEXT_LEN = 77
TIMESTEPS = 1000

PRIOR_STEPS, DECODER_STEPS, SUPER_RES_STEPS = 25, 25, 7
PRIOR_GUIDANCE, DECODER_GUIDANCE = 4.0, 8.0
PRIOR_CLAMP = 5.0        # diffusers' prior_scheduler clip_sample_range (Karlo's own code: 10)
SUPER_RES_LAST_STEPS = 1  # super_res_last runs the final super-res step
UNCOND = "empty_caption"  # guidance's unconditional branch: the CLIP encoding of ""


def karlo_timesteps(num_steps: int, train_steps: int = TIMESTEPS) -> list[int]:
    """Timesteps `UnCLIPScheduler.set_timesteps(num_steps)` visits, ascending.

    t_k = round(k · (T − 1) / (N − 1)), k = 0..N−1 (numpy round-half-to-even), so the first
    and last training steps are always included. N = 1 gives [0].
    """
    n, T = int(num_steps), int(train_steps)
    if n < 1 or n > T:
        raise ValueError(f"num_steps={num_steps} must be between 1 and the {T} training steps")
    if n == 1:
        return [0]
    ratio = (T - 1) / (n - 1)
    return sorted(int(t) for t in np.round(np.arange(n) * ratio))


# ----------------------------------------------------------------------------- stages

def clip_model(text_layers=12, text_heads=12):
    """CLIP ViT-L/14 `model` section. Karlo ships only the text tower (CLIPTextModelWithProjection)."""
    cfg = shapes.clip_model()
    cfg.embed_dim = EMBED_DIM
    cfg.text.update(dict(vocab_size=49408, context_length=TEXT_LEN, width=TEXT_WIDTH,
                         layers=text_layers, heads=text_heads, activation="quick_gelu",
                         eos_token_id=2, pad_token_id=1))
    cfg.vision.update(dict(image_size=224, patch_size=14, width=1024, layers=24, heads=16,
                           activation="quick_gelu"))
    return cfg


def clip():
    cfg = shapes.clip()
    with cfg.unlocked():
        cfg.model = clip_model()
        cfg.data.image_size = 224
    return cfg


def _diffusion(predict, variance, steps, guidance=1.0, clip_range=1.0, loss="mse"):
    d = common.diffusion(schedule="cosine", timesteps=TIMESTEPS, predict=predict,
                         variance=variance, loss=loss, sampler="ddpm", guidance_scale=guidance,
                         clip_denoised=True, clip_range=clip_range)
    # "N" (Improved-DDPM spacing) visits exactly UnCLIPScheduler.set_timesteps(N)'s
    # timesteps, `karlo_timesteps(N)` (tests/test_karlo.py checks every N ≤ 1000)
    d.sample_steps = str(steps)
    return d


def prior():
    cfg = shapes.prior()
    with cfg.unlocked():
        cfg.model.update(dict(width=2048, layers=20, heads=32, embed_dim=EMBED_DIM,
                              text_width=TEXT_WIDTH, text_len=TEXT_LEN, mlp_ratio=4.0,
                              normalize="meanstd", clamp=PRIOR_CLAMP, sample_candidates=1))
        cfg.model.normalize_z_t = False    # Karlo projects the raw CLIP text embedding
        cfg.model.time_mlp_ratio = 1.0     # TimestepEmbedding(width → width → width)
        cfg.model.norm_in = False
        cfg.diffusion = _diffusion("x0", "fixed_small", PRIOR_STEPS, PRIOR_GUIDANCE,
                                   PRIOR_CLAMP)
        cfg.diffusion.uncond = UNCOND     # guidance's uncond half: CLIP encoding of ""
        cfg.clip.model = clip_model()
        cfg.data.image_size = 224
    return cfg


def decoder():
    cfg = shapes.decoder()
    with cfg.unlocked():
        cfg.model = shapes.unet(64, 320, (1, 2, 3, 4), 3, (32, 16, 8), out_channels=6,
                                context_dim=1536)
        cfg.model.update(dict(num_head_channels=64, embed_dim=EMBED_DIM, text_width=TEXT_WIDTH,
                              text_len=TEXT_LEN, clip_tokens=4, dropout=0.1, norm_groups=32))
        cfg.model.text_embed_dim = EMBED_DIM          # z_t also added to the time embedding
        cfg.model.learned_null_image_embed = True     # text_proj's learned guidance embedding
        cfg.diffusion = _diffusion("eps", "learned_range", DECODER_STEPS, DECODER_GUIDANCE,
                                   loss="hybrid")
        cfg.diffusion.uncond = UNCOND     # uncond: learned null z_i + the text of ""
        cfg.clip.model = clip_model()
        cfg.data.image_size = 64
    return cfg


def _super_res(stage):
    cfg = shapes.upsampler1()
    with cfg.unlocked():
        cfg.stage = stage
        cfg.model = shapes.unet(256, 320, (1, 2, 3, 4), 3, (), out_channels=3, low_res=True,
                                conditional=False)
        cfg.model.dropout = 0.0
        cfg.diffusion = _diffusion("eps", "fixed_small", SUPER_RES_STEPS)
        cfg.diffusion.low_res_upscale = "bicubic"   # 64 px → 256 px before the UNet
        # > 0: run inside the previous upsampler's loop for its final steps (super_res_last)
        cfg.diffusion.final_steps = SUPER_RES_LAST_STEPS if stage == "upsampler2" else 0
        cfg.data.update(dict(image_size=256, low_res_size=64, crop_size=64,
                             degradation="blur"))
    return cfg


def upsampler1():
    """Karlo's super_res_first: every super-res step but the last."""
    return _super_res("upsampler1")


def upsampler2():
    """Karlo's super_res_last: the final super-res step (also 64→256, not 256→1024)."""
    return _super_res("upsampler2")


def sampling():
    """diffusers UnCLIPPipeline defaults as one preset (timesteps are original-schedule indices)."""
    cfg = mlc.ConfigDict(dict(
        prior_steps=PRIOR_STEPS, decoder_steps=DECODER_STEPS, super_res_steps=SUPER_RES_STEPS,
        prior_timesteps=karlo_timesteps(PRIOR_STEPS),
        decoder_timesteps=karlo_timesteps(DECODER_STEPS),
        super_res_timesteps=karlo_timesteps(SUPER_RES_STEPS),
        prior_guidance=PRIOR_GUIDANCE, decoder_guidance=DECODER_GUIDANCE,
        prior_clamp=PRIOR_CLAMP,          # clip predicted x0 of the prior to ±5 (normalised)
        prior_candidates=1,               # the pipeline keeps its one sample (no best-of)
        decoder_clip_range=1.0, super_res_clip_range=1.0,
        super_res_last_steps=SUPER_RES_LAST_STEPS,   # upsampler2 (super_res_last): final step
        low_res_upscale="bicubic",        # decoder output → 256 px before super-res
    ))
    cfg.lock()
    return cfg


BUILDERS = dict(decoder=decoder, prior=prior, upsampler1=upsampler1, upsampler2=upsampler2,
                clip=clip, sampling=sampling, karlo=sampling)


def get_config(arg=None):
    return common.pick(arg, BUILDERS)


# ----------------------------------------------------------------------------- from diffusers

COMPONENTS = ("prior", "text_proj", "decoder", "super_res_first", "super_res_last",
              "text_encoder", "tokenizer")
SCHEDULERS = ("prior_scheduler", "decoder_scheduler", "super_res_scheduler")


def _user_error(msg):
    from unclip_jax.errors import UserError
    return UserError(msg)


def read_json(src: str, component: str, name: str = "config.json", required: bool = True):
    path = os.path.join(src, component, name)
    if not os.path.isfile(path):
        if not required:
            return None
        raise _user_error(f"{src} has no {component}/{name}: the Karlo directory is missing "
                          f"its '{component}' component; download the whole repository "
                          f"(huggingface-cli download kakaobrain/karlo-v1-alpha --local-dir DIR)")
    with open(path) as f:
        return json.load(f)


def _require(component, cfg, key, expected, default=None):
    value = cfg.get(key, default)
    if isinstance(value, list):
        value = tuple(value)
    if value != expected:
        raise _user_error(f"{component}/config.json: {key}={value!r} but unclip-jax's Karlo "
                          f"import supports only {key}={expected!r}; this is not a Karlo-"
                          f"architecture checkpoint")
    return value


def _agree(a_name, a, b_name, b):
    if a != b:
        raise _user_error(f"architecture mismatch: {a_name}={a!r} but {b_name}={b!r}; the "
                          "components come from different models")


def _unet_common(component, d, *, down, up, mid):
    """Checks shared by the decoder and super-res UNets → (model_channels, mult, blocks)."""
    chans = tuple(int(c) for c in d["block_out_channels"])
    levels = len(chans)
    _require(component, d, "down_block_types", (down[0],) + (down[1],) * (levels - 1))
    _require(component, d, "up_block_types", (up[0],) * (levels - 1) + (up[1],))
    if mid is not None:
        _require(component, d, "mid_block_type", mid)
    _require(component, d, "resnet_time_scale_shift", "scale_shift", "default")
    _require(component, d, "flip_sin_to_cos", True, True)
    _require(component, d, "freq_shift", 0, 0)
    _require(component, d, "act_fn", "silu", "silu")
    _require(component, d, "norm_eps", 1e-5, 1e-5)
    _require(component, d, "center_input_sample", False, False)
    _require(component, d, "mid_block_scale_factor", 1, 1)
    mc = chans[0]
    if any(c % mc for c in chans):
        raise _user_error(f"{component}/config.json: block_out_channels={list(chans)} are not "
                          f"multiples of the first ({mc}); unclip-jax's UNet needs that")
    return mc, tuple(c // mc for c in chans), int(d["layers_per_block"])


def decoder_from_diffusers(d: dict, tp: dict, sched: dict | None) -> mlc.ConfigDict:
    """decoder/config.json + text_proj/config.json (+ decoder_scheduler) → decoder stage config."""
    c = "decoder"
    _require(c, d, "_class_name", "UNet2DConditionModel")
    _require(c, d, "class_embed_type", "identity")
    _require(c, d, "only_cross_attention", False, False)
    _require(c, d, "dual_cross_attention", False, False)
    _require(c, d, "encoder_hid_dim", None, None)
    _require(c, d, "addition_embed_type", None, None)
    mc, mult, blocks = _unet_common(
        c, d, down=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid="UNetMidBlock2DSimpleCrossAttn")
    size = int(d["sample_size"])
    head = d.get("attention_head_dim", 8)
    if isinstance(head, list):
        if len(set(head)) != 1:
            raise _user_error(f"decoder/config.json: attention_head_dim={head} differs per "
                              "level; unclip-jax's UNet uses one head width")
        head = head[0]
    _agree("decoder cross_attention_dim", d["cross_attention_dim"],
           "text_proj cross_attention_dim", tp["cross_attention_dim"])
    _agree("decoder time embedding width (4 × block_out_channels[0])", 4 * mc,
           "text_proj time_embed_dim", tp["time_embed_dim"])
    cfg = decoder()
    with cfg.unlocked():
        cfg.model.update(dict(
            image_size=size, in_channels=int(d["in_channels"]),
            out_channels=int(d["out_channels"]), model_channels=mc, channel_mult=mult,
            num_res_blocks=blocks, num_head_channels=int(head),
            attention_resolutions=tuple(size // 2 ** i for i in range(1, len(mult))),
            norm_groups=int(d.get("norm_num_groups", 32)),
            embed_dim=int(tp["clip_embeddings_dim"]),
            text_embed_dim=int(tp["clip_embeddings_dim"]),
            text_width=int(tp["clip_embeddings_dim"]),
            clip_tokens=int(tp.get("clip_extra_context_tokens", 4)),
            context_dim=int(tp["cross_attention_dim"]),
            dropout=float(d.get("dropout", cfg.model.dropout))))
        cfg.data.image_size = size
        _apply_scheduler(cfg, sched, "decoder_scheduler")
    return cfg


def super_res_from_diffusers(component: str, d: dict, stage: str,
                             sched: dict | None) -> mlc.ConfigDict:
    """super_res_first|last/config.json (+ super_res_scheduler) → upsampler stage config."""
    _require(component, d, "_class_name", "UNet2DModel")
    _require(component, d, "add_attention", False, True)
    _require(component, d, "time_embedding_type", "positional", "positional")
    mc, mult, blocks = _unet_common(
        component, d, down=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
        up=("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"), mid=None)
    if int(d["in_channels"]) != 2 * int(d["out_channels"]):
        raise _user_error(f"{component}/config.json: in_channels={d['in_channels']} but a "
                          f"Karlo super-res model takes 2 × out_channels="
                          f"{2 * int(d['out_channels'])} (noised image + upscaled low-res)")
    cfg = _super_res(stage)
    size = int(d["sample_size"])
    with cfg.unlocked():
        cfg.model.update(dict(
            image_size=size, in_channels=int(d["out_channels"]),
            low_res_channels=int(d["in_channels"]) - int(d["out_channels"]),
            out_channels=int(d["out_channels"]), model_channels=mc, channel_mult=mult,
            num_res_blocks=blocks, norm_groups=int(d.get("norm_num_groups", 32))))
        cfg.data.image_size = size
        _apply_scheduler(cfg, sched, "super_res_scheduler")
    return cfg


def prior_from_diffusers(p: dict, sched: dict | None) -> mlc.ConfigDict:
    """prior/config.json (+ prior_scheduler) → prior stage config."""
    c = "prior"
    _require(c, p, "_class_name", "PriorTransformer")
    _require(c, p, "added_emb_type", "prd", "prd")
    _require(c, p, "encoder_hid_proj_type", "linear", "linear")
    _require(c, p, "embedding_proj_norm_type", None, None)
    _require(c, p, "time_embed_act_fn", "silu", "silu")
    _require(c, p, "additional_embeddings", 4, 4)
    norm_in = p.get("norm_in_type", None)
    if norm_in not in (None, "layer"):
        raise _user_error(f"prior/config.json: norm_in_type={norm_in!r}; supported: None or "
                          "'layer'")
    heads, head_dim = int(p["num_attention_heads"]), int(p["attention_head_dim"])
    width = heads * head_dim
    emb = int(p["embedding_dim"])
    for key in ("embedding_proj_dim", "clip_embed_dim"):
        if p.get(key) not in (None, emb):
            raise _user_error(f"prior/config.json: {key}={p[key]!r} differs from "
                              f"embedding_dim={emb}; unclip-jax's prior uses one embedding size")
    cfg = prior()
    with cfg.unlocked():
        cfg.model.update(dict(width=width, layers=int(p["num_layers"]), heads=heads,
                              embed_dim=emb, text_width=emb, text_len=int(p["num_embeddings"]),
                              time_mlp_ratio=float(p.get("time_embed_dim") or width) / width,
                              norm_in=norm_in == "layer"))
        cfg.clip.model.embed_dim = emb
        _apply_scheduler(cfg, sched, "prior_scheduler")
        cfg.model.clamp = float(cfg.diffusion.clip_range)
    return cfg


PREDICT = {"epsilon": "eps", "sample": "x0"}
VARIANCE = {"fixed_small_log": "fixed_small", "fixed_small": "fixed_small",
            "learned_range": "learned_range"}


def _apply_scheduler(cfg, sched: dict | None, component: str) -> None:
    """Fold an UnCLIPScheduler config into cfg.diffusion (absent: Karlo's defaults stay)."""
    if sched is None:
        return
    _require(component, sched, "beta_schedule", "squaredcos_cap_v2", "squaredcos_cap_v2")
    d = cfg.diffusion
    pred = sched.get("prediction_type", "epsilon")
    var = sched.get("variance_type", "fixed_small_log")
    if pred not in PREDICT:
        raise _user_error(f"{component}/scheduler_config.json: prediction_type={pred!r}; "
                          f"supported: {sorted(PREDICT)}")
    if var not in VARIANCE:
        raise _user_error(f"{component}/scheduler_config.json: variance_type={var!r}; "
                          f"supported: {sorted(VARIANCE)}")
    d.timesteps = int(sched.get("num_train_timesteps", TIMESTEPS))
    d.predict = PREDICT[pred]
    d.variance = VARIANCE[var]
    d.clip_denoised = bool(sched.get("clip_sample", True))
    d.clip_range = float(sched.get("clip_sample_range", 1.0))


def from_diffusers(src: str) -> dict[str, mlc.ConfigDict]:
    """A Karlo directory (diffusers unCLIP layout) → {'prior', 'decoder', 'upsampler1',
    'upsampler2'} stage configs with the architecture read from its config.json files.

    The CLIP config comes from text_encoder/ through the CLIP importer (unclip_jax.karlo).
    Raises UserError naming a missing component or an unsupported / inconsistent setting.
    """
    if not os.path.isdir(src):
        raise _user_error(f"Karlo directory {src} does not exist")
    sched = {s: read_json(src, s, "scheduler_config.json", required=False) for s in SCHEDULERS}
    p = read_json(src, "prior")
    tp = read_json(src, "text_proj")
    out = dict(
        prior=prior_from_diffusers(p, sched["prior_scheduler"]),
        decoder=decoder_from_diffusers(read_json(src, "decoder"), tp,
                                       sched["decoder_scheduler"]),
        upsampler1=super_res_from_diffusers("super_res_first",
                                            read_json(src, "super_res_first"), "upsampler1",
                                            sched["super_res_scheduler"]),
        upsampler2=super_res_from_diffusers("super_res_last",
                                            read_json(src, "super_res_last"), "upsampler2",
                                            sched["super_res_scheduler"]),
    )
    _agree("prior embedding_dim", out["prior"].model.embed_dim,
           "text_proj clip_embeddings_dim", out["decoder"].model.embed_dim)
    return out

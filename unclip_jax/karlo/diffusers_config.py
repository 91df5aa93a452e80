"""A Karlo directory's config.json files (diffusers unCLIP layout) → unclip-jax stage configs.

`from_diffusers(src)` reads prior/, text_proj/, decoder/, super_res_first/, super_res_last/
and the optional *_scheduler/ configs and returns {'prior', 'decoder', 'upsampler1',
'upsampler2'} stage configs: Karlo's stages (`unclip_jax.karlo.stages`) with the
architecture read from the source. Unsupported options raise UserError naming the file, the
key and both values; `unclip-jax convert-karlo` uses it.
"""
from __future__ import annotations

import json
import os

import ml_collections as mlc

from unclip_jax.errors import UserError

COMPONENTS = ("prior", "text_proj", "decoder", "super_res_first", "super_res_last",
              "text_encoder", "tokenizer")
SCHEDULERS = ("prior_scheduler", "decoder_scheduler", "super_res_scheduler")
DOWNLOAD = "hf download kakaobrain/karlo-v1-alpha --local-dir DIR"


def preset_stage(stage: str) -> mlc.ConfigDict:
    """Karlo's stage config (architecture defaults the source's configs refine)."""
    from unclip_jax.karlo.stages import get_stage
    return get_stage(stage)


def read_json(src: str, component: str, name: str = "config.json", required: bool = True):
    path = os.path.join(src, component, name)
    if not os.path.isfile(path):
        if not required:
            return None
        raise UserError(f"{src} has no {component}/{name}: the Karlo directory is missing "
                          f"its '{component}' component; download the whole repository "
                          f"({DOWNLOAD})")
    with open(path) as f:
        return json.load(f)


def _require(component, cfg, key, expected, default=None):
    value = cfg.get(key, default)
    if isinstance(value, list):
        value = tuple(value)
    if value != expected:
        raise UserError(f"{component}/config.json: {key}={value!r} but unclip-jax's Karlo "
                          f"import supports only {key}={expected!r}; this is not a Karlo-"
                          f"architecture checkpoint")
    return value


def _agree(a_name, a, b_name, b):
    if a != b:
        raise UserError(f"architecture mismatch: {a_name}={a!r} but {b_name}={b!r}; the "
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
        raise UserError(f"{component}/config.json: block_out_channels={list(chans)} are not "
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
            raise UserError(f"decoder/config.json: attention_head_dim={head} differs per "
                              "level; unclip-jax's UNet uses one head width")
        head = head[0]
    _agree("decoder cross_attention_dim", d["cross_attention_dim"],
           "text_proj cross_attention_dim", tp["cross_attention_dim"])
    _agree("decoder time embedding width (4 × block_out_channels[0])", 4 * mc,
           "text_proj time_embed_dim", tp["time_embed_dim"])
    cfg = preset_stage("decoder")
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
        raise UserError(f"{component}/config.json: in_channels={d['in_channels']} but a "
                          f"Karlo super-res model takes 2 × out_channels="
                          f"{2 * int(d['out_channels'])} (noised image + upscaled low-res)")
    cfg = preset_stage(stage)
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
        raise UserError(f"prior/config.json: norm_in_type={norm_in!r}; supported: None or "
                          "'layer'")
    heads, head_dim = int(p["num_attention_heads"]), int(p["attention_head_dim"])
    width = heads * head_dim
    emb = int(p["embedding_dim"])
    for key in ("embedding_proj_dim", "clip_embed_dim"):
        if p.get(key) not in (None, emb):
            raise UserError(f"prior/config.json: {key}={p[key]!r} differs from "
                              f"embedding_dim={emb}; unclip-jax's prior uses one embedding size")
    cfg = preset_stage("prior")
    with cfg.unlocked():
        cfg.model.update(dict(width=width, layers=int(p["num_layers"]), heads=heads,
                              embed_dim=emb, text_width=emb, text_len=int(p["num_embeddings"]),
                              time_embed_dim=int(p.get("time_embed_dim") or width),
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
        raise UserError(f"{component}/scheduler_config.json: prediction_type={pred!r}; "
                          f"supported: {sorted(PREDICT)}")
    if var not in VARIANCE:
        raise UserError(f"{component}/scheduler_config.json: variance_type={var!r}; "
                          f"supported: {sorted(VARIANCE)}")
    d.timesteps = int(sched.get("num_train_timesteps", d.timesteps))
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
        raise UserError(f"Karlo directory {src} does not exist")
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

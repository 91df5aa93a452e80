"""`convert_karlo(src, dst)`: a Karlo directory (diffusers unCLIP layout) → unclip-jax checkpoints.

SRC holds prior/, text_proj/, decoder/, super_res_first/, super_res_last/ (diffusers models),
text_encoder/ (transformers CLIPTextModelWithProjection), tokenizer/ and optionally
prior_scheduler/, decoder_scheduler/, super_res_scheduler/ (UnCLIPScheduler configs). DST gets
the layout `unclip_jax.sample.unclip.UnCLIP.from_directory` reads:

  DST/clip        stage 'clip' (text tower only: Karlo ships no image encoder)
  DST/tokenizer   the CLIP tokenizer files
  DST/prior       stage 'prior', extra.json stats = {mean: clip_mean, std: clip_std}
  DST/decoder     stage 'decoder' with text_proj folded into its conditioning params
  DST/upsampler1  super_res_first (all super-res steps but the last)
  DST/upsampler2  super_res_last (the final super-res step; also 64→256)

The architecture comes from SRC's config.json files (`unclip_jax.karlo.diffusers_config`).
"""
from __future__ import annotations

import os
import warnings

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import flax.linen as nn

from unclip_jax.errors import CheckpointError, UserError
from unclip_jax.karlo import mapping
from unclip_jax.karlo.diffusers_config import COMPONENTS, DOWNLOAD, preset_stage, from_diffusers, read_json
from unclip_jax.karlo.weights import fill, read_component

EXPECTED_UNUSED = ("prior/clip_mean", "prior/clip_std")


def _check_components(src: str) -> None:
    if not os.path.isdir(src):
        raise UserError(f"Karlo directory {src} does not exist; download it first "
                        f"({DOWNLOAD})")
    missing = [c for c in COMPONENTS if not os.path.isdir(os.path.join(src, c))]
    if missing:
        raise UserError(f"{src} is missing the Karlo component(s) {', '.join(missing)}; a "
                        f"diffusers unCLIP directory has {', '.join(COMPONENTS)}")


# ----------------------------------------------------------------------------- CLIP text tower

def clip_text_config(hf: dict) -> mlc.ConfigDict:
    """text_encoder/config.json (CLIPTextModelWithProjection) → our CLIP `model` section."""
    from transformers import CLIPTextConfig

    if hf.get("model_type") not in ("clip_text_model", "clip"):
        raise UserError(f"text_encoder/config.json: model_type={hf.get('model_type')!r} but "
                        "Karlo's text encoder is a 'clip_text_model' "
                        "(CLIPTextModelWithProjection)")
    t = CLIPTextConfig.from_dict(hf)
    hidden, width = int(t.intermediate_size), int(t.hidden_size)
    cfg = preset_stage("clip").model
    cfg.embed_dim = int(t.projection_dim)
    cfg.text.update(dict(
        vocab_size=int(t.vocab_size), context_length=int(t.max_position_embeddings),
        width=width, layers=int(t.num_hidden_layers), heads=int(t.num_attention_heads),
        mlp_ratio=hidden / width if int(width * (hidden / width)) == hidden
        else (hidden + 0.5) / width,
        activation=str(t.hidden_act), eos_token_id=int(t.eos_token_id),
        pad_token_id=int(t.pad_token_id if t.pad_token_id is not None else 0)))
    cfg.layer_norm_eps = float(t.layer_norm_eps)
    return cfg


def convert_clip_text(src: str) -> tuple[mlc.ConfigDict, dict]:
    """SRC/text_encoder → (CLIP model config, params {text_model, text_projection, logit_scale})."""
    from unclip_jax.clip import convert as clip_convert

    cfg = clip_text_config(read_json(src, "text_encoder"))
    abstract = clip_convert.abstract_params(cfg)
    abstract = {k: v for k, v in abstract.items()
                if k in ("text_model", "text_projection", "logit_scale")}
    state = clip_convert.read_hf_weights(os.path.join(src, "text_encoder"))

    def name_fn(path, ndim):
        if path == ("logit_scale",):
            return None
        name, transform = clip_convert.hf_name(path, ndim)
        return "text_encoder", name, transform

    params, unused = fill(abstract, name_fn, {"text_encoder": state}, "text_encoder",
                          synthesized={("logit_scale",): np.float32(cfg.logit_scale_init)})
    _warn_unused([u for u in unused if not u.endswith(clip_convert.IGNORED_KEYS)])
    return cfg, params


# ----------------------------------------------------------------------------- diffusion stages

def _warn_unused(unused):
    unused = [u for u in unused if u not in EXPECTED_UNUSED]
    if unused:
        warnings.warn(f"{len(unused)} tensors were not used: {unused[:5]}", stacklevel=3)


def _abstract(init_fn, *args, **kw) -> dict:
    variables = jax.eval_shape(lambda: init_fn(jax.random.key(0), *args, **kw))
    return nn.meta.unbox(variables["params"])


def unet_abstract(model_cfg) -> dict:
    """Shapes of a UNet's params for a `model` section (nothing allocated)."""
    from unclip_jax.models.unet import UNet

    m = UNet.from_config(model_cfg)
    s = m.image_size
    x = jnp.zeros((1, s, s, m.in_channels))
    kw = {}
    if m.low_res_channels:
        kw["low_res"] = jnp.zeros((1, s, s, m.low_res_channels))
    if m.embed_dim:
        kw["z_i"] = jnp.zeros((1, m.embed_dim))
    if m.text_embed_dim:
        kw["z_t"] = jnp.zeros((1, m.text_embed_dim))
    if m.text_width:
        L = int(model_cfg.text_len)
        kw.update(text_states=jnp.zeros((1, L, m.text_width)), text_mask=jnp.ones((1, L), bool))
    return _abstract(m.init, x, jnp.zeros((1,), jnp.int32), **kw)


def prior_abstract(model_cfg) -> dict:
    from unclip_jax.models import prior as prior_lib

    m = prior_lib.from_config(model_cfg)
    return _abstract(m.init, *prior_lib.dummy_inputs(m))


def convert_prior(src: str, cfg) -> tuple[dict, dict]:
    """SRC/prior → (params, stats {'mean', 'std'} [D]). The learned null text/z_t (our
    guidance tokens) have no Karlo counterpart and start at zero."""
    state = read_component(src, "prior")
    m = cfg.model
    synth = {("cond", "null_text"): np.zeros((m.text_len, m.width), np.float32),
             ("cond", "null_z_t"): np.zeros((m.width,), np.float32)}
    params, unused = fill(prior_abstract(m), mapping.prior_name, {"prior": state}, "prior",
                          synthesized=synth)
    _warn_unused(unused)
    stats = {}
    for key, name in (("mean", "clip_mean"), ("std", "clip_std")):
        if name not in state:
            raise CheckpointError(f"prior has no tensor {name!r}: Karlo's prior carries the "
                                  "CLIP embedding statistics; is this a Karlo prior?")
        a = np.asarray(state[name], np.float32).reshape(-1)
        if a.shape != (m.embed_dim,):
            raise CheckpointError(f"prior: weight shape mismatch for {name}: "
                                  f"{tuple(state[name].shape)} but embed_dim is {m.embed_dim}")
        stats[key] = a
    return params, stats


def convert_decoder(src: str, cfg) -> dict:
    """SRC/decoder + SRC/text_proj → decoder params (text_proj folded in)."""
    states = {"decoder": read_component(src, "decoder"),
              "text_proj": read_component(src, "text_proj")}
    params, unused = fill(unet_abstract(cfg.model), mapping.decoder_name, states, "decoder")
    _warn_unused(unused)
    return params


def convert_super_res(src: str, component: str, cfg) -> dict:
    states = {component: read_component(src, component)}
    params, unused = fill(unet_abstract(cfg.model), mapping.super_res_name(component), states,
                          component)
    _warn_unused(unused)
    return params


# ----------------------------------------------------------------------------- all of it

def convert_karlo(src: str, dst: str, overwrite: bool = False) -> dict[str, str]:
    """Convert every Karlo component of `src` and write checkpoints under `dst`.

    Returns {'clip', 'tokenizer', 'prior', 'decoder', 'upsampler1', 'upsampler2'} → directory.
    Raises UserError / CheckpointError naming a missing component, an unsupported config value
    or a weight whose shape does not match its config.
    """
    from unclip_jax import export
    from unclip_jax.clip.convert import copy_tokenizer

    _check_components(src)
    for name in ("clip", "prior", "decoder", "upsampler1", "upsampler2"):
        export.check_destination(os.path.join(dst, name), overwrite)   # before any work
    src, dst = os.path.abspath(src), os.path.abspath(dst)
    stages = from_diffusers(src)
    clip_cfg, clip_params = convert_clip_text(src)
    if clip_cfg.embed_dim != stages["prior"].model.embed_dim:
        raise UserError(f"architecture mismatch: text_encoder projection_dim="
                        f"{clip_cfg.embed_dim} but prior embedding_dim="
                        f"{stages['prior'].model.embed_dim}")
    if clip_cfg.text.width != stages["decoder"].model.text_width:
        raise UserError(f"architecture mismatch: text_encoder hidden_size={clip_cfg.text.width}"
                        f" but text_proj clip_embeddings_dim={stages['decoder'].model.text_width}"
                        " (the decoder projects the CLIP token states)")

    # convert everything before writing anything
    prior_params, stats = convert_prior(src, stages["prior"])
    params = dict(prior=prior_params,
                  decoder=convert_decoder(src, stages["decoder"]),
                  upsampler1=convert_super_res(src, "super_res_first", stages["upsampler1"]),
                  upsampler2=convert_super_res(src, "super_res_last", stages["upsampler2"]))

    out = {}
    tok = copy_tokenizer(os.path.join(src, "tokenizer"), os.path.join(dst, "tokenizer"))
    if tok is None:
        raise UserError(f"{src}/tokenizer has no tokenizer files (vocab.json, merges.txt, ...)")
    out["tokenizer"] = tok
    clip_cfg.tokenizer = tok
    clip_stage = preset_stage("clip")
    with clip_stage.unlocked():
        clip_stage.model = clip_cfg
    source = dict(source=src, format="diffusers unCLIP (Karlo)")
    out["clip"] = export.save(os.path.join(dst, "clip"), {"params": clip_params}, clip_stage,
                              extra=dict(source, component="text_encoder", text_only=True),
                              overwrite=overwrite)
    components = dict(prior="prior", decoder="decoder+text_proj",
                      upsampler1="super_res_first", upsampler2="super_res_last")
    for name, p in params.items():
        cfg = stages[name]
        with cfg.unlocked():
            cfg.clip.model = clip_cfg
        extra = dict(source, component=components[name])
        if name == "prior":
            extra.update(export.extras_to_json({"stats": stats}))
        out[name] = export.save(os.path.join(dst, name), {"params": p}, cfg, extra=extra,
                                overwrite=overwrite)
    return out

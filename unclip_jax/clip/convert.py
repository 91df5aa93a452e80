"""Import a Hugging Face CLIP checkpoint (`CLIPModel.save_pretrained` directory) into Flax.

`load_hf_clip(src)` → (model ConfigDict, params) where params is the plain numpy tree that
`CLIP.from_config(cfg).apply({'params': params}, ...)` takes. Names map 1:1 (see
`unclip_jax.clip.model`): `a.b.layers.3.c.weight` → a/b/layers_3/c/{kernel|embedding|ln/scale};
Linear weights [out, in] are transposed to [in, out]; the patch conv weight OIHW → HWIO.
Every tensor is checked against the shapes of our abstract params (`jax.eval_shape`).

CLI: `unclip-jax convert-clip SRC DST` writes an inference checkpoint (`unclip_jax.export`,
stage 'clip') and copies SRC's tokenizer files to DST/tokenizer.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import flax.linen as nn
from flax import traverse_util

from unclip_jax.errors import CheckpointError

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
HF_WEIGHTS = (SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json")
IGNORED_KEYS = ("position_ids",)   # buffers some transformers versions save


def read_hf_config(src: str) -> dict:
    """config.json of a CLIP checkpoint as a dict; CheckpointError if it is not one."""
    if not os.path.isdir(src):
        raise CheckpointError(f"CLIP checkpoint directory {src} does not exist")
    path = os.path.join(src, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{src} is not a Hugging Face CLIP checkpoint: no config.json; "
                              "pass a directory written by CLIPModel.save_pretrained")
    with open(path) as f:
        cfg = json.load(f)
    if cfg.get("model_type") != "clip":
        raise CheckpointError(f"{src}/config.json has model_type {cfg.get('model_type')!r}, not "
                              "'clip'; pass a CLIPModel checkpoint (text + vision towers)")
    return cfg


def model_config_from_hf(hf: dict) -> mlc.ConfigDict:
    """HF CLIPConfig dict → our `model` section (`unclip_jax.config_schema.clip_model`)."""
    from transformers import CLIPConfig

    from unclip_jax import config_schema

    c = CLIPConfig.from_dict(hf)
    t, v = c.text_config, c.vision_config
    if abs(t.layer_norm_eps - v.layer_norm_eps) > 1e-12:
        raise CheckpointError(f"text layer_norm_eps {t.layer_norm_eps} differs from vision "
                              f"{v.layer_norm_eps}; this CLIP supports one value")
    if v.num_channels != 3:
        raise CheckpointError(f"vision num_channels is {v.num_channels}; only RGB CLIPs "
                              "(num_channels 3) are supported")

    def ratio(width, hidden):
        r = hidden / width
        return r if int(width * r) == hidden else (hidden + 0.5) / width

    return config_schema.clip_model(
        embed_dim=int(c.projection_dim),
        text=dict(vocab_size=int(t.vocab_size), context_length=int(t.max_position_embeddings),
                  width=int(t.hidden_size), layers=int(t.num_hidden_layers),
                  heads=int(t.num_attention_heads),
                  mlp_ratio=ratio(t.hidden_size, t.intermediate_size),
                  activation=str(t.hidden_act), eos_token_id=int(t.eos_token_id),
                  pad_token_id=int(t.pad_token_id if t.pad_token_id is not None else 0)),
        vision=dict(image_size=int(v.image_size), patch_size=int(v.patch_size),
                    width=int(v.hidden_size), layers=int(v.num_hidden_layers),
                    heads=int(v.num_attention_heads),
                    mlp_ratio=ratio(v.hidden_size, v.intermediate_size),
                    activation=str(v.hidden_act)),
        layer_norm_eps=float(t.layer_norm_eps), logit_scale_init=float(c.logit_scale_init_value))


def read_hf_weights(src: str, names: tuple[str, str, str] = HF_WEIGHTS,
                    hint: str = "") -> dict[str, np.ndarray]:
    """All tensors of folder `src` as float32 numpy, from the first of `names` = (one
    safetensors file, a sharded safetensors index, a torch .bin) that exists — transformers'
    names by default, diffusers' for a Karlo component (torch is imported only for a .bin).
    `hint` ends the error naming what is missing."""
    from safetensors.numpy import load_file

    single, index, binary = (os.path.join(src, n) for n in names)
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        with open(index) as f:
            files = [os.path.join(src, n) for n in sorted(set(json.load(f)["weight_map"].values()))]
    elif os.path.isfile(binary):
        import torch
        state = torch.load(binary, map_location="cpu", weights_only=True)
        return {k: v.detach().float().numpy() for k, v in state.items()}
    else:
        raise CheckpointError(f"{src} has no weights: expected {names[0]}, {names[1]} or "
                              f"{names[2]}{hint}")
    out = {}
    for path in files:
        if not os.path.isfile(path):
            raise CheckpointError(f"{src} is missing weight shard {os.path.basename(path)}")
        out.update(load_file(path))
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def abstract_params(model_cfg) -> dict:
    """ShapeDtypeStructs of our CLIP's params (nothing allocated)."""
    from unclip_jax.clip.model import CLIP

    model = CLIP.from_config(model_cfg)
    tokens = jax.ShapeDtypeStruct((1, model.context_length), jnp.int32)
    images = jax.ShapeDtypeStruct((1, model.image_size, model.image_size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), tokens, images)
    return nn.meta.unbox(variables["params"])


def hf_name(path: tuple[str, ...], ndim: int) -> tuple[str, str]:
    """Our param path → (HF tensor name, transform) with transform in
    {'none', 'linear' (transpose), 'conv' (OIHW→HWIO)}."""
    parts = [p.replace("layers_", "layers.") if p.startswith("layers_") else p for p in path]
    leaf = parts[-1]
    if parts[-2:] == ["ln", "scale"]:
        return ".".join(parts[:-2] + ["weight"]), "none"
    if parts[-2:] == ["ln", "bias"]:
        return ".".join(parts[:-2] + ["bias"]), "none"
    if leaf == "kernel":
        return ".".join(parts[:-1] + ["weight"]), "conv" if ndim == 4 else "linear"
    if leaf == "embedding":
        return ".".join(parts[:-1] + ["weight"]), "none"
    return ".".join(parts), "none"


def _from_hf(array: np.ndarray, transform: str) -> np.ndarray:
    if transform == "linear":
        return array.T
    if transform == "conv":
        return array.transpose(2, 3, 1, 0)
    return array


def convert_weights(state: dict[str, np.ndarray], model_cfg) -> dict:
    """HF state dict → our params tree (numpy float32). CheckpointError on a missing tensor or
    a shape mismatch (naming the parameter and both shapes)."""
    flat = traverse_util.flatten_dict(abstract_params(model_cfg))
    out, used = {}, set()
    for path, spec in flat.items():
        name, transform = hf_name(path, len(spec.shape))
        if name not in state:
            raise CheckpointError(f"CLIP checkpoint has no tensor {name!r} (needed for "
                                  f"{'/'.join(path)}); is config.json from the same model?")
        value = _from_hf(np.asarray(state[name], np.float32), transform)
        if value.shape != tuple(spec.shape):
            raise CheckpointError(
                f"CLIP parameter {name} has shape {tuple(state[name].shape)} (→ "
                f"{value.shape} for {'/'.join(path)}) but config.json implies "
                f"{tuple(spec.shape)}; the weights do not match config.json")
        out[path] = np.array(value, np.float32, order="C")  # (ascontiguousarray makes 0-d 1-d)
        used.add(name)
    unused = [k for k in state if k not in used and not k.endswith(IGNORED_KEYS)]
    if unused:
        warnings.warn(f"{len(unused)} tensors of the CLIP checkpoint were not used: "
                      f"{unused[:5]}", stacklevel=2)
    return traverse_util.unflatten_dict(out)


def load_hf_clip(src: str) -> tuple[mlc.ConfigDict, dict]:
    """A `CLIPModel.save_pretrained` directory → (our model ConfigDict, numpy params)."""
    cfg = model_config_from_hf(read_hf_config(src))
    return cfg, convert_weights(read_hf_weights(src), cfg)


def copy_tokenizer(src: str, dst: str) -> str | None:
    """Copy the HF tokenizer files of `src` into `dst`; returns `dst` or None if there are none."""
    names = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(src, n))]
    if not names:
        return None
    os.makedirs(dst, exist_ok=True)
    for n in names:
        shutil.copy2(os.path.join(src, n), os.path.join(dst, n))
    return dst


def convert(src: str, dst: str, overwrite: bool = False) -> str:
    """Import `src` and write an inference checkpoint (stage 'clip') to `dst` (an existing
    one is replaced only with `overwrite`)."""
    from unclip_jax import config_schema, export

    export.check_destination(dst, overwrite)
    model_cfg, params = load_hf_clip(src)
    dst = os.path.abspath(dst)
    tok_dir = copy_tokenizer(src, os.path.join(dst, "tokenizer"))
    if tok_dir:
        model_cfg.tokenizer = tok_dir
    config = config_schema.stage_config(
        "clip", model_cfg, data=config_schema.data(model_cfg.vision.image_size))
    return export.save(dst, params, config, extra=dict(source=os.path.abspath(src),
                                                       format="transformers CLIPModel"),
                       overwrite=overwrite)

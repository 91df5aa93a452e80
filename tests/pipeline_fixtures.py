"""Tiny randomly initialised unCLIP checkpoints for the pipeline tests.

`build_checkpoints(root)` writes ROOT/{clip,tokenizer,prior,ar_prior_only/ar_prior,decoder,
upsampler1,upsampler2} from shrunken configs/shapes.py configs (each model initialised with
jax.random.key and saved with export.save). Image sizes: decoder 8 px, upsamplers 16 and 32 px.
Parameters: the tree comes from `jax.eval_shape(model.init, jax.random.key(i), ...)` (the
real module structure, nothing compiled) and the values from a seeded generator — N(0, 1/fan_in)
kernels, scales near 1, small biases — because compiling a Flax init costs several times a
forward pass on this CPU. (ADM's zero-initialised output convolution would make the decoder
predict ε = 0; random values give a non-trivial ε that depends on the inputs.)
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax.configs import shapes
from unclip_jax import export

CAPTIONS = ["a red circle", "a blue square", "a green triangle on the left",
            "two small yellow stars", "a big purple circle", "an orange square on the right"]
CTX = 8          # token context
D = 16           # CLIP embedding size
W = 32           # CLIP text width
T = 100          # diffusion steps every stage was "trained" with


def random_init(model, seed: int, *args, **kwargs):
    """Parameters of `model` with the tree of `model.init(key, *args, **kwargs)`, filled with
    seeded random values (see the module docstring). Host numpy float32."""
    from flax.core import meta
    abstract = meta.unbox(jax.eval_shape(model.init, jax.random.key(seed), *args, **kwargs))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        shape = leaf.shape
        if name == "logit_scale":
            return np.full(shape, 2.6592, np.float32)
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[:-1]))
            return (rng.normal(size=shape) / np.sqrt(fan_in)).astype(np.float32)
        if name == "scale":
            return (1.0 + 0.05 * rng.normal(size=shape)).astype(np.float32)
        return (0.05 * rng.normal(size=shape)).astype(np.float32)
    return jax.tree_util.tree_map_with_path(fill, abstract)


def _unet_cfg(cfg, size, channels, mult, attn, *, conditional):
    m = cfg.model
    m.image_size = size
    m.model_channels = channels
    m.channel_mult = mult
    m.num_res_blocks = 1
    m.attention_resolutions = attn
    m.num_head_channels = 8
    m.norm_groups = 4
    m.dropout = 0.0
    if conditional:
        m.embed_dim, m.text_width, m.text_len, m.context_dim = D, W, CTX, 16
    cfg.diffusion.timesteps = T
    return cfg


def build_checkpoints(root: str) -> dict[str, str]:
    from unclip_jax.clip.model import CLIP
    from unclip_jax.clip.tokenizer import build_tokenizer, Tokenizer
    from unclip_jax.models import ar_codec
    from unclip_jax.models import ar_prior as ar_lib
    from unclip_jax.models import prior as prior_lib
    from unclip_jax.models.unet import UNet

    dirs = {}
    tok_dir = build_tokenizer(CAPTIONS * 4, 64, os.path.join(root, "tokenizer"), CTX)
    tok = Tokenizer(tok_dir, CTX)
    dirs["tokenizer"] = tok_dir

    cfg = shapes.get_config("clip").unlock()
    m = cfg.model
    m.embed_dim = D
    m.text.update(dict(vocab_size=tok.vocab_size, context_length=CTX, width=W, layers=1, heads=2))
    m.vision.update(dict(image_size=16, patch_size=8, width=32, layers=1, heads=2))
    clip = CLIP.from_config(cfg)
    params = random_init(clip, 1, jnp.zeros((1, CTX), jnp.int32),
                       jnp.zeros((1, 16, 16, 3)))
    dirs["clip"] = export.save(os.path.join(root, "clip"), params, cfg)
    clip_model_cfg = cfg.model

    cfg = shapes.get_config("prior").unlock()
    cfg.model.update(dict(width=32, layers=1, heads=2, embed_dim=D, text_width=W, text_len=CTX))
    cfg.diffusion.timesteps = T
    cfg.clip.model = clip_model_cfg
    model = prior_lib.from_config(cfg.model)
    params = random_init(model, 2, *prior_lib.dummy_inputs(model))
    dirs["prior"] = export.save(os.path.join(root, "prior"), params, cfg)

    cfg = shapes.get_config("ar_prior").unlock()
    cfg.model.update(dict(width=32, layers=1, heads=2, embed_dim=D, text_width=W, text_len=CTX,
                          pca_components=4, num_buckets=8, dot_buckets=4))
    model = ar_lib.from_config(cfg.model)
    params = random_init(model, 3, *ar_lib.dummy_inputs(model))
    rng = np.random.default_rng(0)
    z_i, z_t = rng.normal(size=(64, D)), rng.normal(size=(64, D))
    codec = ar_codec.fit_codec(z_i, z_t, 4, 8, 4)
    from unclip_jax.export import extras_to_json
    # saved as a training export is: the bare parameter tree, no {'params': ...} wrapper
    dirs["ar_prior"] = export.save(os.path.join(root, "ar_only", "ar_prior"), params["params"], cfg,
                                   extra=extras_to_json({"codec": codec}))

    for name, size, ch, mult, attn, cond in [("decoder", 8, 8, (1, 2), (4,), True),
                                             ("upsampler1", 16, 8, (1, 2), (), False),
                                             ("upsampler2", 32, 8, (1, 2), (), False)]:
        cfg = _unet_cfg(shapes.get_config(name).unlock(), size, ch, mult, attn,
                        conditional=cond)
        if name == "decoder":
            cfg.diffusion.clip_denoised = False
        model = UNet.from_config(cfg.model)
        x = jnp.zeros((1, size, size, 3))
        kw = dict(z_i=jnp.zeros((1, D)), text_states=jnp.zeros((1, CTX, W)),
                  text_mask=jnp.ones((1, CTX), bool)) if cond else \
            dict(low_res=jnp.zeros((1, size // 2, size // 2, 3)))
        params = random_init(model, 4, x, jnp.zeros((1,), jnp.int32), **kw)
        # a tame output layer: ε of order 0.1 keeps samples finite without clipping
        out = params["params"]["conv_out"]
        params["params"]["conv_out"] = jax.tree.map(lambda a: 0.1 * a, out)
        dirs[name] = export.save(os.path.join(root, name), params, cfg)
    return dirs


_BUILT: dict[str, dict] = {}


def checkpoints(tmp_path_factory) -> dict[str, str]:
    """Build the tiny checkpoints once per test process (shared by both pipeline test files)."""
    if "dirs" not in _BUILT:
        root = str(tmp_path_factory.mktemp("unclip_ckpt"))
        dirs = build_checkpoints(root)
        dirs["root"] = root
        _BUILT["dirs"] = dirs
    return _BUILT["dirs"]


def smooth_image(seed: int, size: int = 8) -> np.ndarray:
    """A smooth float image [size, size, 3] in [-0.8, 0.8] (sum of low-frequency waves)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    chans = [np.sin(2 * np.pi * (rng.uniform(0.3, 1) * xx + rng.uniform(0.3, 1) * yy)
                    + rng.uniform(0, 6)) for _ in range(3)]
    return (0.8 * np.stack(chans, -1)).astype(np.float32)


# Module-scoped fixtures for test files that sample from these checkpoints: import them by name
# (`from pipeline_fixtures import dirs, pipe`).
@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, str]:
    """The tiny checkpoints of `checkpoints`, written once per test module."""
    return checkpoints(tmp_path_factory)


@pytest.fixture(scope="module")
def pipe(dirs):
    """The whole tiny chain (`UnCLIP.from_directory` on `dirs["root"]`), without progress bars."""
    from unclip_jax.sample.unclip import UnCLIP
    return UnCLIP.from_directory(dirs["root"], progress=False)


def read_png(path: str) -> np.ndarray:
    """A PNG as uint8 [H, W, 3]."""
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.uint8)


def json_strings(node):
    """Every string (keys and values) in a JSON value, depth first."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield from json_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from json_strings(v)

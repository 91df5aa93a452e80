"""The PyTorch references of the parity tests, and their stored copies.

Each parity test compares our converted JAX model against the transformers / diffusers / torch
original on the same tiny seeded model and the same inputs. This module builds those originals,
the inputs, and the originals' outputs. Two sources feed the same test code:

- `golden` (the default suite, no torch): tests/golden/ holds each tiny original as its
  weights (safetensors) and configs, the inputs and the original's outputs (.npz), written by
  tests/golden/make_golden.py. The test converts the stored weights with our converters and
  compares our outputs with the stored ones, so it still proves parity; loading runs no code
  (safetensors, JSON, `np.load(allow_pickle=False)`).
- `live` (marker `parity`, extra `.[parity]`): the same originals are built with torch in the
  test and run there; `pytest -m parity` (CI runs it) also checks that the stored files are
  what the current reference libraries give.

torch, diffusers and transformers' PyTorch models are imported inside the functions that use
them only. The Karlo references (diffusers components and pipeline) are in references_karlo.py.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
SOURCES = ["golden", pytest.param("live", marks=pytest.mark.parity)]


def load_golden(name: str) -> dict[str, np.ndarray]:
    """tests/golden/NAME.npz as {key: array} (no pickled objects allowed)."""
    path = os.path.join(GOLDEN, name + ".npz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: run `python tests/golden/make_golden.py` "
                                "(needs pip install -e \".[parity]\")")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def copy_golden(name: str, dst: str) -> str:
    """A writable copy of the stored source directory tests/golden/NAME at DST."""
    shutil.copytree(os.path.join(GOLDEN, name), dst)
    return dst


def to_torch(a):
    import torch
    return torch.from_numpy(np.ascontiguousarray(a))


def jitter(module, scale=0.05):
    """Perturb every parameter so zero/one initialisations cannot hide a mapping error."""
    import torch
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module.eval()


# ----------------------------------------------------------------------------- HF CLIP

CLIP_VOCAB, CLIP_CTX, CLIP_IMG = 99, 16, 32
CLIP_CASES = [("quick_gelu", 2), ("gelu", 5)]     # stored; (gelu, 2) as a torch .bin: live only


def make_hf_clip(root: str, act="quick_gelu", eos=2, fmt="safetensors", seed=0):
    """A tiny transformers CLIPModel saved to ROOT/hf_{act}_{eos}_{fmt}. → (model, dir)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=CLIP_VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=CLIP_CTX, hidden_act=act, eos_token_id=eos,
                         bos_token_id=0, pad_token_id=1),
        vision_config=dict(image_size=CLIP_IMG, patch_size=8, hidden_size=24,
                           intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                           hidden_act=act),
        projection_dim=16, logit_scale_init_value=2.0)
    model = CLIPModel(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases so every tensor matters
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layrnorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    d = os.path.join(str(root), f"hf_{act}_{eos}_{fmt}")
    if fmt == "safetensors":
        model.save_pretrained(d)
    else:  # the legacy PyTorch layout: pytorch_model.bin + config.json
        os.makedirs(d)
        model.config.save_pretrained(d)
        torch.save(model.state_dict(), os.path.join(d, "pytorch_model.bin"))
    return model, d


def clip_inputs(eos, seed=0):
    """Token rows of different lengths ending in the end-of-text token, then padding; images."""
    rng = np.random.default_rng(seed)
    lengths = [3, 7, CLIP_CTX]
    tokens = np.ones((3, CLIP_CTX), np.int64)                       # pad = 1
    for b, n in enumerate(lengths):
        if eos == 2:   # legacy: the eos is the largest id in the row
            tokens[b, :n] = rng.integers(3, CLIP_VOCAB - 1, n)
            tokens[b, n - 1] = CLIP_VOCAB - 1
        else:          # first-match rule: larger ids elsewhere, padding with eos (OpenAI style)
            tokens[b, :n] = rng.integers(eos + 1, CLIP_VOCAB, n)
            tokens[b, n - 1:] = eos
    images = rng.normal(size=(2, CLIP_IMG, CLIP_IMG, 3)).astype(np.float32)
    return tokens, images


def clip_outputs(model, tokens, images) -> dict[str, np.ndarray]:
    import torch
    with torch.no_grad():
        t = model.text_model(input_ids=torch.from_numpy(tokens))
        v = model.vision_model(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2))
        return dict(text_embeds=model.text_projection(t.pooler_output).numpy(),
                    text_states=t.last_hidden_state.numpy(),
                    image_embeds=model.visual_projection(v.pooler_output).numpy(),
                    image_states=v.last_hidden_state.numpy())


# ----------------------------------------------------------------------------- diffusion math

def normal_kl_inputs() -> dict[str, np.ndarray]:
    import jax
    k = jax.random.split(jax.random.key(0), 4)
    return {n: np.asarray(jax.random.normal(kk, (50,)))
            for n, kk in zip(("m1", "m2", "lv1", "lv2"), k)}


def normal_kl_outputs(x) -> np.ndarray:
    """torch.distributions' KL(N(m1, e^lv1) ‖ N(m2, e^lv2)), elementwise."""
    import torch
    N = torch.distributions.Normal
    return torch.distributions.kl_divergence(
        N(to_torch(x["m1"]), to_torch(np.exp(0.5 * x["lv1"]))),
        N(to_torch(x["m2"]), to_torch(np.exp(0.5 * x["lv2"])))).numpy()


def ddpm_betas() -> dict[str, np.ndarray]:
    """diffusers DDPMScheduler's β for 1000 steps: cosine (squaredcos_cap_v2) and linear."""
    from diffusers import DDPMScheduler
    cos = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    lin = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                        beta_end=0.02)
    return {"cosine": cos.betas.numpy(), "linear": lin.betas.numpy()}

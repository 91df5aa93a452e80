"""Write the stored references of the parity tests (tests/golden/).

    pip install -e ".[parity]"          # torch (CPU), diffusers
    python tests/golden/make_golden.py [OUT]    # OUT: default tests/golden/

Builds each tiny seeded transformers / diffusers model of tests/references.py, saves its
weights (safetensors) and configs as the converters read them, and stores the inputs and the
reference outputs as .npz beside them. Deterministic: the same library versions give the same
files. Rerun it when a reference library changes what it computes, or when a test needs
another case; `pytest -m parity` checks live that the stored outputs still match.
"""
from __future__ import annotations

import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))          # tests/: references.py

import references as R  # noqa: E402
import references_karlo as K  # noqa: E402


def _save(out: str, name: str, arrays: dict) -> None:
    path = os.path.join(out, name + ".npz")
    np.savez_compressed(path, **{k: np.asarray(v) for k, v in arrays.items()})
    print(f"  {name}.npz  {os.path.getsize(path) / 1024:.0f} KiB")


def _fresh(out: str, name: str) -> str:
    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    return d


def main(out: str = HERE) -> None:
    """Write every stored reference under OUT (default: tests/golden/)."""
    import torch
    torch.set_num_threads(1)                        # the same sums in the same order
    os.makedirs(out, exist_ok=True)
    print("writing", out)

    src = _fresh(out, "karlo")
    models = K.build_karlo(src, bin_text_proj=False)
    x = K.karlo_inputs(src)
    _save(out, "karlo", {**x, **K.karlo_outputs(models, x)})
    px = K.pipeline_inputs()
    _save(out, "karlo_pipeline", {**px, **K.pipeline_outputs(models, src, px)})

    d = _fresh(out, "karlo_prior_te30")
    m = K.build_prior_te30(d)
    x = K.prior_te30_inputs()
    _save(out, "karlo_prior_te30", {**x, **K.prior_te30_outputs(m, x)})

    arrays = {}
    for act, eos in R.CLIP_CASES:
        d = _fresh(out, f"clip_{act}_{eos}")
        model, made = R.make_hf_clip(out, act, eos)
        os.rename(made, d)
        for seed in (0, 1):
            tokens, images = R.clip_inputs(eos, seed)
            arrays[f"{act}_{eos}/{seed}/tokens"] = tokens
            arrays[f"{act}_{eos}/{seed}/images"] = images
            for k, v in R.clip_outputs(model, tokens, images).items():
                arrays[f"{act}_{eos}/{seed}/{k}"] = v
    _save(out, "clip", arrays)

    kl = R.normal_kl_inputs()
    _save(out, "diffusion", {**{f"kl/{k}": v for k, v in kl.items()},
                        "kl/out": R.normal_kl_outputs(kl),
                        **{f"betas/{k}": v for k, v in R.ddpm_betas().items()}})
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs
                if not f.endswith(".py"))
    print(f"total {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main(*sys.argv[1:2])

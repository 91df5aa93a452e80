"""Where a model's stages live on disk and how one is loaded for sampling.

A model directory ROOT holds one `unclip_jax.export` directory per stage:

    ROOT/clip/         CLIP (stage 'clip')                        needed by every entry point
    ROOT/tokenizer/    Hugging Face tokenizer files                generate, text_diff
    ROOT/prior/        diffusion prior (stage 'prior')  — or —
    ROOT/ar_prior/     autoregressive prior (stage 'ar_prior')     generate
    ROOT/decoder/      64 px decoder (stage 'decoder')             every image
    ROOT/upsampler1/   first upsampler (optional)
    ROOT/upsampler2/   second upsampler (optional; needs upsampler1)

A missing tail (no upsamplers, or only the first) gives smaller images. With both priors
present, `prior='auto'` loads the one ROOT/MANIFEST.json names as `default_prior` ('diffusion'
or 'ar', written by `unclip-jax package --default-prior`), else prior/. Loading reads JSON and
array files only; it never executes code from the directory. ROOT may be a gs:// URL: each
stage is read from a local mirror of it (`paths.mirror`, downloaded once and kept up to date)
and is still named by its URL.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from unclip_jax import export, paths
from unclip_jax.errors import CheckpointError, UserError
from unclip_jax.stages import STAGES, UPSAMPLERS, build_model

MODEL_DIRS = STAGES[:1] + ("tokenizer",) + STAGES[1:]   # subdirectories of a model directory
PRIOR_CHOICES = ("auto", "diffusion", "ar", "none")   # from_directory(prior=...)
PRIOR_DIRS = {"diffusion": "prior", "ar": "ar_prior"}   # a named prior → its subdirectory
DEFAULT_PRIOR_KEY = "default_prior"                     # MANIFEST.json: the prior 'auto' loads
BUNDLED_MODEL = paths.BUNDLED_MODEL


@dataclasses.dataclass
class Stage:
    """One loaded stage: host params (placed replicated on the mesh by `UnCLIP`), its config
    and module, and where it came from (directory, `export.checkpoint_identity`)."""
    name: str
    directory: str
    identity: str
    params: Any
    config: Any
    extra: dict
    model: Any


def load_stage(name: str, directory: str) -> Stage:
    """Read the export at `directory` (local, or gs:// through its `paths.mirror`);
    CheckpointError when it is missing or holds another stage."""
    local = local_directory(directory, "checkpoint directory")
    try:
        params, config, extra = export.load(local, expect_stage=name)
    except CheckpointError as e:
        raise CheckpointError(str(e).replace(local, directory)) from None
    where = directory if paths.is_remote(directory) else os.path.abspath(directory)
    return Stage(name, where, export.checkpoint_identity(local),
                 params, config, export.extras_from_json(extra), build_model(name, config.model))


def local_directory(directory: str, what: str) -> str:
    """`directory` itself when local, else its local mirror (`paths.mirror`); CheckpointError
    naming `what` when a gs:// directory does not exist."""
    if not paths.is_remote(directory):
        return directory
    url = paths.resolve(directory, what)
    if not paths.isdir(url):
        raise CheckpointError(f"{what} {url} does not exist")
    return paths.mirror(url)


def default_model() -> str:
    """The bundled model's directory; UserError while none ships with the package."""
    if os.path.isdir(BUNDLED_MODEL):
        return BUNDLED_MODEL
    raise UserError("no --checkpoint given and no default model is installed; pass "
                    "--checkpoint DIR (a directory with clip/, tokenizer/, prior/, decoder/, ...)")


def default_prior(root: str) -> str | None:
    """The prior ROOT/MANIFEST.json names as `default_prior` ('diffusion' or 'ar'); None when
    there is no MANIFEST or it names none. CheckpointError for an unreadable MANIFEST or
    another value. Reads JSON only."""
    path = paths.join(root, export.MANIFEST)
    if not paths.isfile(path):
        return None
    try:
        data = json.loads(paths.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); re-package the model") from None
    value = data.get(DEFAULT_PRIOR_KEY) if isinstance(data, dict) else None
    if value is not None and value not in PRIOR_DIRS:
        raise CheckpointError(f"{path}: {DEFAULT_PRIOR_KEY}={value!r}; it must be one of "
                              f"{', '.join(PRIOR_DIRS)} (or absent)")
    return value


def stage_directories(root: str | None, prior: str = "auto") -> dict[str, str]:
    """{stage: ROOT/stage} of the subdirectories present (ROOT None: the bundled model),
    keeping one prior: 'diffusion' (prior/), 'ar' (ar_prior/), 'auto' (the MANIFEST's
    `default_prior` when it names one, else prior/ if present, else ar_prior/) or 'none'."""
    if prior not in PRIOR_CHOICES:
        raise UserError(f"prior={prior!r}; choose one of {', '.join(PRIOR_CHOICES)}")
    if root is None:
        root = BUNDLED_MODEL
    if paths.is_remote(root):
        root = paths.resolve(root, "checkpoint directory")
    if not paths.isdir(root):
        raise CheckpointError(f"checkpoint directory {root} does not exist; pass a directory "
                              "with clip/, prior/, decoder/, ... subdirectories")
    present = set(paths.listdir(root))
    found = {n: paths.join(root, n) for n in MODEL_DIRS
             if n in present and paths.isdir(paths.join(root, n))}
    if not found:
        raise CheckpointError(f"{root} has none of the stage subdirectories "
                              f"{', '.join(MODEL_DIRS)}; see `unclip-jax sample --help`")
    if prior == "auto":
        named = default_prior(root)
        if named is not None and PRIOR_DIRS[named] not in found:
            raise CheckpointError(
                f"{paths.join(root, export.MANIFEST)} names {named!r} as the default prior but "
                f"{paths.join(root, PRIOR_DIRS[named])} does not exist; pass prior="
                f"{'ar' if named == 'diffusion' else 'diffusion'} or re-package the model")
        keep = PRIOR_DIRS[named] if named else ("prior" if "prior" in found else "ar_prior")
    else:
        keep = {**PRIOR_DIRS, "none": None}[prior]
    if prior in ("diffusion", "ar") and keep not in found:
        raise CheckpointError(f"prior={prior!r} needs {paths.join(root, keep)}, which does "
                              f"not exist; this model has "
                              f"{[n for n in ('prior', 'ar_prior') if n in found] or 'no prior'}")
    for name in {"prior", "ar_prior"} - {keep}:
        found.pop(name, None)
    if "tokenizer" in found and "clip" not in found:
        raise CheckpointError(f"{root} has tokenizer/ but no clip/ (the CLIP that reads "
                              "captions); add one, e.g. `unclip-jax package --out "
                              f"{root} --base bundled` copies the missing stages")
    return found


def check_stages(stages: dict[str, Stage]) -> None:
    """UserError for a set of stages that cannot be chained."""
    if "prior" in stages and "ar_prior" in stages:
        raise UserError("give either prior= or ar_prior=, not both")
    if "upsampler2" in stages and "upsampler1" not in stages:
        raise UserError("upsampler2 needs upsampler1 (the 64→256 stage); pass both")
    if any(u in stages for u in UPSAMPLERS) and "decoder" not in stages:
        raise UserError("upsamplers need a decoder; pass decoder=DIR")

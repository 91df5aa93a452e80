"""JSON sidecars: the record next to every grid the sampling commands write, from which
`unclip-jax sample --from-sidecar` redoes the command bit for bit on one device (on several
simulated CPU devices XLA's CPU runtime differs by a few levels between runs).

A sidecar holds the command, its inputs, the seed, every setting, the stage checkpoint
directories with their identities (`unclip_jax.export.checkpoint_identity`) and the
package version. Grid and sidecar are written together or not at all.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from unclip_jax.errors import UserError
from unclip_jax.sample import images as images_lib
from unclip_jax.sample.checks import check_seed

SIDECAR_VERSION = 1

# command → {input field: "str" | "list"}: what each recorded command needs
_SIDECAR_INPUTS = {"sample": {"prompts": "list"}, "vary": {"images": "list"},
                   "interpolate": {"image_a": "str", "image_b": "str"},
                   "textdiff": {"image": "str", "caption_from": "str", "caption_to": "str"},
                   "inpaint": {"image": "str", "mask": "str", "prompt": "str"},
                   "img2img": {"image": "str", "prompt": "str"},
                   "mix": {"items": "list", "kinds": "list"}}
_SIDECAR_SETTINGS = {"decoder_steps", "decoder_guidance", "upsampler_steps",
                     "num_images_per_prompt", "prior_steps", "prior_guidance", "prior_best_of",
                     "eta", "text_as_image_embed", "n", "fixed_xT", "max_angle",
                     "negative_prompts", "strength", "feather", "jump_length", "resamplings",
                     "weights"}


def input_files(command: str, inputs: dict) -> list[str]:
    """The image (and mask) files among a command's inputs, in a fixed order."""
    if command == "vary":
        return list(inputs["images"])
    if command == "interpolate":
        return [inputs["image_a"], inputs["image_b"]]
    if command == "mix":
        return [i for i, k in zip(inputs["items"], inputs["kinds"]) if k == "image"]
    return [inputs[k] for k in ("image", "mask") if k in inputs]


def file_sha256(path: str) -> str:
    """Hex sha256 of a file's bytes (local or gs://)."""
    import hashlib

    from unclip_jax import paths
    h = hashlib.sha256()
    with paths.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def input_hashes(command: str, recorded: dict, resolved: dict) -> dict[str, str]:
    """{path as recorded: sha256 of the file it resolved to} for each input image file."""
    return {r: file_sha256(p) for r, p in zip(input_files(command, recorded),
                                              input_files(command, resolved))}


def check_input_hashes(record: dict, resolved: dict, path: str = "sidecar") -> None:
    """UserError when an input image differs from the one the sidecar recorded (sidecars
    written before hashes were recorded are not checked)."""
    want = record.get("input_sha256")
    if not want:
        return
    for name, file in zip(input_files(record["command"], record["inputs"]),
                          input_files(record["command"], resolved)):
        try:
            digest = file_sha256(file)
        except FileNotFoundError:
            return          # reading the inputs names the missing file
        if name in want and digest != want[name]:
            raise UserError(f"input image {name} differs from the one {path} recorded (sha256 "
                            f"{want[name][:12]}…, now {digest[:12]}…); restore it to regenerate")


def sidecar_path(png_path: str) -> str:
    """`out/grid.png` → `out/grid.json`."""
    root, _ = os.path.splitext(png_path)
    return root + ".json"


def check_output(path: str, overwrite: bool = False) -> str:
    """Check `--out` before any sampling: a .png/.jpg/.jpeg file name whose sidecar path
    differs from it, no parent that is a file, not a directory, and (unless `overwrite`)
    neither it nor its sidecar already there. Returns the absolute path."""
    from unclip_jax import atomic
    out = atomic.check_output_path(path, overwrite=overwrite)
    images_lib.image_format(path)
    side = sidecar_path(out)
    if os.path.abspath(side) == out:
        raise UserError(f"--out {path} is where its sidecar would go; name an image file")
    atomic.check_output_path(side, overwrite=overwrite, what="sidecar")
    return out


def sidecar_bytes(record: dict[str, Any]) -> bytes:
    """The sidecar JSON of `record` (with its format and package versions)."""
    from unclip_jax import __version__

    record = dict(record)
    record.setdefault("sidecar_version", SIDECAR_VERSION)
    record.setdefault("package_version", __version__)
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


def save_outputs(path: str, images: np.ndarray, ncols: int | None, record: dict[str, Any],
                 *, overwrite: bool = False) -> tuple[str, str]:
    """Write the grid and its sidecar: both are encoded and written to temporary files
    first, then renamed into place, so neither is changed unless both could be written."""
    from unclip_jax import atomic
    data = images_lib.encode_image(images_lib.make_grid(images, ncols),
                                   images_lib.image_format(path))
    side = sidecar_path(path)
    atomic.write_files({path: data, side: sidecar_bytes(record)}, overwrite=overwrite)
    return path, side


def read_sidecar(path: str) -> dict[str, Any]:
    """Read a sidecar written by `save_outputs`; UserError if missing or not one."""
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        raise UserError(f"sidecar {path} does not exist; pass the .json written next to a grid") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"sidecar {path} is not JSON; pass the .json written next to a grid") from None
    if not isinstance(record, dict) or "command" not in record or "seed" not in record:
        raise UserError(f"{path} is not an unclip-jax sidecar (no command/seed); pass the .json "
                        "written next to a grid")
    check_sidecar(record, path)
    return record


def check_sidecar(record: dict, path: str = "sidecar") -> None:
    """Validate a sidecar's fields (types, required keys); UserError naming the field."""
    def bad(field, want):
        return UserError(f"{path}: field {field!r} must be {want}; pass an unmodified sidecar "
                         "written next to a grid")
    command = record.get("command")
    if command not in _SIDECAR_INPUTS:
        raise bad("command", "one of " + ", ".join(_SIDECAR_INPUTS))
    try:
        check_seed(record["seed"])
    except UserError:
        raise bad("seed", "an integer in [-2**63, 2**63)") from None
    inputs = record.get("inputs")
    if not isinstance(inputs, dict):
        raise bad("inputs", "an object")
    for name, kind in _SIDECAR_INPUTS[command].items():
        v = inputs.get(name)
        ok = (isinstance(v, str) if kind == "str" else
              isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v))
        if not ok:
            raise bad(f"inputs.{name}", "a string" if kind == "str" else "a list of strings")
    settings = record.get("settings")
    if not isinstance(settings, dict):
        raise bad("settings", "an object")
    for k, v in settings.items():
        if k not in _SIDECAR_SETTINGS:
            raise bad(f"settings.{k}", "absent (unknown setting)")
        if not (v is None or isinstance(v, (str, int, float, bool)) or
                (isinstance(v, list) and all(isinstance(x, (str, int, float)) for x in v))):
            raise bad(f"settings.{k}", "a string, number, boolean or null")
    for field, kinds, want in (("checkpoint", (str, type(None)), "a directory or null"),
                               ("prior", (str,), "a string"),
                               ("cols", (int, type(None)), "an integer or null")):
        if field in record and (not isinstance(record[field], kinds) or
                                isinstance(record[field], bool)):
            raise bad(field, want)
    hashes = record.get("input_sha256", {})
    if not isinstance(hashes, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in hashes.items()):
        raise bad("input_sha256", "an object of {path: sha256}")
    ckpts = record.get("checkpoints", {})
    if not isinstance(ckpts, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("identity"), str) and
            isinstance(v.get("dir"), str) for v in ckpts.values()):
        raise bad("checkpoints", "an object of {stage: {dir, identity}}")

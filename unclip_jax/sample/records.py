"""What the sampling commands record, and redoing a record.

A command (`sample`, `vary`, `interpolate`, `textdiff`, `inpaint`, `img2img`, `mix`) is
data: its name, inputs, settings and seed. `execute` runs one on a loaded `UnCLIP`;
`command_record` / `result_record` are the sidecar it leaves next to its grid
(`unclip_jax.sample.sidecars` has the file format); `regenerate` redoes a sidecar bit for bit,
refusing when a checkpoint's identity changed. The CLI (`unclip_jax.cli`) and the web demo
(`unclip_jax.serve.session`) both run commands through here.
"""
from __future__ import annotations

import os

import numpy as np

from unclip_jax import paths
from unclip_jax.errors import CheckpointError, UserError
from unclip_jax.sample import sidecars
from unclip_jax.sample.checks import check_cols
from unclip_jax.sample.loading import BUNDLED_MODEL, default_model

# a setting left unset (None) → (stage, config keys) of the default the pipeline uses instead
CONFIG_DEFAULTS = {"decoder_steps": ("decoder", ("diffusion", "sample_steps")),
                   "decoder_guidance": ("decoder", ("diffusion", "guidance_scale")),
                   "prior_steps": ("prior", ("diffusion", "sample_steps")),
                   "prior_guidance": ("prior", ("diffusion", "guidance_scale")),
                   "prior_best_of": ("prior", ("model", "sample_candidates"))}


def load_model(checkpoint: str | None, progress: bool, prior: str = "auto",
               compile_cache: bool = True):
    """The `UnCLIP` of a model directory (None: the bundled model); `prior` as
    `sample --prior` takes it ('text' loads no prior)."""
    from unclip_jax.sample.unclip import UnCLIP
    root = checkpoint if checkpoint is not None else default_model()
    return UnCLIP.from_directory(root, prior="none" if prior == "text" else prior,
                                 progress=progress, compile_cache=compile_cache)


def execute(pipe, command: str, inputs: dict, settings: dict, seed: int) -> np.ndarray:
    """Run one recorded command on a loaded `UnCLIP` → uint8 images [N, H, W, 3]."""
    if command == "sample":
        return pipe.generate(inputs["prompts"], seed, **settings)
    if command == "vary":
        return pipe.variations(inputs["images"], seed, **settings)
    if command == "interpolate":
        return pipe.interpolate(inputs["image_a"], inputs["image_b"], key=seed, **settings)
    if command == "textdiff":
        return pipe.text_diff(inputs["image"], inputs["caption_from"], inputs["caption_to"],
                              key=seed, **settings)
    if command == "inpaint":
        return pipe.inpaint(inputs["image"], inputs["mask"], inputs["prompt"], seed, **settings)
    if command == "img2img":
        return pipe.img2img(inputs["image"], inputs["prompt"], seed, **settings)
    if command == "mix":
        settings = dict(settings)
        return pipe.mix(mix_items(inputs), settings.pop("weights", None), seed, **settings)
    raise UserError(f"unknown command {command!r} in the sidecar")


def mix_items(inputs: dict) -> list:
    """A mix sidecar's items with their recorded kinds: prompts that look like file names
    stay prompts (wrapped as `Prompt`)."""
    from unclip_jax.sample.mixing import Prompt
    return [Prompt(i) if k == "prompt" else i for i, k in zip(inputs["items"], inputs["kinds"])]


def command_record(command: str, seed: int, inputs: dict, settings: dict, prior: str,
                   checkpoint: str | None, cols) -> dict:
    """What a sidecar records about a command before it runs (`checkpoint` None: the
    bundled model; a directory as given: `write_result` records a relative one relative to
    the sidecar's folder)."""
    return dict(command=command, seed=seed, inputs=inputs, settings=settings, prior=prior,
                checkpoint=checkpoint, cols=cols)


def settings_used(pipe, settings: dict) -> dict:
    """`settings` with each unset (None) step count, guidance scale or best-of replaced by the
    loaded stage's config value that the command ran with; `upsampler_steps` unset becomes
    the list of each upsampler's own. A setting whose stage is not loaded stays None."""
    used = dict(settings)
    for key, (stage, path) in CONFIG_DEFAULTS.items():
        if key in used and used[key] is None and stage in pipe.stages:
            node = pipe.stages[stage].config
            for part in path:
                node = node.get(part) if node is not None else None
            used[key] = node
    if "upsampler_steps" in used and used["upsampler_steps"] is None:
        used["upsampler_steps"] = [
            st.config.diffusion.sample_steps for name, st in pipe.stages.items()
            if name.startswith("upsampler") and not st.config.diffusion.get("final_steps", 0)]
    return used


def result_record(pipe, images, output: str, record: dict, inputs: dict | None = None) -> dict:
    """The sidecar of a finished command: `record` plus the output's name, the images'
    shape, the settings with the defaults that were used (`settings_used`; `settings` keeps
    what was asked, which `--from-sidecar` replays), the identities of the loaded stages
    (checked by `--from-sidecar`) and the sha256 of each input image file (read from
    `inputs`, the record's inputs as resolved; default: the record's own)."""
    return dict(record, output=output, image_shape=list(images.shape),
                settings_used=settings_used(pipe, record["settings"]),
                checkpoints=pipe.directories(),
                input_sha256=sidecars.input_hashes(record["command"], record["inputs"],
                                                   inputs or record["inputs"]))


def grid_tiles(command: str, inputs: dict, images: np.ndarray) -> tuple[np.ndarray, int | None]:
    """The tiles of a command's grid and its default column count (None: the grid's own).
    `vary` shows each source image (cropped and resized to the output size) before its n
    variations, one row per source; the other commands show their images as they are."""
    if command != "vary":
        return images, None
    from unclip_jax.sample.images import load_images, to_uint8
    sources = to_uint8(load_images(inputs["images"], images.shape[1]))
    n = len(images) // len(sources)
    rows = [np.concatenate([sources[b:b + 1], images[b * n:(b + 1) * n]])
            for b in range(len(sources))]
    return np.concatenate(rows), n + 1


def write_result(pipe, images, out: str, cols, record: dict, overwrite: bool = False,
                 inputs: dict | None = None) -> tuple[str, str]:
    """Write the grid `out` (`grid_tiles`) and its sidecar (`result_record`) together →
    (grid, sidecar). inputs: the record's inputs as resolved (default: the record's own).
    The sidecar names its grid by file name and its relative input paths relative to its
    own folder (`inputs_for_sidecar`), as `regenerate` reads them."""
    inputs = inputs or record["inputs"]
    folder = os.path.dirname(os.path.abspath(out))
    ckpt = record.get("checkpoint")
    record = dict(record, inputs=inputs_for_sidecar(record["inputs"], inputs, folder),
                  checkpoint=ckpt and as_recorded(ckpt, ckpt, folder))
    record = result_record(pipe, images, os.path.basename(out), record, inputs)
    record["checkpoints"] = {
        stage: dict(info, dir=_stage_dir(info["dir"], ckpt, folder))
        for stage, info in record["checkpoints"].items()}
    tiles, default_cols = grid_tiles(record["command"], inputs, images)
    return sidecars.save_outputs(out, tiles, cols or default_cols, record, overwrite=overwrite)


def _local_relative(path) -> bool:
    return isinstance(path, str) and not os.path.isabs(path) and not paths.is_remote(path)


def as_recorded(given: str, opened: str, folder: str) -> str:
    """How a sidecar in `folder` names a file or directory the user gave as `given` (opened
    as `opened`, from the current directory): given relative, the path from `folder` to
    it; given absolute (or gs://), as given."""
    return os.path.relpath(os.path.abspath(opened), folder) if _local_relative(given) else given


def _stage_dir(directory: str, checkpoint: str | None, folder: str) -> str:
    """A loaded stage's directory as a sidecar records it: `bundled:shapes/STAGE` for the
    bundled model's, relative to `folder` when the checkpoint was given relative, else
    as loaded (absolute)."""
    bundled = os.path.abspath(BUNDLED_MODEL)
    if os.path.commonpath([os.path.abspath(directory), bundled]) == bundled:
        return "bundled:" + os.path.relpath(directory, os.path.dirname(bundled))
    return as_recorded(checkpoint, directory, folder) if _local_relative(checkpoint) else directory


def _map_input_files(inputs: dict, fn, resolved: dict | None = None) -> dict:
    """`inputs` with each image / mask path p replaced by fn(p, q), q its entry in `resolved`
    (a copy of `inputs` with other paths; default: `inputs` itself). Prompts stay."""
    resolved = inputs if resolved is None else resolved
    out = dict(inputs)
    for key in ("image", "image_a", "image_b", "mask"):
        if key in out:
            out[key] = fn(out[key], resolved[key])
    if "images" in out:
        out["images"] = [fn(p, q) for p, q in zip(out["images"], resolved["images"])]
    if "items" in out:
        out["items"] = [fn(i, j) if k == "image" else i
                        for i, j, k in zip(out["items"], resolved["items"], out.get("kinds", ()))]
    return out


def inputs_for_sidecar(recorded: dict, resolved: dict, folder: str) -> dict:
    """The inputs a sidecar in `folder` records: each image / mask path the user gave as a
    relative path becomes the path of the file it resolved to (`resolved`: the same inputs as
    opened, relative to the current directory or absolute) relative to `folder`; absolute
    paths and gs:// URIs stay as given. No absolute path is recorded that was not given."""
    return _map_input_files(recorded, lambda p, q: as_recorded(p, q, folder), resolved)


def inputs_beside(inputs: dict, folder: str) -> dict:
    """A sidecar's `inputs` with relative image / mask paths taken from the sidecar's own
    folder (`folder`), not the current directory: the sidecars the CLI, the web demo and the
    docs write name their input files that way. Absolute paths and gs:// URIs stay as they are."""
    return _map_input_files(
        inputs, lambda p, _: os.path.join(folder, p) if _local_relative(p) else p)


def regenerate(sidecar: str, out: str | None = None, progress: bool = False,
               compile_cache: bool = True, overwrite: bool = False) -> str:
    """Redo the command recorded in `sidecar`; writes `out` (default: <name>-regen.png) and
    its sidecar, and returns `out`."""
    rec = sidecars.read_sidecar(sidecar)
    out = out or os.path.splitext(sidecar)[0] + "-regen.png"
    sidecars.check_output(out, overwrite)                    # before loading or sampling
    check_cols(rec.get("cols"))
    folder = os.path.dirname(os.path.abspath(sidecar))
    ckpt = rec.get("checkpoint")
    pipe = load_model(os.path.join(folder, ckpt) if _local_relative(ckpt) else ckpt,
                      progress, rec.get("prior", "auto"), compile_cache)
    now = pipe.directories()
    for stage, info in rec.get("checkpoints", {}).items():
        if stage not in now or now[stage]["identity"] != info["identity"]:
            raise CheckpointError(f"the {stage} checkpoint differs from the one recorded in "
                                  f"{sidecar}; restore {info['dir']} to regenerate")
    inputs = inputs_beside(rec["inputs"], folder)
    sidecars.check_input_hashes(rec, inputs, sidecar)
    images = execute(pipe, rec["command"], inputs, rec["settings"], int(rec["seed"]))
    rec = {k: v for k, v in rec.items()
           if k not in ("output", "image_shape", "checkpoints", "input_sha256")}
    if _local_relative(ckpt):
        rec["checkpoint"] = os.path.relpath(os.path.join(folder, ckpt))   # from the cwd
    out_folder = os.path.dirname(os.path.abspath(out))
    write_result(pipe, images, out, rec.get("cols"),
                 dict(rec, regenerated_from=as_recorded(sidecar, sidecar, out_folder)),
                 overwrite, inputs)
    return out

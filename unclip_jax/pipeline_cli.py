"""CLI subcommands `sample`, `vary`, `interpolate`, `textdiff`, `inpaint`, `img2img`, `mix`
(see `unclip_jax.cli`).

Each writes a PNG grid (`--out`, default samples/<command>.png) and a JSON sidecar next to it
(same name, .json) holding the command, inputs, seed, every sampling setting, the stage
checkpoint directories with their identities, and the package version.
`unclip-jax sample --from-sidecar FILE.json` redoes the recorded command bit for bit (it
refuses if a checkpoint's identity changed).

`--checkpoint DIR` is a directory of stage checkpoints:
    DIR/clip/  DIR/tokenizer/  DIR/prior/ (or DIR/ar_prior/)  DIR/decoder/
    DIR/upsampler1/  DIR/upsampler2/        (absent upsamplers → smaller images)
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from unclip_jax import paths
from unclip_jax import pipeline_io as io
from unclip_jax.errors import CheckpointError, UserError

DEFAULT_MODEL = io.BUNDLED_MODEL   # the embedded shapes model


def default_checkpoint() -> str:
    """The embedded default model directory; UserError while none ships with the package."""
    if os.path.isdir(DEFAULT_MODEL):
        return DEFAULT_MODEL
    raise UserError("no --checkpoint given and no default model is installed; pass "
                    "--checkpoint DIR (a directory with clip/, tokenizer/, prior/, decoder/, ...)")


# ---------------------------------------------------------------------- arguments

def _common(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--checkpoint", help="directory with stage subdirectories clip/, tokenizer/, "
                   "prior/ (or ar_prior/), decoder/, upsampler1/, upsampler2/")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join("samples", f"{command}.png"),
                   help="grid to write (.png, or .jpg/.jpeg for JPEG); the JSON sidecar goes "
                        "next to it (same name, .json)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out and its sidecar (default: refuse)")
    p.add_argument("--cols", type=int, default=None, help="grid columns")
    p.add_argument("--decoder-steps", default=None, help="e.g. '50' or 'ddim25'")
    p.add_argument("--decoder-guidance", type=float, default=None)
    p.add_argument("--upsampler-steps", default=None,
                   help="one respacing for both upsamplers, or two separated by '/'")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not keep compiled programs in the persistent cache "
                        "(default: $UNCLIP_JAX_CACHE_DIR or ~/.cache/unclip-jax/xla)")


def add_arguments_sample(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompts", nargs="*", help="text prompts")
    p.add_argument("--from-sidecar", metavar="FILE.json",
                   help="redo the command recorded in a sidecar (prompts, seed, settings)")
    p.add_argument("-n", "--num-images-per-prompt", type=int, default=1)
    p.add_argument("--prior-steps", default=None)
    p.add_argument("--prior-guidance", type=float, default=None)
    p.add_argument("--prior-best-of", type=int, default=None,
                   help="prior candidates per image (default: the prior config's "
                   "model.sample_candidates)")
    p.add_argument("--eta", type=float, default=0.0)
    _negative(p)
    p.add_argument("--prior", choices=("auto", "diffusion", "ar", "text"), default="auto",
                   help="where z_i comes from: the diffusion prior (prior/), the AR prior "
                        "(ar_prior/), auto (the diffusion prior if the model has one), or text "
                        "(no prior: the caption's CLIP text embedding, the paper's zero-shot "
                        "baseline)")
    _common(p, "sample")


def _negative(p: argparse.ArgumentParser) -> None:
    p.add_argument("--negative", default=None, metavar="TEXT",
                   help="negative prompt: guidance's unconditional branch of the prior and the "
                        "decoder conditions on it (e.g. 'a red circle' steers away from red)")


def _prior_settings(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", type=int, default=4, help="images per input")
    p.add_argument("--prior-steps", default=None)
    p.add_argument("--prior-guidance", type=float, default=None)
    p.add_argument("--eta", type=float, default=0.0)


def add_arguments_inpaint(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="image to edit")
    p.add_argument("prompt", help="what to paint into the masked region")
    p.add_argument("--mask", required=True,
                   help="grayscale mask of the image's size: white = repaint, black = keep")
    p.add_argument("--feather", type=float, default=0.0,
                   help="soften the mask edges by a Gaussian blur of this σ (mask pixels)")
    p.add_argument("--jump-length", type=int, default=1,
                   help="RePaint resampling: levels jumped back each time (with --resamplings)")
    p.add_argument("--resamplings", type=int, default=1,
                   help="RePaint resampling: passes over each jump (1 = none; costs about "
                        "this many times the steps)")
    _negative(p)
    _prior_settings(p)
    _common(p, "inpaint")


def add_arguments_img2img(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="image to start from")
    p.add_argument("prompt", help="caption of the image to make")
    p.add_argument("--strength", type=float, default=0.6,
                   help="how far to noise the image: 0 = unchanged, 1 = plain generation")
    _negative(p)
    _prior_settings(p)
    _common(p, "img2img")


def add_arguments_mix(p: argparse.ArgumentParser) -> None:
    p.add_argument("items", nargs="+", metavar="IMAGE_OR_PROMPT",
                   help="image files and prompts (an argument naming a file or ending in "
                        ".png/.jpg/... is an image)")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one weight per input (default equal; divided by their sum)")
    _prior_settings(p)
    _common(p, "mix")


def add_arguments_vary(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("-n", type=int, default=4, help="variations per image")
    p.add_argument("--eta", type=float, default=0.8)
    _common(p, "vary")


def add_arguments_interpolate(p: argparse.ArgumentParser) -> None:
    p.add_argument("image_a")
    p.add_argument("image_b")
    p.add_argument("-n", type=int, default=5, help="frames")
    p.add_argument("--fixed-xT", dest="fixed_xT", action="store_true",
                   help="one x_T for every frame instead of slerping the inverted latents")
    _common(p, "interpolate")


def add_arguments_textdiff(p: argparse.ArgumentParser) -> None:
    p.add_argument("image")
    p.add_argument("--from", dest="caption_from", required=True, help="caption of the image")
    p.add_argument("--to", dest="caption_to", required=True, help="caption to move toward")
    p.add_argument("-n", type=int, default=5, help="frames")
    p.add_argument("--max-angle", type=float, default=0.5)
    _common(p, "textdiff")


# ---------------------------------------------------------------------- running

def _upsampler_steps(value):
    if value is None:
        return None
    parts = str(value).split("/")
    return parts[0] if len(parts) == 1 else parts


def _settings(args, command: str) -> dict:
    s = dict(decoder_steps=args.decoder_steps, decoder_guidance=args.decoder_guidance,
             upsampler_steps=_upsampler_steps(args.upsampler_steps))
    if command == "sample":
        s.update(num_images_per_prompt=args.num_images_per_prompt, prior_steps=args.prior_steps,
                 prior_guidance=args.prior_guidance, prior_best_of=args.prior_best_of,
                 eta=args.eta)
        if args.prior == "text":
            s["text_as_image_embed"] = True
        if args.negative is not None:
            s["negative_prompts"] = args.negative
    elif command == "vary":
        s.update(n=args.n, eta=args.eta)
    elif command == "interpolate":
        s.update(n=args.n, fixed_xT=args.fixed_xT)
    elif command == "textdiff":
        s.update(n=args.n, max_angle=args.max_angle)
    elif command in ("inpaint", "img2img", "mix"):
        s.update(n=args.n, prior_steps=args.prior_steps, prior_guidance=args.prior_guidance,
                 eta=args.eta)
        if command == "inpaint":
            s.update(feather=args.feather, jump_length=args.jump_length,
                     resamplings=args.resamplings)
        elif command == "img2img":
            s["strength"] = args.strength
        else:
            s["weights"] = args.weights
        if command != "mix" and args.negative is not None:
            s["negative_prompts"] = args.negative
    return s


def _inputs(args, command: str) -> dict:
    if command == "sample":
        return {"prompts": io.check_prompts(args.prompts)}
    if command == "vary":
        return {"images": [os.path.abspath(p) for p in args.images]}
    if command == "interpolate":
        return {"image_a": os.path.abspath(args.image_a), "image_b": os.path.abspath(args.image_b)}
    if command == "inpaint":
        return {"image": os.path.abspath(args.image), "mask": os.path.abspath(args.mask),
                "prompt": args.prompt}
    if command == "img2img":
        return {"image": os.path.abspath(args.image), "prompt": args.prompt}
    if command == "mix":
        from unclip_jax.editing import split_items
        items, kinds = split_items(args.items)
        return {"items": [os.path.abspath(i) if k == "image" else i
                          for i, k in zip(items, kinds)], "kinds": kinds}
    return {"image": os.path.abspath(args.image), "caption_from": args.caption_from,
            "caption_to": args.caption_to}


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
        return pipe.mix(_mix_items(inputs), settings.pop("weights", None), seed, **settings)
    raise UserError(f"unknown command {command!r} in the sidecar")


def _mix_items(inputs: dict) -> list:
    """A mix sidecar's items with their recorded kinds: prompts that look like file names
    stay prompts (wrapped as `Prompt`)."""
    from unclip_jax.editing import Prompt
    return [Prompt(i) if k == "prompt" else i for i, k in zip(inputs["items"], inputs["kinds"])]


def _load(checkpoint: str | None, progress: bool, prior: str = "auto",
          compile_cache: bool = True):
    """`prior` as `sample --prior` takes it ('text' loads no prior)."""
    from unclip_jax.pipeline import UnCLIP
    root = checkpoint if checkpoint is not None else default_checkpoint()
    return UnCLIP.from_directory(root, prior="none" if prior == "text" else prior,
                                 progress=progress, compile_cache=compile_cache)


def command_record(command: str, seed: int, inputs: dict, settings: dict, prior: str,
                   checkpoint: str | None, cols) -> dict:
    """What a sidecar records about a command before it runs (`checkpoint` None: the
    bundled model; a directory is recorded as an absolute path)."""
    return dict(command=command, seed=seed, inputs=inputs, settings=settings, prior=prior,
                checkpoint=None if checkpoint is None else os.path.abspath(checkpoint),
                cols=cols)


# a setting left unset (None) → (stage, config keys) of the default the pipeline uses instead
CONFIG_DEFAULTS = {"decoder_steps": ("decoder", ("diffusion", "sample_steps")),
                   "decoder_guidance": ("decoder", ("diffusion", "guidance_scale")),
                   "prior_steps": ("prior", ("diffusion", "sample_steps")),
                   "prior_guidance": ("prior", ("diffusion", "guidance_scale")),
                   "prior_best_of": ("prior", ("model", "sample_candidates"))}


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


def result_record(pipe, images, output: str, record: dict) -> dict:
    """The sidecar of a finished command: `record` plus the output's name, the images'
    shape, the settings with the defaults that were used (`settings_used`; `settings` keeps
    what was asked, which `--from-sidecar` replays) and the identities of the loaded stages
    (checked by `--from-sidecar`)."""
    return dict(record, output=output, image_shape=list(images.shape),
                settings_used=settings_used(pipe, record["settings"]),
                checkpoints=pipe.directories())


def _write(pipe, images, out: str, cols, record: dict, overwrite: bool = False) -> None:
    record = result_record(pipe, images, os.path.abspath(out), record)
    io.save_outputs(out, images, cols, record, overwrite=overwrite)
    print(f"wrote {out} ({images.shape[0]} images of {images.shape[1]}×{images.shape[2]}) "
          f"and {io.sidecar_path(out)}")


def _run(args, command: str) -> int:
    inputs = _inputs(args, command)
    settings = _settings(args, command)
    io.check_seed(args.seed)
    _check_cols(args.cols)
    io.check_output(args.out, args.overwrite)          # before any sampling
    prior = getattr(args, "prior", "auto")
    pipe = _load(args.checkpoint, not args.no_progress, prior, not args.no_compile_cache)
    images = execute(pipe, command, inputs, settings, args.seed)
    record = command_record(command, args.seed, inputs, settings, prior, args.checkpoint,
                            args.cols)
    _write(pipe, images, args.out, args.cols, record, args.overwrite)
    return 0


def _check_cols(cols) -> None:
    if cols is not None and int(cols) < 1:
        raise UserError(f"--cols {cols}: the grid needs at least 1 column")


def inputs_beside(inputs: dict, folder: str) -> dict:
    """A sidecar's `inputs` with relative image / mask paths taken from the sidecar's own
    folder (`folder`), not the current directory: the web demo's downloads and the docs'
    sidecars name their input files that way. Absolute paths and gs:// URIs stay as they are."""
    def beside(p):
        if not isinstance(p, str) or os.path.isabs(p) or paths.is_remote(p):
            return p
        return os.path.join(folder, p)
    out = dict(inputs)
    for key in ("image", "image_a", "image_b", "mask"):
        if key in out:
            out[key] = beside(out[key])
    if "images" in out:
        out["images"] = [beside(p) for p in out["images"]]
    if "items" in out:
        out["items"] = [beside(i) if k == "image" else i
                        for i, k in zip(out["items"], out.get("kinds", ()))]
    return out


def regenerate(sidecar: str, out: str | None = None, progress: bool = False,
               compile_cache: bool = True, overwrite: bool = False) -> str:
    """Redo the command recorded in `sidecar`; writes `out` (default: <name>-regen.png)."""
    rec = io.read_sidecar(sidecar)
    out = out or os.path.splitext(sidecar)[0] + "-regen.png"
    io.check_output(out, overwrite)                    # before loading or sampling
    _check_cols(rec.get("cols"))
    pipe = _load(rec.get("checkpoint"), progress, rec.get("prior", "auto"), compile_cache)
    now = pipe.directories()
    for stage, info in rec.get("checkpoints", {}).items():
        if stage not in now or now[stage]["identity"] != info["identity"]:
            raise CheckpointError(f"the {stage} checkpoint differs from the one recorded in "
                                  f"{sidecar}; restore {info['dir']} to regenerate")
    inputs = inputs_beside(rec["inputs"], os.path.dirname(os.path.abspath(sidecar)))
    images = execute(pipe, rec["command"], inputs, rec["settings"], int(rec["seed"]))
    rec = {k: v for k, v in rec.items() if k not in ("output", "image_shape", "checkpoints")}
    _write(pipe, images, out, rec.get("cols"), dict(rec, regenerated_from=os.path.abspath(sidecar)),
           overwrite)
    return out


# what `sample` takes by default; with --from-sidecar any other value would be ignored
_SIDECAR_CONFLICTS = (("prompts", "PROMPTS", []), ("checkpoint", "--checkpoint", None),
                      ("seed", "--seed", 0), ("num_images_per_prompt", "-n", 1),
                      ("prior_steps", "--prior-steps", None),
                      ("prior_guidance", "--prior-guidance", None),
                      ("prior_best_of", "--prior-best-of", None), ("eta", "--eta", 0.0),
                      ("negative", "--negative", None),
                      ("prior", "--prior", "auto"), ("cols", "--cols", None),
                      ("decoder_steps", "--decoder-steps", None),
                      ("decoder_guidance", "--decoder-guidance", None),
                      ("upsampler_steps", "--upsampler-steps", None))


def _check_sidecar_alone(args) -> None:
    given = [flag for attr, flag, default in _SIDECAR_CONFLICTS
             if getattr(args, attr, default) != default]
    if given:
        raise UserError(f"--from-sidecar redoes the recorded command with its own settings; "
                        f"drop {', '.join(given)} (or run without --from-sidecar to change "
                        "them)")


def run_sample(args) -> int:
    if args.from_sidecar:
        _check_sidecar_alone(args)
        out = None if args.out == os.path.join("samples", "sample.png") else args.out
        regenerate(args.from_sidecar, out, progress=not args.no_progress,
                   compile_cache=not args.no_compile_cache, overwrite=args.overwrite)
        return 0
    return _run(args, "sample")


def run_vary(args) -> int:
    return _run(args, "vary")


def run_interpolate(args) -> int:
    return _run(args, "interpolate")


def run_textdiff(args) -> int:
    return _run(args, "textdiff")


def run_inpaint(args) -> int:
    return _run(args, "inpaint")


def run_img2img(args) -> int:
    return _run(args, "img2img")


def run_mix(args) -> int:
    return _run(args, "mix")

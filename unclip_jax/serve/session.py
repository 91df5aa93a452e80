"""The model behind `unclip-jax serve`: one load, one lock, form values → CLI commands.

A `Session` loads the model once (the bundled model, or `--checkpoint DIR`) and runs each
web request as the CLI command it stands for: the form's values become that command's
arguments (the CLI's own parser supplies the defaults and `unclip_jax.cli._sampling` turns
them into the recorded settings), `unclip_jax.sample.records.execute` runs them on the loaded
`UnCLIP`, and the result carries the PNG grid and the same JSON sidecar the CLI writes, so
`unclip-jax sample --from-sidecar NAME.json` redoes it. Nothing here imports Gradio.

Uploaded images (and an inpainting mask drawn in the page) arrive in memory as PIL images;
the sidecar names them `COMMAND-input.png`, `inpaint-mask.png`, `interpolate-input-a.png`,
`mix-input-1.png`, ... and the result offers those files too, so the downloads together
regenerate from the folder they were saved to. No path sent by a browser
is ever opened: every file written lies in the session's own temporary directory under a
name made here.

Requests run one at a time (a lock around the model; the web app also queues them), so
the compiled programs of one shape are built once for the server's life (`UnCLIP`'s cache).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import threading
import time

import numpy as np

from unclip_jax import paths
from unclip_jax.cli import _sampling, command_module
from unclip_jax.errors import UserError
from unclip_jax.sample import records
from unclip_jax.sample.checks import check_prompts, check_seed
from unclip_jax.sample.images import to_rgb
from unclip_jax.sample.loading import PRIOR_DIRS, default_model

# which `sample --prior` value loads which prior directory
PRIORS = PRIOR_DIRS             # --prior choice → the model subdirectory it loads


@dataclasses.dataclass
class Result:
    """One finished request: uint8 images [N, H, W, 3], the grid as PIL image, and the files
    offered for download (grid PNG, its sidecar, the inputs), all in `directory`."""
    images: np.ndarray
    grid: object
    files: list[str]
    directory: str
    seconds: float

    def summary(self) -> str:
        n, h, w, _ = self.images.shape
        return f"{n} image{'s' * (n != 1)} of {h}×{w} in {self.seconds:.1f} s"


def _parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"unclip-jax {command}")
    command_module(command).add_arguments(p)
    return p


def cli_args(command: str, **values) -> argparse.Namespace:
    """The argparse namespace `unclip-jax COMMAND` would build: the CLI's defaults, with
    `values` (form fields, by their CLI `dest` names; None = the CLI's default) on top."""
    p = _parser(command)
    dests = {a.dest for a in p._actions}
    unknown = set(values) - dests
    if unknown:
        raise TypeError(f"{command} has no argument(s) {sorted(unknown)}")
    ns = argparse.Namespace(**{d: p.get_default(d) for d in dests if d != "help"})
    for k, v in values.items():
        if v is not None:
            setattr(ns, k, v)
    return ns


# ---------------------------------------------------------------------- form values

def text_or_none(value) -> str | None:
    """A text field: empty → None (the model's default), else the stripped text."""
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def whole_number(label: str, value, default=None) -> int | None:
    """A number field that must hold an integer (empty → `default`)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        f = float(value)
        if not np.isfinite(f) or f != int(f):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{label} {value!r} is not a whole number; enter e.g. 1") from None
    return int(value) if isinstance(value, (int, np.integer)) else int(f)


def number_or_none(value) -> float | None:
    """A number field: empty → None (the model's default)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return float(value)


def weight_list(text) -> list[float] | None:
    """'1 2' or '1, 2' → [1.0, 2.0]; empty → None (equal weights)."""
    parts = str(text or "").replace(",", " ").split()
    try:
        return [float(p) for p in parts] or None
    except ValueError:
        raise UserError(f"weights {text!r} must be numbers separated by spaces, e.g. "
                        "'1 2'") from None


def drawn_mask(layers, size: tuple[int, int]):
    """The image editor's drawn layers (RGBA PIL images or arrays) → the inpainting mask as
    a grayscale PIL image of `size` (width, height): white where anything was painted,
    black elsewhere. None when nothing was painted."""
    from PIL import Image
    alpha = None
    for layer in layers or []:
        a = np.asarray(layer)
        if a.ndim != 3 or a.shape[-1] != 4:
            continue
        alpha = a[..., 3] > 0 if alpha is None else (alpha | (a[..., 3] > 0))
    if alpha is None or not alpha.any():
        return None
    mask = Image.fromarray(np.where(alpha, 255, 0).astype(np.uint8), "L")
    return mask if mask.size == tuple(size) else mask.resize(size, Image.Resampling.NEAREST)


def prompts_from_text(text: str | None) -> list[str]:
    """One prompt per non-blank line."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def uploaded(label: str, image):
    """An uploaded image (PIL image or array) as an RGB PIL image (transparency on white,
    as the CLI reads a file); UserError when none."""
    from PIL import Image
    if image is None:
        raise UserError(f"no {label} uploaded; upload a PNG or JPEG image")
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    return to_rgb(image)


def pixels(image) -> np.ndarray:
    """An RGB PIL image as the uint8 [H, W, 3] array the pipeline takes for one image."""
    return np.asarray(image, np.uint8)


# ---------------------------------------------------------------------- the session

class Session:
    """The loaded model (one `UnCLIP` per available prior, sharing every other stage) and a
    temporary directory for the files of the last `keep` results."""

    def __init__(self, checkpoint: str | None = None, *, compile_cache: bool = True,
                 keep: int = 32):
        from unclip_jax.sample.unclip import UnCLIP
        self.checkpoint = checkpoint
        root = checkpoint if checkpoint is not None else default_model()
        base = UnCLIP.from_directory(root, prior="auto", progress=True,
                                     compile_cache=compile_cache)
        self.pipes = {}
        for choice, sub in PRIORS.items():
            if sub in base.stages:
                self.pipes[choice] = base
            elif paths.isdir(paths.join(root, sub)):
                other = UnCLIP.load(**{sub: paths.join(root, sub)}, progress=False,
                                    compile_cache=compile_cache)
                stages = {k: v for k, v in base.stages.items() if k not in PRIORS.values()}
                stages[sub] = other.stages[sub]
                self.pipes[choice] = UnCLIP(stages, base.tokenizer,
                                            tokenizer_dir=base.tokenizer_dir, progress=True,
                                            compile_cache=compile_cache)
        if not self.pipes:                      # no prior: a decoder on z_t, or manipulations
            self.pipes["auto"] = base
        # the model's default prior (what `prior='auto'` loaded) is offered first
        self.pipes = dict(sorted(self.pipes.items(), key=lambda kv: kv[1] is not base))
        self.base = base
        self.keep = int(keep)
        self.workdir = tempfile.mkdtemp(prefix="unclip-jax-serve-")
        self._count = 0
        self._lock = threading.Lock()

    @property
    def priors(self) -> list[str]:
        """The `--prior` choices this model offers ('diffusion', 'ar', or 'auto'), its default
        prior first."""
        return list(self.pipes)

    def describe(self) -> str:
        """One line: which model, its stages and output size."""
        name = "the bundled shapes model" if self.checkpoint is None else \
            paths.basename(paths.resolve(self.checkpoint, "--checkpoint"))
        stages = [s for s in ("prior", "ar_prior", "decoder", "upsampler1", "upsampler2")
                  if any(s in p.stages for p in self.pipes.values())]
        last = next(s for s in ("upsampler2", "upsampler1", "decoder") if s in self.base.stages)
        size = self.base.image_size(last)
        return f"{name}: {', '.join(stages)}; {size}×{size} images"

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------------ commands
    def generate(self, prompts: str, num_images_per_prompt=1, seed=0, prior: str | None = None,
                 prior_steps=None, prior_guidance=None, decoder_steps=None,
                 decoder_guidance=None, upsampler_steps=None, eta=None,
                 negative=None) -> Result:
        """`unclip-jax sample` on the prompts (one per line of `prompts`)."""
        prior = prior or self.priors[0]
        if prior not in self.pipes:
            raise UserError(f"prior {prior!r} is not in this model; choose one of "
                            f"{', '.join(self.priors)}")
        args = cli_args(
            "sample", num_images_per_prompt=whole_number("images per prompt",
                                                         num_images_per_prompt),
            prior_steps=text_or_none(prior_steps), prior_guidance=number_or_none(prior_guidance),
            decoder_steps=text_or_none(decoder_steps),
            decoder_guidance=number_or_none(decoder_guidance),
            upsampler_steps=text_or_none(upsampler_steps), eta=number_or_none(eta), prior=prior,
            negative=text_or_none(negative))
        inputs = {"prompts": check_prompts(prompts_from_text(prompts))}
        return self._run("sample", args, seed, inputs, inputs, {}, prior)

    def variations(self, image, n=4, seed=0, eta=None, decoder_steps=None,
                   decoder_guidance=None, upsampler_steps=None) -> Result:
        """`unclip-jax vary` on one uploaded image."""
        args = cli_args("vary", n=whole_number("variations", n), eta=number_or_none(eta),
                        **self._decode_args(decoder_steps, decoder_guidance, upsampler_steps))
        img = uploaded("image", image)
        return self._run("vary", args, seed, {"images": [pixels(img)]},
                         {"images": ["vary-input.png"]}, {"vary-input.png": img})

    def interpolate(self, image_a, image_b, n=5, seed=0, fixed_xT=False, decoder_steps=None,
                    decoder_guidance=None, upsampler_steps=None) -> Result:
        """`unclip-jax interpolate` between two uploaded images (frames in one row)."""
        args = cli_args("interpolate", n=whole_number("frames", n), fixed_xT=bool(fixed_xT),
                        **self._decode_args(decoder_steps, decoder_guidance, upsampler_steps))
        a, b = uploaded("first image", image_a), uploaded("second image", image_b)
        names = {"image_a": "interpolate-input-a.png", "image_b": "interpolate-input-b.png"}
        return self._run("interpolate", args, seed,
                         {"image_a": pixels(a), "image_b": pixels(b)}, names,
                         {names["image_a"]: a, names["image_b"]: b}, cols=args.n)

    def text_diff(self, image, caption_from, caption_to, n=5, max_angle=None, seed=0,
                  decoder_steps=None, decoder_guidance=None, upsampler_steps=None) -> Result:
        """`unclip-jax textdiff` on one uploaded image (frames in one row)."""
        args = cli_args("textdiff", n=whole_number("frames", n),
                        max_angle=number_or_none(max_angle),
                        caption_from=caption_from or "", caption_to=caption_to or "",
                        **self._decode_args(decoder_steps, decoder_guidance, upsampler_steps))
        img = uploaded("image", image)
        run = {"image": pixels(img), "caption_from": args.caption_from,
               "caption_to": args.caption_to}
        return self._run("textdiff", args, seed, run,
                         dict(run, image="textdiff-input.png"), {"textdiff-input.png": img},
                         cols=args.n)

    def inpaint(self, image, mask, prompt, n=1, seed=0, negative=None, feather=None,
                jump_length=None, resamplings=None, prior_steps=None, prior_guidance=None,
                eta=None, decoder_steps=None, decoder_guidance=None,
                upsampler_steps=None) -> Result:
        """`unclip-jax inpaint`: repaint the white region of `mask` (a grayscale PIL image of
        the image's size, e.g. `drawn_mask` of the editor's layers) under `prompt`."""
        args = cli_args("inpaint", prompt=prompt or "", negative=text_or_none(negative),
                        feather=number_or_none(feather),
                        jump_length=whole_number("jump length", jump_length),
                        resamplings=whole_number("resamplings", resamplings),
                        **self._prior_args(n, prior_steps, prior_guidance, eta),
                        **self._decode_args(decoder_steps, decoder_guidance, upsampler_steps))
        img = uploaded("image", image)
        if mask is None:
            raise UserError("no mask drawn; paint the region to repaint on the image")
        names = {"image": "inpaint-input.png", "mask": "inpaint-mask.png"}
        return self._run("inpaint", args, seed,
                         {"image": img, "mask": mask, "prompt": args.prompt},
                         dict(names, prompt=args.prompt),
                         {names["image"]: img, names["mask"]: mask})

    def img2img(self, image, prompt, strength=None, n=1, seed=0, negative=None,
                prior_steps=None, prior_guidance=None, eta=None, decoder_steps=None,
                decoder_guidance=None, upsampler_steps=None) -> Result:
        """`unclip-jax img2img`: the uploaded image noised to `strength`, denoised under
        `prompt`."""
        args = cli_args("img2img", prompt=prompt or "", strength=number_or_none(strength),
                        negative=text_or_none(negative),
                        **self._prior_args(n, prior_steps, prior_guidance, eta),
                        **self._decode_args(decoder_steps, decoder_guidance, upsampler_steps))
        img = uploaded("image", image)
        return self._run("img2img", args, seed, {"image": img, "prompt": args.prompt},
                         {"image": "img2img-input.png", "prompt": args.prompt},
                         {"img2img-input.png": img})

    def mix(self, images, prompts, weights=None, n=1, seed=0, prior_steps=None,
            prior_guidance=None, eta=None, decoder_steps=None, decoder_guidance=None,
            upsampler_steps=None) -> Result:
        """`unclip-jax mix` of the uploaded images (None entries skipped) and the prompts (one
        per line), in that order; `weights`: one number per input, separated by spaces or
        commas (empty: equal)."""
        from unclip_jax.sample.mixing import Prompt
        imgs = [uploaded("image", im) for im in images if im is not None]
        texts = prompts_from_text(prompts)
        if not imgs and not texts:
            raise UserError("nothing to mix; upload an image or type a prompt (or both)")
        args = cli_args("mix", weights=weight_list(weights),
                        **self._prior_args(n, prior_steps, prior_guidance, eta),
                        **self._decode_args(decoder_steps, decoder_guidance, upsampler_steps))
        names = [f"mix-input-{i + 1}.png" for i in range(len(imgs))]
        kinds = ["image"] * len(imgs) + ["prompt"] * len(texts)
        return self._run("mix", args, seed, {"items": imgs + [Prompt(t) for t in texts],
                                             "kinds": kinds},
                         {"items": names + texts, "kinds": kinds}, dict(zip(names, imgs)))

    # ------------------------------------------------------------------ running
    @staticmethod
    def _prior_args(n, prior_steps, prior_guidance, eta) -> dict:
        return dict(n=whole_number("images", n), prior_steps=text_or_none(prior_steps),
                    prior_guidance=number_or_none(prior_guidance), eta=number_or_none(eta))

    @staticmethod
    def _decode_args(decoder_steps, decoder_guidance, upsampler_steps) -> dict:
        return dict(decoder_steps=text_or_none(decoder_steps),
                    decoder_guidance=number_or_none(decoder_guidance),
                    upsampler_steps=text_or_none(upsampler_steps))

    def _run(self, command: str, args, seed, run_inputs: dict, record_inputs: dict,
             input_images: dict, prior: str = "auto", cols=None) -> Result:
        """Run `command` on the loaded model; write its inputs, then its grid and sidecar
        (`records.write_result`, as the CLI writes them).

        run_inputs: what `records.execute` gets (uploads as uint8 arrays);
        record_inputs: what the sidecar records (uploads by the file names written here,
        which lie beside the sidecar; their sha256 is that of the PNG written).
        """
        from PIL import Image
        seed = check_seed(whole_number("seed", seed, default=0))
        settings = _sampling.settings(args, command)
        pipe = self.pipes.get(prior, self.base)
        with self._lock:
            start = time.perf_counter()
            images = records.execute(pipe, command, run_inputs, settings, seed)
            seconds = time.perf_counter() - start
            name = f"{command}-{seed}.png"
            self._count += 1
            directory = os.path.join(self.workdir, f"{self._count:06d}")
            os.makedirs(directory)
            written = []                # the inputs first: the sidecar records their sha256
            for fname, img in input_images.items():
                written.append(os.path.join(directory, fname))
                img.save(written[-1], format="PNG")
            ckpt = None if self.checkpoint is None else paths.resolve(self.checkpoint,
                                                                      "--checkpoint")
            record = records.command_record(command, seed, record_inputs, settings, prior,
                                            ckpt, cols)
            files = list(records.write_result(pipe, images, os.path.join(directory, name), cols,
                                              record, inputs=records.inputs_beside(
                                                  record_inputs, directory))) + written
            with Image.open(files[0]) as png:      # the grid as written (`grid_tiles`)
                grid = png.convert("RGB")
            self._prune()
        return Result(images, grid, files, directory, seconds)

    def _prune(self) -> None:
        """Keep the files of the last `keep` results only (disk stays flat)."""
        done = sorted(os.listdir(self.workdir))
        for old in done[:max(0, len(done) - self.keep)]:
            shutil.rmtree(os.path.join(self.workdir, old), ignore_errors=True)

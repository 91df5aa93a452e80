"""`unclip-jax` console script.

Each subcommand lives in the module that does its work; that module defines
`add_arguments(parser)` and `run(args) -> int`. Modules are imported only when their
subcommand runs, so `unclip-jax --help` is instant and one command's heavy imports
(TensorFlow, torch) never slow another.

User mistakes (`UserError`, `ValueError`, missing files, a full disk, a checkpoint whose
config.json does not match its parameters) are printed as one line `unclip-jax: error: ...`
with exit status 2; nothing is written on error. `unclip-jax --debug COMMAND ...` shows the
traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# name → (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("unclip_jax.diffusion.demo", "sample a 2-D toy distribution with every sampler (no weights needed)"),
    "convert-clip": ("unclip_jax.clip.convert", "import a Hugging Face CLIP directory into an Orbax checkpoint"),
    "data": ("unclip_jax.data.cli", "build datasets: `data build shapes|folder`"),
    "embed": ("unclip_jax.data.embed", "precompute CLIP embeddings for a dataset"),
    "train": ("unclip_jax.train.cli", "train one stage from a config"),
    "sample": ("unclip_jax.pipeline_cli", "generate images from prompts"),
    "vary": ("unclip_jax.pipeline_cli", "variations of images"),
    "interpolate": ("unclip_jax.pipeline_cli", "interpolate between two images"),
    "textdiff": ("unclip_jax.pipeline_cli", "edit an image toward a caption change"),
    "inpaint": ("unclip_jax.pipeline_cli", "repaint the masked region of an image from a prompt"),
    "img2img": ("unclip_jax.pipeline_cli", "remake an image under a prompt (SDEdit, --strength)"),
    "mix": ("unclip_jax.pipeline_cli", "decode a weighted mix of images and prompts"),
    "convert-karlo": ("unclip_jax.karlo", "import Karlo (diffusers unCLIP layout) weights"),
    "eval": ("unclip_jax.eval.cli", "evaluate a model (CLIP score, FD, diversity, prior metrics)"),
    "bench": ("unclip_jax.bench", "benchmarks: pmap vs jit-sharded, vs PyTorch"),
    "package": ("unclip_jax.package", "export training runs (EMA, float16) into a model directory with a MANIFEST"),
    "serve": ("unclip_jax.serve", "a local web demo (Gradio) of every command on one loaded model"),
}


def _setup_env() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build_parser(load: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unclip-jax", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == load:
            mod = importlib.import_module(module)
            adder = getattr(mod, f"add_arguments_{name.replace('-', '_')}", None) or mod.add_arguments
            adder(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    _setup_env()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    parser = build_parser(load=command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    mod = importlib.import_module(args._module)
    runner = getattr(mod, f"run_{args.command.replace('-', '_')}", None) or mod.run
    try:
        return int(runner(args) or 0)
    except Exception as e:
        line = error_line(e)
        if args.debug or line is None:
            raise
        print(line, file=sys.stderr)
        return 2


USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError)   # UserError is a ValueError


def error_line(e: BaseException) -> str | None:
    """The one line `unclip-jax: error: ...` a user mistake is shown as (by the CLI and by
    `unclip-jax serve`'s pages), or None for an unexpected error (a bug: show the traceback)."""
    if isinstance(e, USER_ERRORS):
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return f"unclip-jax: error: {msg}"
    if type(e).__module__.startswith("flax.errors"):
        # e.g. ScopeParamShapeError: the model built from config.json is not the saved one
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return (f"unclip-jax: error: a checkpoint's config.json does not match its parameters "
                f"({type(e).__name__}: {first}); restore the config.json it was exported with")
    return None


if __name__ == "__main__":
    sys.exit(main())

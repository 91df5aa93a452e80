"""`unclip-jax` console script: one module per command in this package.

Registration: a command NAME is an entry of `COMMANDS` (NAME → one-line help) and a module
`unclip_jax.cli.<NAME with '-' as '_'>` defining `add_arguments(parser)` and `run(args) -> int`.
A command's module is imported only when that command runs, so `unclip-jax --help` is instant
and one command's heavy imports (TensorFlow, torch) never slow another; command modules keep
heavy imports inside `run`. Parsers are `unclip_jax.cli.parser.Parser` (dashed flags with the
underscore spelling as alias, defaults in `--help`, `--config.a.b=v` overrides collected);
configs load through `unclip_jax.cli.config_args`.

User mistakes (`UserError`, `ValueError`, missing files, a full disk, a checkpoint whose
config.json does not match its parameters) are printed as one line `unclip-jax: error: ...`
with exit status 2; nothing is written on error. `unclip-jax --debug COMMAND ...` shows the
traceback instead.
"""
from __future__ import annotations

import importlib
import os
import sys

from unclip_jax.cli.parser import Parser

# name → one-line help; the command lives in module unclip_jax.cli.<name with '-' as '_'>
COMMANDS: dict[str, str] = {
    "demo": "sample a 2-D toy distribution with every sampler (no weights needed)",
    "convert-clip": "import a Hugging Face CLIP directory into an Orbax checkpoint",
    "data": "build datasets: `data build shapes|folder`",
    "embed": "precompute CLIP embeddings for a dataset",
    "train": "train one stage from a config",
    "sample": "generate images from prompts",
    "vary": "variations of images",
    "interpolate": "interpolate between two images",
    "textdiff": "edit an image toward a caption change",
    "inpaint": "repaint the masked region of an image from a prompt",
    "img2img": "remake an image under a prompt (SDEdit, --strength)",
    "mix": "decode a weighted mix of images and prompts",
    "convert-karlo": "import Karlo (diffusers unCLIP layout) weights",
    "eval": "evaluate a model (CLIP score, FD, diversity, prior metrics)",
    "eval-prompts": "list the GenEval-style prompt sets `eval --prompts` scores",
    "eval-clip": "a CLIP's zero-shot accuracy on real images (colour, shape, count, ...)",
    "eval-ceilings": "classifiers trained on real images at each size: what a stage can carry",
    "eval-conditioning": "how much a decoder uses its caption and z_i (errors on real scenes)",
    "eval-editing": "measure inpainting, img2img, negative prompts and mixing on real renders",
    "bench": "benchmarks: pmap vs jit-sharded, vs PyTorch",
    "package": "export training runs (EMA, float16) into a model directory with a MANIFEST",
    "serve": "a local web demo (Gradio) of every command on one loaded model",
}


def command_module(name: str):
    """The module of command `name` (imported now)."""
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}")


def _setup_env() -> None:
    """Silence what a user cannot act on: TensorFlow (which only reads, resizes and degrades
    images here) logs through absl before any log setup, and its oneDNN notice is printed
    whatever TF_CPP_MIN_LOG_LEVEL says; without oneDNN's custom ops it has nothing to say.
    Both are defaults: a value set in the environment wins."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def build_parser(load: str | None = None) -> Parser:
    parser = Parser(prog="unclip-jax", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == load:
            command_module(name).add_arguments(p)
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
    try:
        return int(command_module(args.command).run(args) or 0)
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


"""`unclip-jax mix IMAGE_OR_PROMPT ... [--weights W ...]`: decode a weighted mix of images and
prompts (`UnCLIP.mix`), written as a grid with its JSON sidecar."""
from __future__ import annotations

from unclip_jax.cli import _sampling


def add_arguments(p) -> None:
    p.add_argument("items", nargs="+", metavar="IMAGE_OR_PROMPT",
                   help="image files and prompts (an argument naming a file or ending in "
                        ".png/.jpg/... is an image)")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one weight per input (default equal; divided by their sum)")
    _sampling.prior_arguments(p)
    _sampling.common_arguments(p, "mix")


def run(args) -> int:
    return _sampling.run_command(args, "mix")

"""`unclip-jax inpaint IMAGE PROMPT --mask MASK`: repaint the white region of the mask under
the prompt (RePaint; `UnCLIP.inpaint`), written as a grid with its JSON sidecar."""
from __future__ import annotations

from unclip_jax.cli import _sampling


def add_arguments(p) -> None:
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
    _sampling.negative_argument(p)
    _sampling.prior_arguments(p)
    _sampling.common_arguments(p, "inpaint")


def run(args) -> int:
    return _sampling.run_command(args, "inpaint")

"""`unclip-jax interpolate IMAGE_A IMAGE_B [-n 5] [--fixed-xT]`: frames between two images
(paper Fig. 4; `UnCLIP.interpolate`), written as a grid with its JSON sidecar."""
from __future__ import annotations

from unclip_jax.cli import _sampling


def add_arguments(p) -> None:
    p.add_argument("image_a")
    p.add_argument("image_b")
    p.add_argument("-n", type=int, default=5, help="frames")
    p.add_argument("--fixed-xT", dest="fixed_xT", action="store_true",
                   help="one x_T for every frame instead of slerping the inverted latents")
    _sampling.common_arguments(p, "interpolate")


def run(args) -> int:
    return _sampling.run_command(args, "interpolate")

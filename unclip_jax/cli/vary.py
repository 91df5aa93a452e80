"""`unclip-jax vary IMAGE ... [-n 4] [--eta 0.8]`: variations of images (paper Fig. 3;
`UnCLIP.variations`), written as a grid with its JSON sidecar."""
from __future__ import annotations

from unclip_jax.cli import _sampling


def add_arguments(p) -> None:
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("-n", type=int, default=4, help="variations per image")
    p.add_argument("--eta", type=float, default=0.8)
    _sampling.common_arguments(p, "vary")


def run(args) -> int:
    return _sampling.run_command(args, "vary")

"""`unclip-jax img2img IMAGE PROMPT [--strength 0.6]`: remake an image under a prompt (SDEdit;
`UnCLIP.img2img`), written as a grid with its JSON sidecar."""
from __future__ import annotations

from unclip_jax.cli import _sampling


def add_arguments(p) -> None:
    p.add_argument("image", help="image to start from")
    p.add_argument("prompt", help="caption of the image to make")
    p.add_argument("--strength", type=float, default=0.6,
                   help="how far to noise the image: 0 = unchanged, 1 = plain generation")
    _sampling.negative_argument(p)
    _sampling.prior_arguments(p)
    _sampling.common_arguments(p, "img2img")


def run(args) -> int:
    return _sampling.run_command(args, "img2img")

"""`unclip-jax textdiff IMAGE --from CAPTION --to CAPTION`: move an image toward a caption
change (paper Fig. 5; `UnCLIP.text_diff`), written as a grid with its JSON sidecar."""
from __future__ import annotations

from unclip_jax.cli import _sampling


def add_arguments(p) -> None:
    p.add_argument("image")
    p.add_argument("--from", dest="caption_from", required=True, help="caption of the image")
    p.add_argument("--to", dest="caption_to", required=True, help="caption to move toward")
    p.add_argument("-n", type=int, default=5, help="frames")
    p.add_argument("--max-angle", type=float, default=0.5)
    _sampling.common_arguments(p, "textdiff")


def run(args) -> int:
    return _sampling.run_command(args, "textdiff")

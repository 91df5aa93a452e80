"""`unclip-jax eval-ceilings`: the stage ceilings on real images (`unclip_jax.eval.ceilings`).

    unclip-jax eval-ceilings --data-dir DATA [--sizes 16,24,32,48,64] [--steps 1500] --out DIR

For each size S, an attribute classifier and an object-count classifier are trained on real
train images at S and scored on real validation images at S; writes DIR/ceiling_S.json and
the attribute classifier DIR/classifier_S (which `unclip-jax eval --classifier` reads). A
rerun skips the sizes whose JSON exists, so an interrupted run continues where it stopped.
"""
from __future__ import annotations

import os

from unclip_jax.cli.parser import whole_numbers


def add_arguments(parser) -> None:
    parser.add_argument("--data-dir", required=True,
                        help="TFDS data_dir of the unclip_shapes build")
    parser.add_argument("--dataset", default=None,
                        help="unclip_shapes/CONFIG (default: the only config built in data_dir)")
    parser.add_argument("--sizes", type=whole_numbers, default="16,24,32,48,64",
                        help="image sizes (pixels), comma-separated")
    parser.add_argument("--steps", type=int, default=1500,
                        help="training steps of each classifier")
    parser.add_argument("--out", required=True,
                        help="directory for ceiling_SIZE.json and classifier_SIZE/")


def run(args) -> int:
    import json

    from unclip_jax import atomic
    from unclip_jax.eval.ceilings import resolution_ceiling
    atomic.check_output_path(args.out, overwrite=True, is_dir=True)
    for size in args.sizes:
        path = os.path.join(args.out, f"ceiling_{size}.json")
        if os.path.exists(path):
            print(f"{path} exists: skipping size {size}")
            continue
        res = resolution_ceiling(args.data_dir, size, dataset=args.dataset, steps=args.steps,
                                 classifier_dir=os.path.join(args.out, f"classifier_{size}"))
        print(json.dumps(res), flush=True)
        atomic.write_json(path, res, indent=1)
    return 0

"""`unclip-jax data build shapes|folder`: build the TFDS datasets.

  unclip-jax data build shapes --data-dir DIR [--config medium|small|default]
  unclip-jax data build folder SRC --data-dir DIR [--image-size 256] [--min-size 64]
"""
from __future__ import annotations

import time


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="build a dataset")
    kinds = build.add_subparsers(dest="kind", metavar="DATASET", required=True)
    shapes = kinds.add_parser("shapes", help="the captioned-shapes dataset (no download)")
    shapes.add_argument("--data-dir", required=True)
    shapes.add_argument("--config", default="medium",
                        help="'medium' (20k train images: what the shapes presets train on), "
                             "'small' (384: the README quickstart) or 'default' (100k)")
    folder = kinds.add_parser("folder", help="image files + .txt captions, or a CSV/Parquet")
    folder.add_argument("source", help="directory, .csv or .parquet of path,caption")
    folder.add_argument("--data-dir", required=True)
    folder.add_argument("--image-size", type=int, default=256)
    folder.add_argument("--min-size", type=int, default=64)


def run(args) -> int:
    from unclip_jax import paths
    start = time.time()
    args.data_dir = paths.resolve(args.data_dir, "--data-dir")     # local or gs://
    if args.kind == "shapes":
        from unclip_jax.data import shapes
        builder = shapes.build(args.data_dir, args.config)
        sizes = {k: v.num_examples for k, v in builder.info.splits.items()}
        print(f"unclip_shapes/{args.config}: {sizes} in {builder.data_dir} "
              f"({time.time() - start:.1f} s)")
    else:
        from unclip_jax.data import folder
        folder.build(args.source, args.data_dir, image_size=args.image_size,
                     min_size=args.min_size)
        print(f"image_caption_folder built in {args.data_dir} ({time.time() - start:.1f} s)")
    return 0

"""`unclip-jax embed --data-dir DATA --out DIR [--clip MODEL/clip]`: precompute the CLIP
embeddings of a dataset (`unclip_jax.data.embed`)."""
from __future__ import annotations

import os


def add_arguments(parser) -> None:
    parser.add_argument("--clip", default=None,
                        help="CLIP inference checkpoint directory, e.g. MODEL/clip (its "
                             "tokenizer: CLIP/tokenizer or MODEL/tokenizer); default: the "
                             "bundled model's CLIP")
    parser.add_argument("--data-dir", required=True, help="TFDS data_dir holding the dataset")
    parser.add_argument("--dataset", default="unclip_shapes",
                        help="unclip_shapes[/CONFIG] or folder")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True, help="output directory for chunks + manifest")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=1024)


def run(args) -> int:
    from unclip_jax.data.embed import embed_dataset
    if args.clip is None:
        from unclip_jax.sample.loading import BUNDLED_MODEL
        args.clip = os.path.join(BUNDLED_MODEL, "clip")
    m = embed_dataset(args.clip, args.data_dir, args.out, dataset=args.dataset, split=args.split,
                      batch_size=args.batch_size, chunk_size=args.chunk_size)
    print(f"embedded {m['num_examples']} examples of {m['dataset']}:{m['split']} into {args.out}")
    return 0

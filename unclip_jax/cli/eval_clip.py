"""`unclip-jax eval-clip`: a CLIP's zero-shot accuracy on real images — colour, shape,
position, size, object count and colour–shape binding (`unclip_jax.eval.clip_zeroshot`).

    unclip-jax eval-clip --clip CLIP_DIR --data-dir DATA [--tokenizer DIR] [--limit N]
        [--out r.json]

Prints {probe: accuracy, probe_n: examples scored} as JSON (and writes it to --out).
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--clip", required=True, help="exported CLIP directory (stage clip)")
    parser.add_argument("--data-dir", required=True,
                        help="TFDS data_dir of the unclip_shapes build")
    parser.add_argument("--dataset", default=None,
                        help="unclip_shapes/CONFIG (default: the only config built in data_dir)")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer directory (default: the CLIP's tokenizer/ or its config's)")
    parser.add_argument("--limit", type=int, default=None,
                        help="score only the split's first N scenes (default: all)")
    parser.add_argument("--out", default=None, help="also write the result as JSON here")


def run(args) -> int:
    import json

    from unclip_jax import atomic
    from unclip_jax.eval.clip_zeroshot import zero_shot
    if args.out:
        atomic.check_output_path(args.out, overwrite=True)
    res = zero_shot(args.clip, args.data_dir, split=args.split, dataset=args.dataset,
                    tokenizer=args.tokenizer, limit=args.limit)
    print(json.dumps(res, indent=1))
    if args.out:
        atomic.write_json(args.out, res, indent=1)
    return 0

"""`unclip-jax convert-clip SRC DST`: a Hugging Face CLIP directory (transformers'
`CLIPModel.save_pretrained`) as an inference checkpoint (`unclip_jax.clip.convert`)."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("src", help="directory written by transformers' CLIPModel.save_pretrained")
    parser.add_argument("dst", help="output inference checkpoint directory")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a checkpoint already in DST")


def run(args) -> int:
    from unclip_jax.clip.convert import convert
    out = convert(args.src, args.dst, overwrite=args.overwrite)
    print(f"wrote CLIP checkpoint to {out}")
    return 0

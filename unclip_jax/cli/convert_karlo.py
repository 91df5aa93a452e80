"""`unclip-jax convert-karlo SRC DST`: Karlo (diffusers unCLIP layout) weights as a model
directory (`unclip_jax.karlo.convert`)."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("src", help="Karlo directory in the diffusers unCLIP layout (e.g. from "
                        "`hf download kakaobrain/karlo-v1-alpha --local-dir SRC`)")
    parser.add_argument("dst", help="output directory (clip/, tokenizer/, prior/, decoder/, "
                        "upsampler1/, upsampler2/)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace checkpoints already converted into DST")


def run(args) -> int:
    from unclip_jax.karlo.convert import convert_karlo
    out = convert_karlo(args.src, args.dst, overwrite=args.overwrite)
    for name, d in out.items():
        print(f"{name}: {d}")
    return 0

"""`unclip-jax package --out MODEL --stage prior=runs/prior ...`: export training runs (EMA,
float16) into a model directory with a MANIFEST (`unclip_jax.package`)."""
from __future__ import annotations

import os

from unclip_jax.package import BUNDLED, DTYPES, MANIFEST, PRIOR_DIRS, STAGES


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, metavar="OUT",
                        help="model directory to write (stages already there are kept)")
    parser.add_argument("--stage", action="append", default=[], metavar="STAGE=WORKDIR",
                        help=f"a stage ({', '.join(STAGES)}) and its training workdir; repeat")
    parser.add_argument("--tokenizer", default=None, metavar="DIR",
                        help="Hugging Face tokenizer directory, copied to OUT/tokenizer")
    parser.add_argument("--dtype", default="float16", choices=DTYPES,
                        help="storage dtype of the weights (loaded as float32)")
    parser.add_argument("--commit", default=None,
                        help="commit the runs were trained at (default: this checkout's HEAD)")
    parser.add_argument("--dataset", default=None, help="dataset name for the MANIFEST")
    parser.add_argument("--note", action="append", default=[], metavar="STAGE=TEXT",
                        help="a note stored in that stage's MANIFEST entry; repeat")
    parser.add_argument("--base", default=None, metavar="MODEL",
                        help=f"take the stages and tokenizer not given (and not already in OUT) "
                             f"from this model directory, or '{BUNDLED}' for the bundled model")
    parser.add_argument("--default-prior", default=None, choices=tuple(PRIOR_DIRS),
                        help="the prior `--prior auto` loads when the model has both (recorded "
                             "in the MANIFEST; default: kept from OUT, else the diffusion prior)")


def run(args) -> int:
    from unclip_jax.package import human_bytes, package_model, parse_pairs
    stages = parse_pairs(args.stage, "--stage", "WORKDIR")
    notes = parse_pairs(args.note, "--note", "TEXT")
    manifest = package_model(stages, args.out, tokenizer=args.tokenizer, dtype=args.dtype,
                             commit=args.commit, dataset=args.dataset, notes=notes,
                             base=args.base, default_prior=args.default_prior)
    for line in summary_lines(manifest, [n for n in STAGES if n in stages]):
        print(line)
    copied = [n for n in STAGES if manifest["stages"].get(n, {}).get("base") == args.base
              and n not in stages and args.base is not None]
    if copied:
        print(f"from {args.base}: {', '.join(copied)}")
    print(f"wrote {os.path.join(args.out, MANIFEST)} "
          f"({human_bytes(manifest['total_size_bytes'])} in all)")
    return 0


def summary_lines(manifest: dict, names) -> list[str]:
    """One line per stage: 'prior: 1200 steps, final loss 0.2305, 1.2 MiB'."""
    from unclip_jax.package import human_bytes
    lines = []
    for name in names:
        e = manifest["stages"][name]
        loss = "n/a" if e["final_loss"] is None else f"{e['final_loss']:.4g}"
        lines.append(f"{name}: {e['steps']} steps, final loss {loss}, "
                     f"{human_bytes(e['size_bytes'])}")
    return lines

"""`unclip-jax eval-prompts`: the GenEval-style prompt sets that `unclip-jax eval --prompts`
scores (`unclip_jax.eval.geneval_prompts`).

    unclip-jax eval-prompts [SETS]          # print each set's prompts (default: geneval)
    unclip-jax eval-prompts --rebuild DIR   # write the sets, re-derived by rule, as DIR/NAME.json

`--rebuild unclip_jax/eval/prompts` refreshes the bundled files.
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("sets", nargs="?", default="geneval",
                        help="geneval (the test sets: single_seen, single_heldout, two_object), "
                             "dev (dev_single_seen, dev_single_heldout, dev_two_object: for "
                             "choosing settings), a set name, a .json file, or a comma list")
    parser.add_argument("--rebuild", metavar="DIR", default=None,
                        help="write the sets built by rule into DIR instead of printing")


def run(args) -> int:
    from unclip_jax.eval import geneval_prompts
    if args.rebuild:
        for path in geneval_prompts.write_prompt_sets(args.rebuild):
            print(f"wrote {path}")
        return 0
    for name, entries in geneval_prompts.load_prompt_sets(args.sets).items():
        print(f"{name} ({len(entries)} prompts)")
        for e in entries:
            print(f"  {e['prompt']}")
    return 0

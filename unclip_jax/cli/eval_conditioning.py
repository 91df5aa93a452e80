"""`unclip-jax eval-conditioning`: how much a decoder uses its caption and z_i — its denoising
error on real scenes when the caption names another colour / shape / size / position, or when
the caption or z_i is dropped (`unclip_jax.eval.conditioning`).

    unclip-jax eval-conditioning --checkpoint MODEL --data-dir DATA [--limit 96] [--out r.json]

Prints a table (condition × whole image / object region: ε-MSE and the change from the full
conditioning) and writes the numbers as JSON to --out.
"""
from __future__ import annotations


from unclip_jax.cli.parser import whole_numbers


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="model directory with clip/, tokenizer/ and decoder/ "
                             "(default: the bundled model)")
    parser.add_argument("--data-dir", required=True,
                        help="TFDS data_dir of the unclip_shapes build")
    parser.add_argument("--dataset", default=None,
                        help="unclip_shapes/CONFIG (default: the only config built in data_dir)")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--limit", type=int, default=96,
                        help="single-object scenes to score")
    parser.add_argument("--timesteps", type=whole_numbers, default="100,300,500,700",
                        help="training timesteps to noise to, comma-separated")
    parser.add_argument("--seeds", type=int, default=2, help="noise draws per timestep")
    parser.add_argument("--out", default=None, help="also write the result as JSON here")


def table(res: dict) -> str:
    from unclip_jax.eval.conditioning import CONDITIONS
    lines = ["| condition | ε-MSE, image | change | ε-MSE, object region | change |",
             "|---|---|---|---|---|"]
    for c in CONDITIONS:
        im, ob = res["image"][c], res["object"][c]
        lines.append(f"| {c} | {im['eps_mse']:.5f} | {100 * im['relative']:+.1f}% | "
                     f"{ob['eps_mse']:.5f} | {100 * ob['relative']:+.1f}% |")
    return "\n".join(lines)


def run(args) -> int:
    from unclip_jax import atomic
    from unclip_jax.errors import UserError
    from unclip_jax.eval.conditioning import conditioning_usage
    if args.limit < 1 or args.seeds < 1:
        raise UserError(f"--limit {args.limit} and --seeds {args.seeds} must be at least 1")
    if args.out:
        atomic.check_output_path(args.out, overwrite=True)
    res = conditioning_usage(args.checkpoint, args.data_dir, split=args.split,
                             dataset=args.dataset, limit=args.limit, timesteps=args.timesteps,
                             seeds=args.seeds)
    print(f"{res['n']} scenes, timesteps {res['timesteps']}, {res['seeds']} noise draws each; "
          f"decoder {res['decoder']}")
    print(table(res))
    if args.out:
        atomic.write_json(args.out, res, indent=1)
    return 0

"""`unclip-jax demo [--out demo.png] [--steps 100]`: every sampler on a 2-D Gaussian mixture
with its exact ε-predictor, no weights needed (`unclip_jax.diffusion.demo`)."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="demo.png", help="PNG scatter plot to write")
    parser.add_argument("--steps", type=int, default=100, help="sampling steps (respaced)")
    parser.add_argument("--num-samples", type=int, default=2000, help="samples per sampler")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from unclip_jax.diffusion.demo import run_all
    run_all(args.out, args.steps, args.num_samples, args.seed)
    return 0

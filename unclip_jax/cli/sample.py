"""`unclip-jax sample PROMPT ... [--from-sidecar FILE.json]`: text → images, written as a grid
with its JSON sidecar (`unclip_jax.cli._sampling`; the chain is `UnCLIP.generate`)."""
from __future__ import annotations

import os

from unclip_jax.cli import _sampling

# what `sample` takes by default; with --from-sidecar any other value would be ignored
SIDECAR_CONFLICTS = (("prompts", "PROMPTS", []), ("checkpoint", "--checkpoint", None),
                     ("seed", "--seed", 0), ("num_images_per_prompt", "-n", 1),
                     ("prior_steps", "--prior-steps", None),
                     ("prior_guidance", "--prior-guidance", None),
                     ("prior_best_of", "--prior-best-of", None), ("eta", "--eta", 0.0),
                     ("negative", "--negative", None),
                     ("prior", "--prior", "auto"), ("cols", "--cols", None),
                     ("decoder_steps", "--decoder-steps", None),
                     ("decoder_guidance", "--decoder-guidance", None),
                     ("upsampler_steps", "--upsampler-steps", None))


def add_arguments(p) -> None:
    p.add_argument("prompts", nargs="*", help="text prompts")
    p.add_argument("--from-sidecar", metavar="FILE.json",
                   help="redo the command recorded in a sidecar (prompts, seed, settings)")
    p.add_argument("-n", "--num-images-per-prompt", type=int, default=1)
    p.add_argument("--prior-steps", default=None)
    p.add_argument("--prior-guidance", type=float, default=None)
    p.add_argument("--prior-best-of", type=int, default=None,
                   help="prior candidates per image (default: the prior config's "
                   "model.sample_candidates)")
    p.add_argument("--eta", type=float, default=0.0)
    _sampling.negative_argument(p)
    p.add_argument("--prior", choices=("auto", "diffusion", "ar", "text"), default="auto",
                   help="where z_i comes from: the diffusion prior (prior/), the AR prior "
                        "(ar_prior/), auto (the model's default: its MANIFEST's default_prior, "
                        "else the diffusion prior if it has one), or text "
                        "(no prior: the caption's CLIP text embedding, the paper's zero-shot "
                        "baseline)")
    _sampling.common_arguments(p, "sample")


def check_sidecar_alone(args) -> None:
    """UserError when --from-sidecar comes with a setting it would ignore."""
    from unclip_jax.errors import UserError
    given = [flag for attr, flag, default in SIDECAR_CONFLICTS
             if getattr(args, attr, default) != default]
    if given:
        raise UserError(f"--from-sidecar redoes the recorded command with its own settings; "
                        f"drop {', '.join(given)} (or run without --from-sidecar to change "
                        "them)")


def run(args) -> int:
    if not args.from_sidecar:
        return _sampling.run_command(args, "sample")
    from unclip_jax.sample.records import regenerate
    from unclip_jax.sample.sidecars import sidecar_path
    check_sidecar_alone(args)
    out = None if args.out == os.path.join("samples", "sample.png") else args.out
    out = regenerate(args.from_sidecar, out, progress=not args.no_progress,
                     compile_cache=not args.no_compile_cache, overwrite=args.overwrite)
    print(f"wrote {out} and {sidecar_path(out)} (redone from {args.from_sidecar})")
    return 0

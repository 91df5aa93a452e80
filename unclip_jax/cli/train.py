"""`unclip-jax train --config shapes:decoder --workdir runs/decoder
[--config.train.batch_size=8 ...] [--export DIR]`: train one stage from a config
(`unclip_jax.cli.config_args`: presets by name, files by path, typed overrides)."""
from __future__ import annotations

from unclip_jax.cli import config_args


def add_arguments(parser) -> None:
    config_args.add_arguments(parser)
    parser.add_argument("--workdir", required=True,
                        help="run directory (checkpoints, metrics, samples), local or gs://; "
                             "resumes if it exists")
    parser.add_argument("--export", default=None, metavar="DIR",
                        help="after training, write the EMA params in the inference format")
    parser.add_argument("--overwrite", action="store_true",
                        help="let --export replace an existing export in DIR")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after this many steps in this invocation (resume later)")


def run(args) -> int:
    config = config_args.load(args)
    from unclip_jax import paths
    args.workdir = paths.resolve(args.workdir, "--workdir")     # one rule: unclip_jax.paths
    if args.export:
        args.export = paths.resolve(args.export, "--export")
    from unclip_jax.distributed import initialize_from_env
    initialize_from_env()          # multi-host jobs: before any JAX backend use
    import jax
    from unclip_jax import export
    from unclip_jax.train.loop import export_from_workdir, train
    if args.export:
        export.check_destination(args.export, args.overwrite)      # before training
    out = train(config, args.workdir, max_steps=args.max_steps)
    if args.export and jax.process_index() == 0 and not out["preempted"]:
        export_from_workdir(args.workdir, args.export, overwrite=args.overwrite)
    m = out["metrics"]
    if jax.process_index() == 0:
        print(f"step {out['step']}: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(m.items())))
    return 0

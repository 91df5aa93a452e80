"""`unclip-jax train --config shapes:decoder --workdir runs/decoder
[--config.train.batch_size=8 ...] [--export DIR]`.

`--config NAME[:ARG]` loads `get_config(ARG)` of the preset NAME (shapes, paper, karlo) from
any directory, `--config FILE.py[:ARG]` from a file (`unclip_jax.presets`). Each
`--config.a.b=VALUE` sets one key of the locked config; the value is parsed as a Python
literal and must have the type of the key it replaces (ints are accepted for floats). A key
that does not exist is an error naming it.
"""
from __future__ import annotations

import argparse
import ast
import difflib

import ml_collections as mlc

from unclip_jax.errors import UserError
from unclip_jax.presets import load_config  # noqa: F401  (the CLI's config loader)

OVERRIDE_PREFIX = "--config."


def _parse_value(key: str, text: str, old):
    if isinstance(old, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if isinstance(old, bool) and text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise UserError(f"--config.{key}={text}: not a valid {type(old).__name__} literal")
    if isinstance(old, bool):
        if not isinstance(value, bool):
            raise UserError(f"--config.{key}={text}: expected True or False")
        return value
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(old, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(old)(value)
    if old is not None and not isinstance(value, type(old)):
        raise UserError(f"--config.{key}={text}: expected {type(old).__name__}, got "
                        f"{type(value).__name__}")
    return value


def apply_overrides(config: mlc.ConfigDict, overrides: list[str]) -> mlc.ConfigDict:
    """Apply 'a.b=value' strings to `config` (in place; it stays locked) and return it."""
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq:
            raise UserError(f"--config.{item}: write --config.{item}=VALUE")
        node, parts = config, key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, mlc.ConfigDict) or part not in node:
                where = ".".join(parts[:i]) or "config"
                known = sorted(node.keys()) if isinstance(node, mlc.ConfigDict) else []
                close = difflib.get_close_matches(part, known, n=1)
                hint = f"; did you mean {'.'.join(parts[:i] + close[:1])!r}?" if close else \
                    f"; {where} has keys {known}"
                raise UserError(f"unknown config key {key!r}: {part!r} is not in {where}{hint}")
            if i < len(parts) - 1:
                node = node[part]
        node[parts[-1]] = _parse_value(key, text, node[parts[-1]])
    return config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True,
                        help="preset and variant, e.g. shapes:decoder (presets: shapes, paper, karlo), "
                             "or a config FILE.py[:ARG]")
    parser.add_argument("--workdir", required=True,
                        help="run directory (checkpoints, metrics, samples), local or gs://; "
                             "resumes if it exists")
    parser.add_argument("--export", default=None, metavar="DIR",
                        help="after training, write the EMA params in the inference format")
    parser.add_argument("--overwrite", action="store_true",
                        help="let --export replace an existing export in DIR")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after this many steps in this invocation (resume later)")
    add_config_overrides(parser)


def add_config_overrides(parser: argparse.ArgumentParser) -> None:
    """Make `parser` collect `--config.a.b=VALUE` (or `--config.a.b VALUE`) items into
    `args.config_overrides` (strings 'a.b=VALUE' for `apply_overrides`)."""
    parser.set_defaults(config_overrides=[])
    # `--config.a.b=v` keys are open-ended: collect them before argparse sees them.
    plain_parse = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        args = list(args or [])
        overrides, rest, i = [], [], 0
        while i < len(args):
            a = args[i]
            if a.startswith(OVERRIDE_PREFIX):
                body = a[len(OVERRIDE_PREFIX):]
                if "=" not in body and i + 1 < len(args):
                    body, i = f"{body}={args[i + 1]}", i + 1
                overrides.append(body)
            else:
                rest.append(a)
            i += 1
        ns, extra = plain_parse(rest, namespace)
        ns.config_overrides = list(getattr(ns, "config_overrides", []) or []) + overrides
        return ns, extra

    parser.parse_known_args = parse_known_args


def run(args) -> int:
    config = apply_overrides(load_config(args.config), args.config_overrides)
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

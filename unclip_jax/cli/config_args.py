"""Config loading for the command line, in one place: `--config NAME[:ARG]` and
`--config.a.b=VALUE` overrides.

    parser = Parser(); config_args.add_arguments(parser)   # --config (and its overrides)
    config = config_args.load(parser.parse_args(argv))      # locked ml_collections.ConfigDict

`load_config('shapes:decoder')` loads a preset by name, `load_config('path/to/my.py:arg')` a
file. A preset is a module of `unclip_jax.configs` (the repository's configs/ folder, installed
inside the package) with `get_config(arg)` returning a locked `ml_collections.ConfigDict`.
A spec whose part before ':' is an existing file is loaded from that file (so
`configs/shapes.py:decoder` still works in a checkout); otherwise it names a preset. `~` and
environment variables in a file path are expanded.

Each `--config.a.b=VALUE` (or `--config.a.b VALUE`) sets one key of the locked config; the
value is parsed as a Python literal and must have the type of the key it replaces (ints are
accepted for floats, `true`/`false` for bools, any text for strings). A key that does not
exist is an error naming it and the closest key. (ml_collections' own `config_flags` does the
same for absl flags, but it binds one global flag set and loads files by path only; the
commands here are argparse subcommands and presets resolve by name.)
"""
from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import os
import pkgutil

import ml_collections as mlc

from unclip_jax.errors import UserError

OVERRIDE_PREFIX = "--config."
PACKAGE = "unclip_jax.configs"


def preset_names() -> list[str]:
    """Names `load_config('NAME[:ARG]')` accepts (modules of unclip_jax.configs)."""
    package = importlib.import_module(PACKAGE)
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__))


def _module_from_file(path: str):
    name = "_unclip_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load_config(spec: str) -> mlc.ConfigDict:
    """'NAME[:arg]' (a preset) or 'path/to/file.py[:arg]' → `get_config(arg)` (locked).

    Raises UserError for a file that does not exist, an unknown preset name, a file without
    `get_config`, or an unknown variant `arg`.
    """
    where, _, arg = spec.partition(":")
    path = os.path.expandvars(os.path.expanduser(where))
    if os.path.isfile(path):
        module = _module_from_file(path)
    elif where in preset_names():
        module = importlib.import_module(f"{PACKAGE}.{where}")
    elif where.isidentifier():
        raise UserError(f"no preset named {where!r}; presets: {', '.join(preset_names())} "
                        "(e.g. --config shapes:decoder), or pass a config FILE.py[:ARG]")
    else:
        raise UserError(f"config file {where!r} not found; pass a preset by name (e.g. "
                        "--config shapes:decoder) or an existing FILE.py[:ARG]")
    if not hasattr(module, "get_config"):
        raise UserError(f"{where} has no get_config(arg) function")
    return module.get_config(arg or None)


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


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(['a.b=VALUE', ...], the other arguments) of a command line: `--config.a.b=VALUE` and
    `--config.a.b VALUE` items taken out, in order."""
    overrides, rest, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith(OVERRIDE_PREFIX):
            body = a[len(OVERRIDE_PREFIX):]
            if "=" not in body and i + 1 < len(argv):
                body, i = f"{body}={argv[i + 1]}", i + 1
            overrides.append(body)
        else:
            rest.append(a)
        i += 1
    return overrides, rest


def add_arguments(parser, *, required: bool = True, repeat: bool = False,
                  help: str | None = None) -> None:
    """`--config NAME[:ARG]|FILE.py[:ARG]` (repeatable with `repeat`) and the collection of
    `--config.a.b=VALUE` items into `args.config_overrides` (by `unclip_jax.cli.parser.Parser`)."""
    parser.add_argument(
        "--config", required=required, action="append" if repeat else "store",
        default=None, help=help or "preset and variant, e.g. shapes:decoder (presets: "
        "shapes, paper, karlo), or a config FILE.py[:ARG]; then --config.KEY=VALUE overrides")
    parser.set_defaults(config_overrides=[])


def load(args, spec: str | None = None) -> mlc.ConfigDict:
    """The config `args.config` (or `spec`) names, with `args.config_overrides` applied."""
    return apply_overrides(load_config(spec or args.config), args.config_overrides)

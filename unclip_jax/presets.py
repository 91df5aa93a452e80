"""Config presets by name or by file: `load_config('shapes:decoder')`,
`load_config('path/to/my.py:arg')`.

A preset is a module of `unclip_jax.configs` (the repository's configs/ folder, installed
inside the package) with `get_config(arg)` returning a locked `ml_collections.ConfigDict`.
A spec whose part before ':' is an existing file is loaded from that file (so
`configs/shapes.py:decoder` still works in a checkout); otherwise it names a preset. `~` and
environment variables in a file path are expanded.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil

import ml_collections as mlc

from unclip_jax.errors import UserError

PACKAGE = "unclip_jax.configs"
NOT_PRESETS = ("common",)          # shared pieces of the presets, no get_config


def preset_names() -> list[str]:
    """Names `load_config('NAME[:ARG]')` accepts (modules of unclip_jax.configs)."""
    package = importlib.import_module(PACKAGE)
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__)
                  if m.name not in NOT_PRESETS)


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

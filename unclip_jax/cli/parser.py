"""The argparse parser every `unclip-jax` command is built on.

- One flag style: options are spelled with dashes (`--data-dir`); the underscore spelling
  (`--data_dir`) of an option is accepted as an alias, so older scripts keep working.
- `--help` shows each option's default (when it has one other than None/False).
- A parser that declared `--config` (`unclip_jax.cli.config_args.add_arguments`) collects
  `--config.a.b=VALUE` (or `--config.a.b VALUE`) items into `args.config_overrides`.
"""
from __future__ import annotations

import argparse
import copy

from unclip_jax.cli import config_args


def shows_default(action: argparse.Action) -> bool:
    """Whether `--help` names this option's default (not for flags, positionals, None; 0 is
    shown)."""
    default = action.default     # identity for None/False: a default of 0 is shown
    return (bool(action.option_strings) and action.nargs != 0
            and default is not None and default is not False
            and default != argparse.SUPPRESS and default != []
            and "%(default)" not in (action.help or ""))


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written; appends '(default: X)' to an option's help."""

    def _format_action(self, action):
        if not (action.help or "").strip() and shows_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action):
        text = action.help or ""
        return f"{text} (default: %(default)s)" if shows_default(action) else text


def dashed(arg: str) -> str:
    """'--data_dir=x' → '--data-dir=x'; anything not a long option is returned unchanged."""
    if not arg.startswith("--") or arg.startswith(config_args.OVERRIDE_PREFIX):
        return arg
    name, eq, value = arg.partition("=")
    return "--" + name[2:].replace("_", "-") + eq + value


class Parser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` with the conventions above (subparsers are Parsers too)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        args = list(args or [])
        if self.get_default("config_overrides") is not None:
            overrides, args = config_args.split_overrides(args)
        else:
            overrides = []
        args = [self._known_spelling(a) for a in args]
        ns, extra = super().parse_known_args(args, namespace)
        if overrides:
            ns.config_overrides = list(getattr(ns, "config_overrides", None) or []) + overrides
        return ns, extra

    def _known_spelling(self, arg: str) -> str:
        """The dashed spelling of `arg` when only that one is an option of this parser."""
        name = arg.partition("=")[0]
        if name in self._option_string_actions:
            return arg
        fixed = dashed(arg)
        return fixed if fixed.partition("=")[0] in self._option_string_actions else arg


def whole_numbers(text: str) -> list[int]:
    """argparse type of a comma list of whole numbers ≥ 1 ('16,24,32' → [16, 24, 32])."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items or not all(t.isdigit() and int(t) >= 1 for t in items):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of whole numbers ≥ 1, "
                                         "e.g. 16,24,32")
    return [int(t) for t in items]

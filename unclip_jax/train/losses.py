"""Per-stage losses and the built-in stage registry entries."""
from __future__ import annotations


def builtin_stages():
    return []

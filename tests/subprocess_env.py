"""Environments for the child processes a test starts as a user would run them.

conftest.py gives this suite 8 simulated CPU devices (`--xla_force_host_platform_device_count`
in XLA_FLAGS). A child that stands for a user's command (a server, a regenerating CLI, a docs
page run as a script) runs on one device instead: XLA's CPU runtime on several simulated host
devices is not bit-reproducible from run to run.
"""
from __future__ import annotations

import os


def without_simulated_devices(xla_flags: str) -> str:
    """XLA_FLAGS without --xla_force_host_platform_device_count (one CPU device)."""
    return " ".join(f for f in xla_flags.split()
                    if not f.startswith("--xla_force_host_platform_device_count"))


def one_device_env(**overrides) -> dict:
    """os.environ with one CPU device (the suite's simulated devices dropped), plus
    `overrides`."""
    env = dict(os.environ, **overrides)
    env["XLA_FLAGS"] = without_simulated_devices(env.get("XLA_FLAGS", ""))
    return env

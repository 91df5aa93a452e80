"""Process-wide JAX/XLA settings that unclip-jax applies for its users.

Two things, both measured in docs/benchmarks.md ("CPU speed"):

* `apply_xla_cpu_defaults()` — XLA CPU flags that make the UNets faster on a CPU. In
  jaxlib 0.10 XLA hands every convolution to its YNNPACK fusion by default; for the 3×3
  convolutions of an ADM UNet (forward and both gradients) XLA's own Eigen convolution is
  1.7–1.8× faster on an x86 CPU (16×32×32×64, 3×3 → 64: 13.0 → 7.2 ms forward, 40.6 → 23.6 ms
  forward + both gradients on 2 cores), so `individual_convolution` is taken out of the YNN
  fusion set; the other YNN fusions (elementwise, reductions, dots) stay. The flag only affects
  XLA's CPU backend — GPU and TPU programs compile exactly as before. It is set through
  `XLA_FLAGS`, which XLA reads once when JAX starts its backends, so it takes effect when
  `unclip_jax` is imported before the first JAX computation (the CLI always is). It is
  applied only for the jaxlib versions it was measured on (`_YNN_CONV_FLAG_VERSIONS`): an
  unknown flag in XLA_FLAGS aborts the process, and other versions may not have it. Set
  `UNCLIP_JAX_XLA_DEFAULTS=0` to leave XLA_FLAGS alone; an explicit
  `--xla_cpu_experimental_ynn_fusion_type=...` in XLA_FLAGS always wins.

* `enable_compilation_cache()` — JAX's persistent compilation cache in a user cache
  directory, so the second `unclip-jax sample` does not recompile its programs. Directory:
  `$UNCLIP_JAX_CACHE_DIR`, else `$XDG_CACHE_HOME/unclip-jax/xla`, else
  `~/.cache/unclip-jax/xla`; `UNCLIP_JAX_CACHE_DIR=off` (or the CLI's `--no-compile-cache`,
  or `UnCLIP(..., compile_cache=False)`) turns it off.
"""
from __future__ import annotations

import importlib.metadata
import os
import sys

YNN_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
_YNN_CONV_FLAG_VERSIONS = ((0, 10), (0, 11))     # [low, high) jaxlib (major, minor)
OFF_VALUES = ("0", "off", "false", "no", "")


def _jaxlib_version() -> tuple[int, int] | None:
    try:
        parts = importlib.metadata.version("jaxlib").split(".")
        return int(parts[0]), int(parts[1])
    except (importlib.metadata.PackageNotFoundError, ValueError, IndexError):
        return None


def _backends_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return True          # cannot tell: do not touch XLA_FLAGS


def xla_cpu_flags(version: tuple[int, int] | None) -> list[str]:
    """The CPU flags unclip-jax adds for jaxlib `version` (major, minor); [] when untested."""
    low, high = _YNN_CONV_FLAG_VERSIONS
    if version is not None and low <= version < high:
        return [YNN_CONV_FLAG]
    return []


def merged_xla_flags(current: str, extra: list[str]) -> str:
    """`current` XLA_FLAGS plus each of `extra` whose flag name is not set in it already."""
    flags = current.split()
    names = {f.split("=", 1)[0] for f in flags}
    flags += [f for f in extra if f.split("=", 1)[0] not in names]
    return " ".join(flags)


def apply_xla_cpu_defaults() -> bool:
    """Add `xla_cpu_flags()` to XLA_FLAGS unless disabled, already set, or too late (the JAX
    backends already started). Returns whether XLA_FLAGS now carries them."""
    if os.environ.get("UNCLIP_JAX_XLA_DEFAULTS", "1").strip().lower() in OFF_VALUES:
        return False
    extra = xla_cpu_flags(_jaxlib_version())
    if not extra or _backends_started():
        return False
    os.environ["XLA_FLAGS"] = merged_xla_flags(os.environ.get("XLA_FLAGS", ""), extra)
    return True


def cache_directory() -> str | None:
    """Where the persistent compilation cache lives; None when turned off."""
    env = os.environ.get("UNCLIP_JAX_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in OFF_VALUES else os.path.expanduser(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "unclip-jax", "xla")


def enable_compilation_cache(directory: str | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache in `directory` (default `cache_directory()`).

    Programs that took at least 0.5 s to compile are stored. Returns the directory, or None
    when the cache is turned off or the directory cannot be created (the cache is an
    optimisation; sampling goes on without it). A directory set earlier in the process (by the
    user or a previous call) is kept.
    """
    import jax
    directory = directory or cache_directory()
    if directory is None:
        return None
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory

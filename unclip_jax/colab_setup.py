"""Setting up a notebook runtime (Colab) for unclip-jax: its requirements without fighting a
preinstalled TensorFlow, and the JAX build that the hardware can use.

    pip install --no-deps "unclip-jax @ SOURCE"      # the notebook's install cell does this,
    python -m unclip_jax.colab_setup --deps           # then this; without --deps only JAX

Why:
- `tensorflow` and `tensorflow-cpu` are two distributions that write the same `tensorflow`
  package. Colab preinstalls `tensorflow`; this package requires `tensorflow-cpu` on x86-64
  (a plain `pip install` would put one over the other). `--deps` installs the requirements
  except TensorFlow when either distribution is already there (any TF ≥ 2.16 serves).
- pip can upgrade `jax` while leaving the CUDA plugin or libtpu of the old one behind; JAX then
  silently runs on the CPU. This module asks a fresh interpreter which backend JAX gets, installs
  `jax[cuda12]` or `jax[tpu]` when a GPU or TPU is present but JAX does not use it, asks again
  and says loudly if JAX still ended up on the CPU.

Only the standard library: it runs before the package's requirements are installed.
"""
from __future__ import annotations

import argparse
import glob
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys

TENSORFLOW = ("tensorflow", "tensorflow-cpu")
JAX_FOR = {"gpu": "jax[cuda12]", "tpu": "jax[tpu]"}       # hardware → the pip requirement


def detect_hardware(env=None, glob_fn=glob.glob, which=shutil.which) -> str:
    """'tpu', 'gpu' or 'cpu': the accelerator this machine has, without importing JAX.

    TPU: Colab's TPU runtimes set COLAB_TPU_ADDR or TPU_ACCELERATOR_TYPE, or expose
    /dev/accel* (TPU VMs) or /dev/vfio/[0-9]*. GPU: an NVIDIA driver (/proc/driver/nvidia or
    nvidia-smi on PATH)."""
    env = os.environ if env is None else env
    if (env.get("COLAB_TPU_ADDR") or env.get("TPU_ACCELERATOR_TYPE") or glob_fn("/dev/accel*")
            or glob_fn("/dev/vfio/[0-9]*")):
        return "tpu"
    if glob_fn("/proc/driver/nvidia/gpus/*") or which("nvidia-smi"):
        return "gpu"
    return "cpu"


def jax_backend(python: str = sys.executable) -> str | None:
    """The backend JAX gets in a fresh interpreter ('cpu', 'gpu', 'tpu'), or None when JAX is
    not installed or does not import. A fresh process: this kernel may not have imported JAX
    yet, and after a reinstall it must not use a stale one."""
    try:
        out = subprocess.run([python, "-c", "import jax; print(jax.default_backend())"],
                             capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.split()
    return lines[-1] if out.returncode == 0 and lines else None


def jax_requirement(hardware: str, backend: str | None) -> str | None:
    """What to pip install so that JAX uses `hardware`, given the `backend` it has now
    (None: JAX missing or broken); None when JAX is fine as it is."""
    if backend == hardware or (hardware == "cpu" and backend is not None):
        return None
    return JAX_FOR.get(hardware, "jax")


def backend_warning(hardware: str, backend: str | None) -> str | None:
    """A loud message when the machine has a GPU/TPU but JAX runs on something else."""
    if hardware == "cpu" or backend == hardware:
        return None
    return (f"WARNING: this runtime has a {hardware.upper()} but JAX runs on "
            f"{(backend or 'nothing (jax does not import)').upper()}: everything will be slow. "
            f"Try `pip install -U \"{JAX_FOR[hardware]}\"` and restart the runtime "
            "(Runtime → Restart session).")


def requirements(dist: str = "unclip-jax", installed=None) -> list[str]:
    """The runtime requirements of `dist` as pip arguments, without extras' requirements and
    without TensorFlow when a TensorFlow distribution is already installed."""
    installed = installed if installed is not None else _installed
    have_tf = any(installed(name) for name in TENSORFLOW)
    out = []
    for req in md.requires(dist) or []:
        if re.search(r"\bextra\s*==", req):
            continue
        name = re.match(r"[A-Za-z0-9_.\-]+", req).group(0).lower().replace("_", "-")
        if have_tf and name in TENSORFLOW:
            continue
        out.append(req)
    return out


def _installed(name: str) -> bool:
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


def _pip(*args: str) -> None:
    print("pip install", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m unclip_jax.colab_setup", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--deps", action="store_true",
                   help="install unclip-jax's requirements (after `pip install --no-deps`)")
    args = p.parse_args(argv)
    if args.deps:
        if any(_installed(n) for n in TENSORFLOW):
            print("keeping the installed TensorFlow", flush=True)
        _pip(*requirements())
    hardware = detect_hardware()
    backend = jax_backend()
    need = jax_requirement(hardware, backend)
    if need:
        print(f"{hardware} runtime, JAX backend {backend}: installing {need}", flush=True)
        _pip("-U", need)
        backend = jax_backend()
    print(f"hardware: {hardware} | JAX backend: {backend}", flush=True)
    warning = backend_warning(hardware, backend)
    if warning:
        print("\n" + "!" * 78 + "\n" + warning + "\n" + "!" * 78, file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

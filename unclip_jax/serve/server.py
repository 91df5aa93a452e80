"""Running `unclip-jax serve`: its port and host defaults and checks, the Gradio import
check, and `running` — the server in a child process on a free port (for scripts and tests).
"""
from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request

from unclip_jax.errors import UserError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def check_port(port: int) -> int:
    if not 0 <= int(port) <= 65535:
        raise UserError(f"--port {port}: a port is a number from 0 to 65535 (0: any free one)")
    return int(port)


def require_gradio():
    try:
        import gradio
    except ImportError:
        raise UserError("`unclip-jax serve` needs Gradio; install the demo extra: "
                        "pip install -e \".[demo]\"") from None
    return gradio


# ---------------------------------------------------------------------- a server process

def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nothing listens on now (the OS's choice)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(extra_args=(), *, env=None, cwd=None, log=None, timeout: float = 300):
    """`unclip-jax serve` in a child process on a free port of 127.0.0.1 (for scripts and
    tests): yields (process, url) once the page answers, and stops the process on exit.
    extra_args: more `serve` arguments (e.g. ['--checkpoint', DIR]); log: a file object for
    the server's output (default: discarded)."""
    port = free_port()
    url = f"http://{DEFAULT_HOST}:{port}/"
    proc = subprocess.Popen([sys.executable, "-m", "unclip_jax.cli", "serve", "--port",
                             str(port), *extra_args], cwd=cwd, env=env,
                            stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        end = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"unclip-jax serve exited with status {proc.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                if time.time() > end:
                    raise RuntimeError(f"unclip-jax serve did not answer at {url} within "
                                       f"{timeout:.0f} s") from None
                time.sleep(1)
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

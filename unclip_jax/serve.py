"""`unclip-jax serve`: a local web demo of every command on one loaded model (Gradio).

    pip install -e ".[demo]"
    unclip-jax serve [--checkpoint DIR] [--host 127.0.0.1] [--port 7860]

Loads the model once (the bundled shapes model unless --checkpoint DIR), then serves tabs
for generate, variations, interpolation, text diff, inpaint (a mask drawn on the image),
image to image and mixing (`unclip_jax.serve_app`). Requests
are queued and run one at a time; each result offers its grid PNG and the JSON sidecar that
`unclip-jax sample --from-sidecar` regenerates it from. Listens on 127.0.0.1 (this machine
only) unless --host says otherwise.
"""
from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
import time
import urllib.request

from unclip_jax.errors import UserError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="model directory (clip/, tokenizer/, prior/ and/or "
                   "ar_prior/, decoder/, upsampler1/, upsampler2/); default: the bundled model")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to listen on (default 127.0.0.1: this machine only; "
                        "0.0.0.0 serves every network this machine is on)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--queue-size", type=int, default=64,
                   help="requests that may wait in the queue (more are turned away)")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not keep compiled programs in the persistent cache")


def check_port(port: int) -> int:
    if not 0 <= int(port) <= 65535:
        raise UserError(f"--port {port}: a port is a number from 0 to 65535 (0: any free one)")
    return int(port)


def _gradio():
    try:
        import gradio
    except ImportError:
        raise UserError("`unclip-jax serve` needs Gradio; install the demo extra: "
                        "pip install -e \".[demo]\"") from None
    return gradio


def run(args) -> int:
    check_port(args.port)
    if args.queue_size < 1:
        raise UserError(f"--queue-size {args.queue_size}: at least 1 request must fit")
    _gradio()
    from unclip_jax import serve_app
    from unclip_jax.serve_session import Session

    session = Session(args.checkpoint, compile_cache=not args.no_compile_cache)
    try:
        app = serve_app.build(session)
        app.queue(max_size=args.queue_size, default_concurrency_limit=1)
        print(f"unclip-jax serve: {session.describe()}", flush=True)
        # run_history=False: no run history page (it offers to upload runs to a remote bucket)
        app.launch(server_name=args.host, server_port=args.port, share=False,
                   inbrowser=False, show_error=False, quiet=False, ssr_mode=False,
                   run_history=False)
    finally:
        session.close()
    return 0


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

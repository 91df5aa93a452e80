"""`unclip-jax serve [--checkpoint DIR] [--host 127.0.0.1] [--port 7860]`: a local web demo
of every command on one loaded model (`unclip_jax.serve`)."""
from __future__ import annotations

from unclip_jax.errors import UserError
from unclip_jax.serve.server import DEFAULT_HOST, DEFAULT_PORT


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", help="model directory (clip/, tokenizer/, prior/ and/or "
                   "ar_prior/, decoder/, upsampler1/, upsampler2/); default: the bundled model")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to listen on (127.0.0.1: this machine only; "
                        "0.0.0.0 serves every network this machine is on)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--queue-size", type=int, default=64,
                   help="requests that may wait in the queue (more are turned away)")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not keep compiled programs in the persistent cache")


def run(args) -> int:
    from unclip_jax.serve.server import check_port, require_gradio
    check_port(args.port)
    if args.queue_size < 1:
        raise UserError(f"--queue-size {args.queue_size}: at least 1 request must fit")
    require_gradio()
    from unclip_jax.serve import app as serve_app
    from unclip_jax.serve.session import Session

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

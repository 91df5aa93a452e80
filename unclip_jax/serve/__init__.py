"""`unclip-jax serve`: a local web demo of every command on one loaded model (Gradio).

    pip install -e ".[demo]"
    unclip-jax serve [--checkpoint DIR] [--host 127.0.0.1] [--port 7860]

Loads the model once (the bundled shapes model unless --checkpoint DIR), then serves tabs
for generate, variations, interpolation, text diff, inpaint (a mask drawn on the image),
image to image and mixing (`app.py`). Requests are queued and run one at a time; each
result offers its grid PNG and the JSON sidecar that `unclip-jax sample --from-sidecar`
regenerates it from. Listens on 127.0.0.1 (this machine only) unless --host says otherwise.

The package (the face layer: it may import anything, nothing in the library imports it):
  server.py   defaults, checks and `running` (the server as a child process)
  session.py  `Session`: the loaded model, form values → CLI commands (no Gradio)
  app.py      the Gradio page: one tab per command, each calling `Session`
The command itself is `unclip_jax.cli.serve`.
"""

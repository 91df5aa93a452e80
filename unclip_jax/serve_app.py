"""The Gradio page of `unclip-jax serve`: one tab per command, each calling `Session`.

Layout only: every tab's button calls one `Session` method (which runs the CLI command it
stands for) and shows the grid, the files to download (grid PNG, its JSON sidecar, the
uploaded inputs) and one status line — the result's size and time, or the CLI's one-line
`unclip-jax: error: ...` message for bad input. Every event shares one queue slot
(`concurrency_id="model"`, limit 1), so requests run one after another on the device.
Progress: the pipeline's per-stage tqdm bar, tracked by `gr.Progress(track_tqdm=True)`.
"""
from __future__ import annotations

import logging
import traceback

import gradio as gr

from unclip_jax import cli
from unclip_jax.serve_session import Session

log = logging.getLogger("unclip_jax.serve")

STEPS_HELP = "empty: the model's default; e.g. 25 or ddim25"


def respond(run):
    """Call `run()` → (grid, files, status) for a tab's outputs. A user mistake shows the
    CLI's one-line message; any other error shows its type and goes to the server log. The
    server keeps running either way."""
    try:
        result = run()
    except Exception as e:                      # noqa: BLE001 (the page reports every error)
        line = cli.error_line(e)
        if line is None:
            log.error("request failed:\n%s", traceback.format_exc())
            line = (f"unclip-jax: internal error ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}); see the server's log")
        return None, None, line
    return result.grid, result.files, result.summary()


def _outputs(prefix: str):
    grid = gr.Image(label="Result", type="pil", format="png", interactive=False,
                    elem_id=f"{prefix}-grid")
    status = gr.Textbox(label="Status", interactive=False, elem_id=f"{prefix}-status")
    files = gr.File(label="Download: grid, sidecar (unclip-jax sample --from-sidecar NAME.json)",
                    file_count="multiple", interactive=False, elem_id=f"{prefix}-files")
    return [grid, files, status]


def _decode_fields(prefix: str):
    with gr.Accordion("Decoder and upsampler settings", open=False):
        with gr.Row():
            steps = gr.Textbox(label="Decoder steps", placeholder=STEPS_HELP,
                               elem_id=f"{prefix}-decoder-steps")
            guidance = gr.Number(label="Decoder guidance (empty: default)", value=None,
                                 elem_id=f"{prefix}-decoder-guidance")
            up = gr.Textbox(label="Upsampler steps", placeholder="one value, or two as 'a/b'",
                            elem_id=f"{prefix}-upsampler-steps")
    return [steps, guidance, up]


def _upload(label: str, elem_id: str):
    # image_mode=None: the file's own mode reaches the pipeline, which converts it as the CLI
    # does (transparency on white)
    return gr.Image(label=label, type="pil", image_mode=None, sources=["upload", "clipboard"],
                    elem_id=elem_id)


def _run_block(prefix: str, label: str, fn, inputs) -> None:
    """The tab's button, then its outputs; every tab's event shares one queue slot."""
    button = gr.Button(label, variant="primary", elem_id=f"{prefix}-run")
    button.click(fn, inputs, _outputs(prefix), concurrency_limit=1, concurrency_id="model")


def build(session: Session) -> gr.Blocks:
    """The page for a loaded `Session`."""
    with gr.Blocks(title="unclip-jax", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"## unclip-jax\n{session.describe()}. Every result comes with the "
                    "JSON sidecar that `unclip-jax sample --from-sidecar` redoes it from.")
        with gr.Tab("Generate", id="generate"):
            prompts = gr.Textbox(label="Prompts (one per line)", lines=3,
                                 placeholder="a red circle", elem_id="gen-prompts")
            with gr.Row():
                n = gr.Number(label="Images per prompt", value=1, precision=0, elem_id="gen-n")
                seed = gr.Number(label="Seed", value=0, precision=0, elem_id="gen-seed")
                prior = gr.Radio(session.priors, value=session.priors[0], label="Prior",
                                 elem_id="gen-prior")
            with gr.Accordion("Prior settings", open=False):
                with gr.Row():
                    p_steps = gr.Textbox(label="Prior steps", placeholder=STEPS_HELP,
                                         elem_id="gen-prior-steps")
                    p_guid = gr.Number(label="Prior guidance (empty: default)", value=None,
                                       elem_id="gen-prior-guidance")
                    eta = gr.Number(label="DDIM eta", value=0.0, elem_id="gen-eta")
            decode = _decode_fields("gen")

            def generate(prompts, n, seed, prior, p_steps, p_guid, eta, d_steps, d_guid, u_steps,
                         progress=gr.Progress(track_tqdm=True)):
                return respond(lambda: session.generate(
                    prompts, n, seed, prior, prior_steps=p_steps, prior_guidance=p_guid,
                    decoder_steps=d_steps, decoder_guidance=d_guid, upsampler_steps=u_steps,
                    eta=eta))
            _run_block("gen", "Generate", generate,
                       [prompts, n, seed, prior, p_steps, p_guid, eta] + decode)

        with gr.Tab("Variations", id="vary"):
            image = _upload("Image", "vary-image")
            with gr.Row():
                vn = gr.Number(label="Variations", value=4, precision=0, elem_id="vary-n")
                vseed = gr.Number(label="Seed", value=0, precision=0, elem_id="vary-seed")
                veta = gr.Number(label="DDIM eta", value=0.8, elem_id="vary-eta")
            vdecode = _decode_fields("vary")

            def vary(image, n, seed, eta, d_steps, d_guid, u_steps,
                     progress=gr.Progress(track_tqdm=True)):
                return respond(lambda: session.variations(
                    image, n, seed, eta, decoder_steps=d_steps, decoder_guidance=d_guid,
                    upsampler_steps=u_steps))
            _run_block("vary", "Make variations", vary, [image, vn, vseed, veta] + vdecode)

        with gr.Tab("Interpolation", id="interpolate"):
            with gr.Row():
                image_a = _upload("From", "interp-a")
                image_b = _upload("To", "interp-b")
            with gr.Row():
                inn = gr.Number(label="Frames", value=5, precision=0, elem_id="interp-n")
                iseed = gr.Number(label="Seed", value=0, precision=0, elem_id="interp-seed")
                fixed = gr.Checkbox(label="One x_T for every frame", value=False,
                                    elem_id="interp-fixed")
            idecode = _decode_fields("interp")

            def interpolate(a, b, n, seed, fixed, d_steps, d_guid, u_steps,
                            progress=gr.Progress(track_tqdm=True)):
                return respond(lambda: session.interpolate(
                    a, b, n, seed, fixed, decoder_steps=d_steps, decoder_guidance=d_guid,
                    upsampler_steps=u_steps))
            _run_block("interp", "Interpolate", interpolate,
                       [image_a, image_b, inn, iseed, fixed] + idecode)

        with gr.Tab("Text diff", id="textdiff"):
            timage = _upload("Image", "tdiff-image")
            with gr.Row():
                cfrom = gr.Textbox(label="From caption (what the image shows)",
                                   elem_id="tdiff-from")
                cto = gr.Textbox(label="To caption", elem_id="tdiff-to")
            with gr.Row():
                tn = gr.Number(label="Frames", value=5, precision=0, elem_id="tdiff-n")
                angle = gr.Number(label="Max angle (slerp fraction, 0–1)", value=0.5,
                                  elem_id="tdiff-angle")
                tseed = gr.Number(label="Seed", value=0, precision=0, elem_id="tdiff-seed")
            tdecode = _decode_fields("tdiff")

            def text_diff(image, c_from, c_to, n, angle, seed, d_steps, d_guid, u_steps,
                          progress=gr.Progress(track_tqdm=True)):
                return respond(lambda: session.text_diff(
                    image, c_from, c_to, n, angle, seed, decoder_steps=d_steps,
                    decoder_guidance=d_guid, upsampler_steps=u_steps))
            _run_block("tdiff", "Edit toward the caption", text_diff,
                       [timage, cfrom, cto, tn, angle, tseed] + tdecode)
    return app

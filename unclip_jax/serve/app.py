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
from unclip_jax.errors import UserError
from unclip_jax.serve import session as serve_session
from unclip_jax.serve.session import Session

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


def _stage_fields(prefix: str, stage: str, title: str, last):
    """A closed accordion: `stage`'s steps and guidance (empty: the model's), and `last()`."""
    with gr.Accordion(title, open=False):
        with gr.Row():
            steps = gr.Textbox(label=f"{stage.capitalize()} steps", placeholder=STEPS_HELP,
                               elem_id=f"{prefix}-{stage}-steps")
            guidance = gr.Number(label=f"{stage.capitalize()} guidance (empty: default)",
                                 value=None, elem_id=f"{prefix}-{stage}-guidance")
            return [steps, guidance, last()]


def _decode_fields(prefix: str):
    return _stage_fields(prefix, "decoder", "Decoder and upsampler settings", lambda: gr.Textbox(
        label="Upsampler steps", placeholder="one value, or two as 'a/b'",
        elem_id=f"{prefix}-upsampler-steps"))


def _prior_fields(prefix: str):
    return _stage_fields(prefix, "prior", "Prior settings", lambda: gr.Number(
        label="DDIM eta", value=0.0, elem_id=f"{prefix}-eta"))


def _negative_field(prefix: str):
    return gr.Textbox(label="Negative prompt (optional; needs the diffusion prior)",
                      elem_id=f"{prefix}-negative")


def _count_seed(prefix: str, label: str, value: int):
    with gr.Row():
        n = gr.Number(label=label, value=value, precision=0, elem_id=f"{prefix}-n")
        seed = gr.Number(label="Seed", value=0, precision=0, elem_id=f"{prefix}-seed")
    return n, seed


def _upload(label: str, elem_id: str):
    # image_mode=None: the file's own mode reaches the pipeline, which converts it as the CLI
    # does (transparency on white)
    return readable(gr.Image(label=label, type="pil", image_mode=None,
                             sources=["upload", "clipboard"], elem_id=elem_id))


def readable(component):
    """An image input whose unreadable upload shows the CLI's one-line message (as a page
    error) instead of Gradio's bare "Error": Gradio decodes uploads before the tab's function
    runs, so the message is raised from the component's own preprocessing."""
    decode = component.preprocess

    def preprocess(payload):
        try:
            return decode(payload)
        except Exception as e:                  # noqa: BLE001 (PIL raises several kinds)
            name = getattr(payload, "orig_name", None) or "the upload"
            raise gr.Error(cli.error_line(UserError(
                f"cannot read image {name} ({type(e).__name__}); pass a PNG/JPEG file")),
                duration=None, print_exception=False) from None
    component.preprocess = preprocess
    return component


def _run_block(prefix: str, label: str, fn, inputs) -> None:
    """The tab's button, then its outputs; every tab's event shares one queue slot."""
    button = gr.Button(label, variant="primary", elem_id=f"{prefix}-run")
    button.click(fn, inputs, _outputs(prefix), concurrency_limit=1, concurrency_id="model")


def build(session: Session) -> gr.Blocks:
    """The page for a loaded `Session`."""
    with gr.Blocks(title="unclip-jax", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"## unclip-jax\nModel: {session.describe()}. Every result comes with the "
                    "JSON sidecar that `unclip-jax sample --from-sidecar` redoes it from.")
        with gr.Tab("Generate", id="generate"):
            prompts = gr.Textbox(label="Prompts (one per line)", lines=3,
                                 placeholder="a red circle", elem_id="gen-prompts")
            with gr.Row():
                n = gr.Number(label="Images per prompt", value=1, precision=0, elem_id="gen-n")
                seed = gr.Number(label="Seed", value=0, precision=0, elem_id="gen-seed")
                prior = gr.Radio(session.priors, value=session.priors[0], label="Prior",
                                 elem_id="gen-prior")
            negative = _negative_field("gen")
            p_fields = _prior_fields("gen")
            decode = _decode_fields("gen")

            def generate(prompts, n, seed, prior, negative, p_steps, p_guid, eta, d_steps,
                         d_guid, u_steps, progress=gr.Progress(track_tqdm=True)):
                return respond(lambda: session.generate(
                    prompts, n, seed, prior, prior_steps=p_steps, prior_guidance=p_guid,
                    decoder_steps=d_steps, decoder_guidance=d_guid, upsampler_steps=u_steps,
                    eta=eta, negative=negative))
            _run_block("gen", "Generate", generate,
                       [prompts, n, seed, prior, negative] + p_fields + decode)

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
        _editing_tabs(session)
    return app


def _editing_tabs(session: Session) -> None:
    """Inpaint (a mask drawn on the image), img2img and mixing."""
    with gr.Tab("Inpaint", id="inpaint"):
        editor = readable(gr.ImageEditor(
            label="Image: paint the region to repaint", type="pil", image_mode="RGB",
            sources=["upload", "clipboard"], layers=False, transforms=(),
            brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed"), elem_id="inpaint-editor"))
        prompt = gr.Textbox(label="Prompt for the painted region", elem_id="inpaint-prompt")
        negative = _negative_field("inpaint")
        n, seed = _count_seed("inpaint", "Images", 1)
        with gr.Accordion("RePaint settings", open=False):
            with gr.Row():
                feather = gr.Number(label="Feather (mask blur σ, px)", value=0.0,
                                    elem_id="inpaint-feather")
                jump = gr.Number(label="Jump length", value=1, precision=0,
                                 elem_id="inpaint-jump")
                resample = gr.Number(label="Resamplings", value=1, precision=0,
                                     elem_id="inpaint-resamplings")
        p_fields = _prior_fields("inpaint")
        decode = _decode_fields("inpaint")

        def inpaint(value, prompt, negative, n, seed, feather, jump, resample, p_steps, p_guid,
                    eta, d_steps, d_guid, u_steps, progress=gr.Progress(track_tqdm=True)):
            def run():
                image = (value or {}).get("background")
                mask = None if image is None else serve_session.drawn_mask(
                    value.get("layers"), image.size)
                return session.inpaint(image, mask, prompt, n, seed, negative, feather, jump,
                                       resample, p_steps, p_guid, eta, d_steps, d_guid, u_steps)
            return respond(run)
        _run_block("inpaint", "Inpaint", inpaint,
                   [editor, prompt, negative, n, seed, feather, jump, resample] + p_fields
                   + decode)

    with gr.Tab("Image to image", id="img2img"):
        image = _upload("Image to start from", "img2img-image")
        prompt = gr.Textbox(label="Prompt", elem_id="img2img-prompt")
        negative = _negative_field("img2img")
        with gr.Row():
            strength = gr.Number(label="Strength (0 = the input, 1 = a new image)", value=0.6,
                                 elem_id="img2img-strength")
        n, seed = _count_seed("img2img", "Images", 1)
        p_fields = _prior_fields("img2img")
        decode = _decode_fields("img2img")

        def img2img(image, prompt, negative, strength, n, seed, p_steps, p_guid, eta, d_steps,
                    d_guid, u_steps, progress=gr.Progress(track_tqdm=True)):
            return respond(lambda: session.img2img(
                image, prompt, strength, n, seed, negative, p_steps, p_guid, eta, d_steps,
                d_guid, u_steps))
        _run_block("img2img", "Transform", img2img,
                   [image, prompt, negative, strength, n, seed] + p_fields + decode)

    with gr.Tab("Mix", id="mix"):
        with gr.Row():
            image_1 = _upload("Image 1 (optional)", "mix-image-1")
            image_2 = _upload("Image 2 (optional)", "mix-image-2")
        prompts = gr.Textbox(label="Prompts (optional, one per line)", lines=2,
                             elem_id="mix-prompts")
        weights = gr.Textbox(label="Weights, one per input: images first, then prompts "
                             "(empty: equal)", placeholder="1 1", elem_id="mix-weights")
        n, seed = _count_seed("mix", "Images", 1)
        p_fields = _prior_fields("mix")
        decode = _decode_fields("mix")

        def mix(image_1, image_2, prompts, weights, n, seed, p_steps, p_guid, eta, d_steps,
                d_guid, u_steps, progress=gr.Progress(track_tqdm=True)):
            return respond(lambda: session.mix(
                [image_1, image_2], prompts, weights, n, seed, p_steps, p_guid, eta, d_steps,
                d_guid, u_steps))
        _run_block("mix", "Mix", mix,
                   [image_1, image_2, prompts, weights, n, seed] + p_fields + decode)

"""Write colab/unclip_sampling.ipynb (outputs cleared) from the cells below.

    python colab/make_notebook.py            # rewrite the notebook
    python colab/make_notebook.py --check    # exit 1 if the committed notebook differs

Cells tagged `sample`, `stages`, `variation`, `interpolation`, `textdiff` and `save` are the
ones tests/test_notebook.py inspects after executing the notebook.
"""
from __future__ import annotations

import argparse
import os
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "unclip_sampling.ipynb")


def md(text: str):
    return new_markdown_cell(text.strip())


def code(text: str, tag: str | None = None):
    cell = new_code_cell(text.strip())
    if tag:
        cell.metadata["tags"] = [tag]
    return cell


CELLS = [
    md("""
# unCLIP sampling with unclip-jax

unCLIP (DALL·E 2) turns a caption into an image in three steps, each its own diffusion model:

1. **Prior** — the caption's CLIP *text* embedding `z_t` (and its token states) → a CLIP
   *image* embedding `z_i`: what an image of this caption would look like to CLIP.
2. **Decoder** — `z_i` (plus the caption tokens) → a small image (64 px in the paper, 32 px
   in the bundled shapes model), an ADM UNet with classifier-free guidance.
3. **Upsamplers** — 64 → 256 → 1024 px in the paper (the bundled model: 32 → 64 → 256),
   conditioned only on the low-resolution image.

Because the decoder only sees `z_i`, editing `z_i` edits the image: **variations** (same
`z_i`, new noise), **interpolations** (slerp between two `z_i`) and **text diffs** (rotate `z_i`
toward the direction "new caption − old caption").

This notebook runs on a Colab TPU, GPU or CPU runtime (Runtime → Change runtime type).
"""),
    md("""
## 1. Install

`REPO_URL` is the repository. The cell installs unclip-jax from the first of: `UNCLIP_SOURCE`
(a git URL, a wheel or a checkout path), a wheel `unclip_jax-*.whl` or a checkout folder
`unclip-jax/` uploaded to the session (Files pane → Upload), or `git+REPO_URL`.

It installs the package without its requirements, then `python -m unclip_jax.colab_setup
--deps` installs them except TensorFlow when the runtime already has one (Colab preinstalls
`tensorflow`; `tensorflow` and `tensorflow-cpu` write the same package), and checks the JAX
backend: on a GPU or TPU runtime where JAX would run on the CPU it installs `jax[cuda12]` or
`jax[tpu]`, then prints the backend JAX got. When `unclip_jax` already imports (a local
Jupyter, a second run) only the backend check runs.
"""),
    code("""
import glob
import importlib
import importlib.util
import os
import subprocess
import sys

REPO_URL = "https://github.com/unclip-jax/unclip-jax"   # the repository (append @BRANCH for a branch)
UNCLIP_SOURCE = os.environ.get("UNCLIP_SOURCE", "")      # "" = an upload if any, else REPO_URL


def install_source() -> str:
    \"\"\"UNCLIP_SOURCE, else a wheel or checkout uploaded to this folder, else the repository.\"\"\"
    if UNCLIP_SOURCE:
        return UNCLIP_SOURCE
    uploads = sorted(glob.glob("unclip_jax-*.whl")) or [
        d for d in ("unclip-jax",) if os.path.isfile(os.path.join(d, "setup.py"))]
    return os.path.abspath(uploads[-1]) if uploads else f"git+{REPO_URL}"


setup_args = []
if importlib.util.find_spec("unclip_jax") is None:
    source = install_source()
    print("installing unclip-jax from", source)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", source], check=True)
    importlib.invalidate_caches()
    setup_args = ["--deps"]
else:
    print("unclip_jax is already installed; skipping pip install")
subprocess.run([sys.executable, "-m", "unclip_jax.colab_setup", *setup_args], check=True)
"""),
    code("""
import jax
import numpy as np

from unclip_jax import colab_setup

print("jax", jax.__version__, "| backend:", jax.default_backend())
warning = colab_setup.backend_warning(colab_setup.detect_hardware(), jax.default_backend())
if warning:
    print(warning, file=sys.stderr)
jax.devices()
"""),
    md("""
## 2. Choose a model

`CHECKPOINT` is a directory with one subdirectory per stage (`clip/`, `tokenizer/`, `prior/`
or `ar_prior/`, `decoder/`, optional `upsampler1/`, `upsampler2/`); missing upsamplers just give
smaller images.

* **Bundled shapes model** (default, `CHECKPOINT = ""`): a small unCLIP trained on rendered
  coloured shapes that ships inside the package (`unclip_jax/assets/shapes`).
* **Your own checkpoint**: the stage directories written by `unclip-jax train ... --export`.
* **Karlo v1-alpha** (a public unCLIP at 64 → 256 px), converted once (see `docs/karlo.md`):

  ```bash
  pip install -U "huggingface_hub[cli]"
  hf download kakaobrain/karlo-v1-alpha --local-dir karlo
  unclip-jax convert-karlo karlo/ ckpt/karlo
  ```

  then `CHECKPOINT = "ckpt/karlo"` (prefix the commands with `!` in a Colab cell). Karlo's
  defaults are prior guidance 4 and decoder guidance 8. Its converted CLIP has no image
  tower, so the variation / interpolation / text-diff cells are skipped for it.
"""),
    code("""
from unclip_jax.errors import UserError
from unclip_jax.sample.images import make_grid, save_grid, to_uint8
from unclip_jax.sample.loading import BUNDLED_MODEL
from unclip_jax.sample.unclip import UnCLIP

CHECKPOINT = os.environ.get("UNCLIP_CHECKPOINT", "")   # "" = bundled shapes model

root = CHECKPOINT or BUNDLED_MODEL
if not CHECKPOINT and not os.path.isdir(BUNDLED_MODEL):
    raise UserError("this install has no bundled model; set CHECKPOINT to a directory with "
                    "clip/, tokenizer/, prior/, decoder/, ... (e.g. 'ckpt/karlo')")
pipe = UnCLIP.from_directory(root)
HAS_IMAGE_TOWER = not pipe.stages["clip"].extra.get("text_only", False)
print("model:", root)
for name, stage in pipe.stages.items():
    size = stage.config.model.get("image_size", None) if name != "clip" else None
    print(f"  {name:<11}", f"{size} px" if size else "")
print("devices:", pipe.num_devices, "| CLIP image tower:", HAS_IMAGE_TOWER)
"""),
    md("""
## 3. Settings

Steps are respacing strings: `"25"` uses the stage's sampler on 25 of its training timesteps,
`"ddim25"` forces DDIM; `None` keeps what the checkpoint's config says. On a CPU the defaults
below are small so that a run takes minutes, not hours; on a TPU/GPU they are the
checkpoint's own. Guidance scales: 1 = no guidance, larger = closer to the caption;
`None` = the checkpoint's configured value.
"""),
    code("""
FAST = os.environ.get("UNCLIP_NOTEBOOK_FAST", "") == "1"   # smoke-test settings
ON_CPU = jax.default_backend() == "cpu"

SEED = 0
if FAST:
    PRIOR_STEPS = DECODER_STEPS = UPSAMPLER_STEPS = "2"
elif ON_CPU:
    PRIOR_STEPS, DECODER_STEPS, UPSAMPLER_STEPS = "16", "16", "ddim8"
else:
    PRIOR_STEPS = DECODER_STEPS = UPSAMPLER_STEPS = None
PRIOR_GUIDANCE = None      # e.g. 4.0
DECODER_GUIDANCE = None    # e.g. 3.0 (shapes) or 8.0 (Karlo)

PROMPTS = ["a large red circle in the centre",
           "a medium yellow star in the top right corner",
           "a small green square on the left and a small pink hexagon on the right"]
NUM_IMAGES_PER_PROMPT = 4
N_VARIATIONS, VARIATION_ETA = 4, 0.8
N_INTERPOLATION = 6
TEXT_DIFF_FROM, TEXT_DIFF_TO = "a large red circle in the centre", "a large blue circle in the centre"
N_TEXT_DIFF, TEXT_DIFF_MAX_ANGLE = 5, 0.5
if FAST:
    PROMPTS, NUM_IMAGES_PER_PROMPT = PROMPTS[:2], 1
    N_VARIATIONS, N_INTERPOLATION, N_TEXT_DIFF = 2, 3, 4

DISPLAY_PX = int(os.environ.get("UNCLIP_DISPLAY_PX", "128"))   # tile size on screen
OUT_DIR = os.environ.get("UNCLIP_NOTEBOOK_OUT", "samples/notebook")
"""),
    code("""
from IPython.display import display
from PIL import Image


def tiles(images, px=DISPLAY_PX):
    \"\"\"uint8 [N, H, W, 3] → uint8 [N, px, px, 3]: nearest-neighbour when enlarging (crisp
    pixels), Lanczos when shrinking.\"\"\"
    out = []
    for a in np.asarray(images):
        im = Image.fromarray(a)
        resample = Image.Resampling.NEAREST if px >= im.width else Image.Resampling.LANCZOS
        out.append(np.asarray(im.resize((px, px), resample)))
    return np.stack(out)


def show(images, ncols=None):
    \"\"\"Show uint8 images [N, H, W, 3] inline as one grid of DISPLAY_PX tiles.\"\"\"
    display(make_grid(tiles(images), ncols))
"""),
    md("""
## 4. Text → image

`generate` runs CLIP's text encoder, the prior, the decoder and every upsampler present. Each
stage is one compiled program (the whole sampling loop inside), so the first call compiles
and later calls with the same shapes and settings are fast. Rows are prompts, columns are
samples; the same `SEED` gives the same images on any device count.
"""),
    code("""
images, inter = pipe.generate(PROMPTS, SEED, num_images_per_prompt=NUM_IMAGES_PER_PROMPT,
                              prior_steps=PRIOR_STEPS, decoder_steps=DECODER_STEPS,
                              upsampler_steps=UPSAMPLER_STEPS, prior_guidance=PRIOR_GUIDANCE,
                              decoder_guidance=DECODER_GUIDANCE, return_intermediates=True)
print(images.shape, images.dtype)
show(images, ncols=NUM_IMAGES_PER_PROMPT)
""", tag="sample"),
    md("""
### The hierarchy, stage by stage

The first sample after each stage: the decoder's small image, then each upsampler's output
(all drawn at the same size here, so the added detail is what changes). The prior's output is
an embedding, not an image: its cosine similarity with the caption's text embedding is
printed — CLIP image and text embeddings of a matching pair are close but not equal, which is
why unCLIP needs a prior at all.
"""),
    code("""
stages = [k for k in ("decoder", "upsampler1", "upsampler2") if k in inter]
print(" → ".join(f"{k} {inter[k].shape[1]} px" for k in stages))
z_t, z_i = inter["z_t"][0], inter["z_i"][0]
print("cos(z_t, z_i) =", float(z_t @ z_i / (np.linalg.norm(z_t) * np.linalg.norm(z_i))))
show(np.concatenate([tiles(to_uint8(inter[k][:1])) for k in stages]), ncols=len(stages))
""", tag="stages"),
    md("""
## 5. Variations

CLIP-encode an image to `z_i`, DDIM-invert the decoder to its starting noise `x_T`, and
re-sample with DDIM η > 0: what CLIP sees is kept (shapes, colours, layout), the details
change. η = 0 would reproduce the image. First tile: the source.
"""),
    code("""
if HAS_IMAGE_TOWER:
    source = images[:1]
    variations = pipe.variations(source, SEED, n=N_VARIATIONS, eta=VARIATION_ETA,
                                 decoder_steps=DECODER_STEPS, decoder_guidance=DECODER_GUIDANCE,
                                 upsampler_steps=UPSAMPLER_STEPS)
    show(np.concatenate([source, variations]), ncols=1 + N_VARIATIONS)
else:
    print("this checkpoint's CLIP has no image tower; variations need one")
""", tag="variation"),
    md("""
## 6. Interpolation

Between the first and the last generated image: `z_i` is slerped from one image's embedding to
the other's, and the starting noise from one inverted `x_T` to the other (DDIM η = 0).
"""),
    code("""
if HAS_IMAGE_TOWER:
    frames = pipe.interpolate(images[0], images[-1], n=N_INTERPOLATION, key=SEED,
                              decoder_steps=DECODER_STEPS, decoder_guidance=DECODER_GUIDANCE,
                              upsampler_steps=UPSAMPLER_STEPS)
    show(frames, ncols=N_INTERPOLATION)
else:
    print("this checkpoint's CLIP has no image tower; interpolation needs one")
""", tag="interpolation"),
    md("""
## 7. Text diff

Edit the first image by a change of caption: `z_d = normalize(z_t(to) − z_t(from))`, and frame
k decodes `slerp(z_i, z_d, θ_k)` for θ from 0 (the image itself) to `TEXT_DIFF_MAX_ANGLE`,
all from the image's inverted noise so that the layout stays put.
"""),
    code("""
if HAS_IMAGE_TOWER:
    edits = pipe.text_diff(images[0], TEXT_DIFF_FROM, TEXT_DIFF_TO, n=N_TEXT_DIFF,
                           max_angle=TEXT_DIFF_MAX_ANGLE, key=SEED,
                           decoder_steps=DECODER_STEPS, decoder_guidance=DECODER_GUIDANCE,
                           upsampler_steps=UPSAMPLER_STEPS)
    print(f"{TEXT_DIFF_FROM!r} → {TEXT_DIFF_TO!r}")
    show(edits, ncols=N_TEXT_DIFF)
else:
    print("this checkpoint's CLIP has no image tower; text diffs need one")
""", tag="textdiff"),
    md("""
## 8. Save PNGs

The cell below writes the grids above at full resolution (in Colab, download them from the
file browser or with `google.colab.files.download(path)`).

For reproducible files use the command line: each command writes a PNG grid and, next to it,
a JSON *sidecar* with the prompts, seed, every setting and the identity of each stage
checkpoint; `--from-sidecar` redoes it bit for bit (and refuses if a checkpoint changed).
Leave out `--checkpoint` to use the bundled model.

```bash
unclip-jax sample "a large red circle in the centre" -n 4 --seed 0 \\
    --checkpoint DIR --prior-steps 16 --decoder-steps 16 --out samples/circle.png
unclip-jax sample --from-sidecar samples/circle.json --out samples/circle_again.png
unclip-jax vary samples/circle.png -n 4 --eta 0.8 --out samples/vary.png
unclip-jax interpolate a.png b.png -n 6 --out samples/interp.png
unclip-jax textdiff samples/circle.png --from "a red circle" --to "a blue circle" \\
    -n 5 --max-angle 0.5 --out samples/textdiff.png
# editing (from Python: pipe.inpaint, pipe.img2img, pipe.mix, generate(negative_prompts=...))
unclip-jax inpaint samples/circle.png --mask mask.png "a blue square on the left" \\
    --out samples/inpaint.png          # mask: image-sized, white = repaint, black = keep
unclip-jax img2img samples/circle.png "a large blue circle" --strength 0.6 --out samples/i2i.png
unclip-jax sample "a large circle" --negative "a large red circle" --out samples/neg.png
unclip-jax mix samples/circle.png "a blue square" --weights 0.5 0.5 --out samples/mix.png
```
"""),
    code("""
os.makedirs(OUT_DIR, exist_ok=True)
grids = {"sample": (images, NUM_IMAGES_PER_PROMPT)}
if HAS_IMAGE_TOWER:
    grids.update(variations=(np.concatenate([source, variations]), 1 + N_VARIATIONS),
                 interpolation=(frames, N_INTERPOLATION), textdiff=(edits, N_TEXT_DIFF))
for name, (grid, ncols) in grids.items():
    print(save_grid(os.path.join(OUT_DIR, f"{name}.png"), grid, ncols))
""", tag="save"),
]


def build() -> nbformat.NotebookNode:
    nb = new_notebook(cells=CELLS)
    nb.metadata.update({
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "accelerator": "TPU",
        "colab": {"provenance": [], "name": "unclip_sampling.ipynb"},
    })
    for i, cell in enumerate(nb.cells):   # stable ids keep the committed file diff-free
        cell["id"] = f"cell-{i:02d}"
    nbformat.validate(nb)
    return nb


def render() -> str:
    return nbformat.writes(build()) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true",
                   help="exit 1 if the committed notebook is not what this script writes")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        with open(PATH, encoding="utf-8") as f:
            same = f.read() == text
        if not same:
            print(f"{PATH} is stale; run python colab/make_notebook.py", file=sys.stderr)
        return 0 if same else 1
    with open(PATH, "w", encoding="utf-8") as f:
        f.write(text)
    print(PATH)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Regenerate the figures in docs/ from the embedded shapes model.
#
#   bash docs/figures.sh [TEXT_DECODER_MODEL]
#
# TEXT_DECODER_MODEL (optional): a model directory whose decoder/ was trained on the CLIP text
# embedding (`--config.data.decoder_embedding=text`, README "Reproduce the shapes model"), with
# the same clip/, tokenizer/ and upsamplers; it adds the ablation row (a). Every PNG gets a JSON
# sidecar that `unclip-jax sample --from-sidecar` regenerates bit for bit. `--overwrite`
# replaces the figures already in docs/ (without it an existing output is refused).
set -euo pipefail
cd "$(dirname "$0")/.."
TEXT_MODEL="${1:-}"
PROMPTS=("a large red circle on the left" "a small blue square at the top"
         "a large green triangle in the centre on a black background"
         "a medium yellow star in the bottom right corner")

# samples of the full chain (the model's default prior, the AR prior → 32 px decoder → 64 px
# → 256 px)
unclip-jax sample "${PROMPTS[@]}" -n 4 --seed 0 --cols 8 --out docs/samples_shapes.png --overwrite

# §5.1 ablation, one grid per row of docs/results.md, same prompts and seed
unclip-jax sample "${PROMPTS[@]}" -n 4 --seed 0 --cols 8 --prior text \
  --out docs/ablation_zeroshot_text.png --overwrite                         # (c)
unclip-jax sample "${PROMPTS[@]}" -n 4 --seed 0 --cols 8 --prior diffusion \
  --out docs/ablation_diffusion_prior.png --overwrite                       # (b)
if [[ -n "$TEXT_MODEL" ]]; then
  unclip-jax sample "${PROMPTS[@]}" -n 4 --seed 0 --cols 8 --checkpoint "$TEXT_MODEL" \
    --out docs/ablation_text_decoder.png --overwrite                        # (a)
fi

# manipulations (paper Figs. 3-5) on validation scenes saved in docs/inputs/ (the single-object
# scenes 0, 11, 16, 24, 25 of unclip_shapes/medium's validation split at 256 px), written by
#   python -c "
#   from PIL import Image; from unclip_jax.eval.data import load_examples
#   ex = load_examples('DATA_DIR', 'validation', image_size=256, limit=30)
#   for i, n in {0: 'cyan_circle_left', 11: 'red_circle_top_left', 16: 'purple_circle_centre',
#                24: 'blue_triangle_right', 25: 'pink_square_centre'}.items():
#       Image.fromarray(ex['image'][i]).save(f'docs/inputs/{n}.png', optimize=True)"
unclip-jax vary docs/inputs/red_circle_top_left.png docs/inputs/blue_triangle_right.png \
  -n 4 --seed 0 --cols 5 --out docs/variations.png --overwrite
unclip-jax interpolate docs/inputs/cyan_circle_left.png docs/inputs/pink_square_centre.png \
  -n 6 --seed 0 --out docs/interpolation.png --overwrite
unclip-jax textdiff docs/inputs/red_circle_top_left.png \
  --from "a large red circle in the top left corner" \
  --to "a large blue circle in the top left corner" -n 5 --max-angle 0.5 --seed 0 \
  --out docs/textdiff.png --overwrite

# editing (docs/results.md "Editing"): a mask over the bottom-right cell of the 3×3 grid
# (unclip_jax.eval.editing.cell_mask), then inpainting a new object there
python -c "
from PIL import Image; from unclip_jax.eval.editing import cell_mask
Image.fromarray(cell_mask('bottom right', 256)).save('docs/inputs/mask_bottom_right.png')"
unclip-jax inpaint docs/inputs/red_circle_top_left.png --mask docs/inputs/mask_bottom_right.png \
  "a large red circle in the top left corner and a large yellow square in the bottom right corner" \
  -n 4 --seed 0 --cols 4 --out docs/inpaint.png --overwrite

# the web demo's page (README "Web demo"): the browser test drives `unclip-jax serve` on the
# embedded model in headless chromium (apt-get install chromium chromium-driver), saves the
# page after its first image, and regenerates that image from the page's downloaded sidecar
UNCLIP_JAX_SERVE_CHECKPOINT=bundled UNCLIP_JAX_SERVE_SCREENSHOT="$PWD/docs/serve.png" \
  python -m pytest -q -m slow tests/test_serve.py -k browser

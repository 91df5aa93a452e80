"""`unclip-jax eval-editing`: measurements of inpainting, img2img, negative prompts and
mixing on real renders of shapes scenes (`unclip_jax.eval.editing`).

    unclip-jax eval-editing --classifier CLF [--checkpoint DIR] [--final upsampler1]
        [--scenes 16] [--negatives 32] [--parts add negative remove img2img mix] --out r.json

--out is rewritten after each part (with the seconds each took and the settings), so a long
run's finished parts are kept; the results are also printed as JSON.
"""
from __future__ import annotations

from unclip_jax.stages import UPSAMPLERS


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="model directory (default: the bundled model)")
    parser.add_argument("--classifier", required=True,
                        help="attribute-classifier directory (colour judge; `unclip-jax "
                             "eval-ceilings` or `eval --train-classifier` writes one)")
    parser.add_argument("--final", default="upsampler1", choices=("decoder",) + UPSAMPLERS,
                        help="last stage loaded: the measured image size is its size")
    parser.add_argument("--scenes", type=int, default=16,
                        help="scenes per inpainting measurement (half as many for img2img)")
    parser.add_argument("--negatives", type=int, default=32,
                        help="images per arm of the negative-prompt measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", nargs="+", default=None, metavar="PART",
                        help="measure only these of add, negative, remove, img2img, mix "
                             "(default: all)")
    parser.add_argument("--out", required=True, help="JSON file to write")


def run(args) -> int:
    import json

    from unclip_jax import atomic
    from unclip_jax.errors import UserError
    from unclip_jax.eval import editing
    from unclip_jax.eval.attributes import AttributeClassifier
    parts = tuple(args.parts or editing.PARTS)
    unknown = [p for p in parts if p not in editing.PARTS]
    if unknown:
        raise UserError(f"--parts {' '.join(unknown)}: choose from {', '.join(editing.PARTS)}")
    atomic.check_output_path(args.out, overwrite=True)
    classifier = AttributeClassifier.load(args.classifier)
    pipe = editing.load_model(args.checkpoint, args.final)
    settings = {k: getattr(args, k) for k in ("final", "scenes", "negatives", "seed")}

    def save(res):
        atomic.write_json(args.out, dict(res, settings=settings), indent=1, default=float)
    res = editing.measure(pipe, classifier, scenes=args.scenes, negatives=args.negatives,
                          seed=args.seed, save=save, parts=parts)
    print(json.dumps({k: v for k, v in res.items() if not k.startswith("colours")},
                     indent=1, default=float))
    return 0

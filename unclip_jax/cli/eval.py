"""`unclip-jax eval`: evaluate a model directory on a split of its unclip_shapes dataset.

  unclip-jax eval --checkpoint MODEL --data-dir DATA --split validation --out results.json \\
      [--classifier CLF] [--train-classifier] [--text-decoder DIR] [--markdown results.md]

Prints a markdown table and writes the full results (every metric with its interval) as
JSON. With --train-classifier, an attribute classifier is first trained on DATA's train split
and saved to CLF (which must not hold one yet); without --checkpoint that is all it does:

  unclip-jax eval --train-classifier --classifier CLF --data-dir DATA [--classifier-size 64]

GenEval-style (no dataset needed): generate for the bundled prompt sets (`geneval` = one
object over seen colour–shape pairs, one object over held-out pairs, two objects), read the
images with the per-cell scene detector (default: the bundled one) and print per-attribute
accuracy, exact object count, binding and relative position with bootstrap intervals:

  unclip-jax eval --prompts geneval [--checkpoint MODEL] [--images-per-prompt 4] [--out r.json] \\
      [--images DIR]
  unclip-jax eval --train-detector --detector DIR [--detector-steps 2000]

The JSON holds, per image, what the detector read and which metrics it passed; --images writes
each set's images as one PNG grid (a row per prompt).
"""
from __future__ import annotations

import os

from unclip_jax.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="model directory with clip/, tokenizer/, prior/, decoder/, ...")
    parser.add_argument("--data-dir", default=None,
                        help="TFDS data_dir of the unclip_shapes build (split evaluation)")
    parser.add_argument("--prompts", default=None,
                        help="GenEval-style evaluation on prompt sets instead of a split: geneval "
                             "(the test sets single_seen, single_heldout, two_object), dev (the "
                             "dev_ sets, for choosing settings), a set name, a .json file, or a "
                             "comma list; --checkpoint defaults to the bundled model")
    parser.add_argument("--detector", default=None,
                        help="scene-detector directory (default: the bundled one)")
    parser.add_argument("--train-detector", action="store_true",
                        help="train a scene detector into --detector first (renders its scenes)")
    parser.add_argument("--detector-steps", type=int, default=2000)
    parser.add_argument("--dataset", default=None,
                        help="unclip_shapes/CONFIG (default: the only config built in data_dir)")
    parser.add_argument("--split", default="validation", help="validation or test_heldout")
    parser.add_argument("--out", default=None, help="JSON file to write")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    parser.add_argument("--images", default=None, metavar="DIR",
                        help="--prompts only: also write each set's images as DIR/SET.png, a "
                             "row per prompt (--out's JSON says what the detector read in each)")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--prior-steps", default=None)
    parser.add_argument("--decoder-steps", default=None)
    parser.add_argument("--upsampler-steps", default=None)
    parser.add_argument("--prior-guidance", type=float, default=None)
    parser.add_argument("--prior-best-of", type=int, default=None,
                        help="--prompts only: prior candidates per image, the one nearest z_t "
                             "kept (default: the prior config's model.sample_candidates)")
    parser.add_argument("--decoder-guidance", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prior", choices=("auto", "diffusion", "ar", "text", "true"),
                        default="auto",
                        help="--prompts only: where z_i comes from (as `sample --prior`; text = "
                             "the caption's CLIP text embedding, the zero-shot baseline; true = "
                             "the CLIP image embedding of a real render of the prompt's scene, "
                             "the decoder's ceiling)")
    parser.add_argument("--renoise", type=float, default=None, metavar="STRENGTH",
                        help="--prior true only: start the decoder from the real render of each "
                             "prompt's scene noised to STRENGTH in [0, 1] of its steps (SDEdit) "
                             "and score the decoder's image: at which noise level it loses an "
                             "attribute")
    parser.add_argument("--variants", default="unclip,zeroshot_text",
                        help="comma list of unclip, unclip_ar (the model's ar_prior/), zeroshot_text, "
                             "text_decoder, true_z_i (the decoder on the real image's z_i)")
    parser.add_argument("--text-decoder", default=None,
                        help="decoder checkpoint trained on CLIP text embeddings (ablation a)")
    parser.add_argument("--classifier", default=None, help="attribute-classifier directory")
    parser.add_argument("--train-classifier", action="store_true",
                        help="train the classifier into --classifier first")
    parser.add_argument("--classifier-size", type=int, default=64,
                        help="input resolution of a newly trained classifier (pixels)")
    parser.add_argument("--classifier-steps", type=int, default=1500)
    parser.add_argument("--upsampler-images", type=int, default=0,
                        help="also score each upsampler on this many real images (PSNR beside "
                             "bicubic)")
    parser.add_argument("--chunk", type=int, default=64,
                        help="images generated per compiled call (bounds memory)")
    parser.add_argument("--num-resamples", type=int, default=1000,
                        help="bootstrap resamples per interval")


def _check_new_directory(what: str, directory: str | None) -> None:
    """--train-WHAT needs --WHAT DIR, and DIR must not hold a trained network yet."""
    if not directory:
        raise UserError(f"--train-{what} needs --{what} DIR to save it in")
    if os.path.exists(os.path.join(directory, "config.json")):
        raise UserError(f"{directory} already holds a {what}; drop --train-{what} to use it, "
                        "or pick a new directory")


def run_prompts(args) -> int:
    """`eval --prompts SET`: the GenEval-style evaluation."""
    from unclip_jax import atomic
    from unclip_jax.eval import geneval
    results = geneval.evaluate_prompts(
        args.checkpoint, prompts=args.prompts, images_per_prompt=args.images_per_prompt,
        detector=args.detector, prior_steps=args.prior_steps, decoder_steps=args.decoder_steps,
        upsampler_steps=args.upsampler_steps, prior_guidance=args.prior_guidance,
        decoder_guidance=args.decoder_guidance, prior_best_of=args.prior_best_of,
        seed=args.seed, prior=args.prior, renoise=args.renoise,
        num_resamples=args.num_resamples, images_dir=args.images)
    table = geneval.format_markdown(results)
    print(table)
    if args.out:
        atomic.write_json(args.out, results)
        print(f"wrote {args.out}")
    if args.markdown:
        atomic.write_text(args.markdown, table)
    return 0


def train_detector(args) -> None:
    """`eval --train-detector --detector DIR`."""
    from unclip_jax.eval import scene_detector
    _check_new_directory("detector", args.detector)
    res = scene_detector.train_scene_detector(
        out_dir=args.detector, steps=args.detector_steps, seed=args.seed,
        log_every=max(1, args.detector_steps // 10))
    print(f"scene detector → {res['directory']} ({res['seconds']:.0f} s); accuracy on real "
          "renders: " + "; ".join(f"{r} px: " + ", ".join(f"{h} {100 * v:.1f}%"
                                                          for h, v in a.items())
                                  for r, a in res["validation_accuracy"].items()))


def run(args) -> int:
    from unclip_jax.eval import attributes, evaluate, report

    if args.train_detector:
        train_detector(args)
    if args.prompts is not None:
        return run_prompts(args)
    if args.train_detector and args.checkpoint is None:
        return 0
    if args.images is not None:
        raise UserError("--images writes the images of --prompts sets; add --prompts geneval "
                        "(or a set name)")
    if args.prior_best_of is not None:
        raise UserError("--prior-best-of applies to --prompts sets; add --prompts geneval "
                        "(or a set name)")
    if args.data_dir is None:
        raise UserError("eval needs --data-dir DATA (split evaluation) or --prompts geneval "
                        "(GenEval-style prompt sets)")
    if args.train_classifier:
        _check_new_directory("classifier", args.classifier)
        res = attributes.train_attribute_classifier(
            args.data_dir, out_dir=args.classifier, dataset=args.dataset,
            image_size=args.classifier_size, steps=args.classifier_steps, seed=args.seed,
            log_every=max(1, args.classifier_steps // 10))
        acc = ", ".join(f"{k} {100 * v:.1f}%" for k, v in res["validation_accuracy"].items())
        print(f"attribute classifier → {res['directory']} ({res['seconds']:.0f} s); "
              f"real validation accuracy: {acc}")
        if args.checkpoint is None:
            return 0
    if args.checkpoint is None or args.out is None:
        raise UserError("eval needs --checkpoint MODEL_DIR and --out results.json (or only "
                        "--train-classifier --classifier DIR to train a classifier)")
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    results = evaluate.evaluate(
        args.checkpoint, args.data_dir, split=args.split, num_prompts=args.num_prompts,
        images_per_prompt=args.images_per_prompt, prior_steps=args.prior_steps,
        decoder_steps=args.decoder_steps, upsampler_steps=args.upsampler_steps,
        prior_guidance=args.prior_guidance, decoder_guidance=args.decoder_guidance,
        seed=args.seed, classifier=args.classifier, text_decoder=args.text_decoder,
        dataset=args.dataset, variants=variants, num_resamples=args.num_resamples,
        chunk=args.chunk, upsampler_images=args.upsampler_images)
    table = report.format_markdown(results)
    print(table)
    from unclip_jax import atomic
    atomic.write_json(args.out, results)
    if args.markdown:
        atomic.write_text(args.markdown, table)
    print(f"wrote {args.out}")
    return 0

"""What the sampling commands (`sample`, `vary`, `interpolate`, `textdiff`, `inpaint`,
`img2img`, `mix`) share: their common flags, flags → recorded settings and inputs, and the
run that checks, samples and writes.

Each command writes a PNG grid (`--out`, default samples/<command>.png) and a JSON sidecar
next to it (same name, .json) holding the command, inputs, seed, every sampling setting, the
stage checkpoint directories with their identities, and the package version
(`unclip_jax.sample.records`). `unclip-jax sample --from-sidecar FILE.json` redoes the
recorded command bit for bit (it refuses if a checkpoint's identity changed).

`--checkpoint DIR` is a directory of stage checkpoints:
    DIR/clip/  DIR/tokenizer/  DIR/prior/ (or DIR/ar_prior/)  DIR/decoder/
    DIR/upsampler1/  DIR/upsampler2/        (absent upsamplers → smaller images)
"""
from __future__ import annotations

import os


def common_arguments(p, command: str) -> None:
    """The flags of every sampling command (model, seed, output, decoder/upsampler settings)."""
    p.add_argument("--checkpoint", help="directory with stage subdirectories clip/, tokenizer/, "
                   "prior/ (or ar_prior/), decoder/, upsampler1/, upsampler2/")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join("samples", f"{command}.png"),
                   help="grid to write (.png, or .jpg/.jpeg for JPEG); the JSON sidecar goes "
                        "next to it (same name, .json)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out and its sidecar (default: refuse)")
    p.add_argument("--cols", type=int, default=None, help="grid columns")
    p.add_argument("--decoder-steps", default=None, help="e.g. '50' or 'ddim25'")
    p.add_argument("--decoder-guidance", type=float, default=None)
    p.add_argument("--upsampler-steps", default=None,
                   help="one respacing for both upsamplers, or two separated by '/'")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not keep compiled programs in the persistent cache "
                        "(default: $UNCLIP_JAX_CACHE_DIR or ~/.cache/unclip-jax/xla)")


def negative_argument(p) -> None:
    p.add_argument("--negative", default=None, metavar="TEXT",
                   help="negative prompt: guidance's unconditional branch of the prior and the "
                        "decoder conditions on it (e.g. 'a red circle' steers away from red)")


def prior_arguments(p) -> None:
    """-n and the prior's settings of the editing commands (inpaint, img2img, mix)."""
    p.add_argument("-n", type=int, default=4, help="images per input")
    p.add_argument("--prior-steps", default=None)
    p.add_argument("--prior-guidance", type=float, default=None)
    p.add_argument("--eta", type=float, default=0.0)


def _upsampler_steps(value):
    if value is None:
        return None
    parts = str(value).split("/")
    return parts[0] if len(parts) == 1 else parts


def settings(args, command: str) -> dict:
    """The sampling settings `command`'s parsed flags ask for (what a sidecar records)."""
    s = dict(decoder_steps=args.decoder_steps, decoder_guidance=args.decoder_guidance,
             upsampler_steps=_upsampler_steps(args.upsampler_steps))
    if command == "sample":
        s.update(num_images_per_prompt=args.num_images_per_prompt, prior_steps=args.prior_steps,
                 prior_guidance=args.prior_guidance, prior_best_of=args.prior_best_of,
                 eta=args.eta)
        if args.prior == "text":
            s["text_as_image_embed"] = True
        if args.negative is not None:
            s["negative_prompts"] = args.negative
    elif command == "vary":
        s.update(n=args.n, eta=args.eta)
    elif command == "interpolate":
        s.update(n=args.n, fixed_xT=args.fixed_xT)
    elif command == "textdiff":
        s.update(n=args.n, max_angle=args.max_angle)
    elif command in ("inpaint", "img2img", "mix"):
        s.update(n=args.n, prior_steps=args.prior_steps, prior_guidance=args.prior_guidance,
                 eta=args.eta)
        if command == "inpaint":
            s.update(feather=args.feather, jump_length=args.jump_length,
                     resamplings=args.resamplings)
        elif command == "img2img":
            s["strength"] = args.strength
        else:
            s["weights"] = args.weights
        if command != "mix" and args.negative is not None:
            s["negative_prompts"] = args.negative
    return s


def inputs(args, command: str) -> dict:
    """The inputs of `command` (prompts, or image paths as given) from its parsed arguments;
    the sidecar records a relative path relative to its own folder (`records.write_result`)."""
    from unclip_jax.sample.checks import check_prompts
    if command == "sample":
        return {"prompts": check_prompts(args.prompts)}
    if command == "vary":
        return {"images": list(args.images)}
    if command == "interpolate":
        return {"image_a": args.image_a, "image_b": args.image_b}
    if command == "inpaint":
        return {"image": args.image, "mask": args.mask, "prompt": args.prompt}
    if command == "img2img":
        return {"image": args.image, "prompt": args.prompt}
    if command == "mix":
        from unclip_jax.sample.mixing import split_items
        items, kinds = split_items(args.items)
        return {"items": list(items), "kinds": kinds}
    return {"image": args.image, "caption_from": args.caption_from,
            "caption_to": args.caption_to}


def report(out: str, images) -> None:
    from unclip_jax.sample.sidecars import sidecar_path
    print(f"wrote {out} ({images.shape[0]} images of {images.shape[1]}×{images.shape[2]}) "
          f"and {sidecar_path(out)}")


def run_command(args, command: str) -> int:
    """Check everything, load the model, sample, write the grid and its sidecar."""
    from unclip_jax.sample import records, sidecars
    from unclip_jax.sample.checks import check_cols, check_seed
    ins = inputs(args, command)
    asked = settings(args, command)
    check_seed(args.seed)
    check_cols(args.cols)
    sidecars.check_output(args.out, args.overwrite)          # before any sampling
    prior = getattr(args, "prior", "auto")
    pipe = records.load_model(args.checkpoint, not args.no_progress, prior,
                              not args.no_compile_cache)
    images = records.execute(pipe, command, ins, asked, args.seed)
    record = records.command_record(command, args.seed, ins, asked, prior, args.checkpoint,
                                    args.cols)
    records.write_result(pipe, images, args.out, args.cols, record, args.overwrite)
    report(args.out, images)
    return 0

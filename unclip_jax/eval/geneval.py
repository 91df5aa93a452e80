"""GenEval-style evaluation: generate images for the hand-ruled prompt sets
(`geneval_prompts`), read them with the per-cell scene detector (`scene_detector`) and score
them (`geneval_scores`), every rate with a 95% percentile-bootstrap interval over images.

    res = evaluate_prompts(None, prompts='geneval', images_per_prompt=2, decoder_steps='25')
    print(format_markdown(res))

Single-object sets report colour, shape, position, size and exactly-one-object accuracy;
the two-object set reports exactly-two-objects, colour–shape binding and relative position.
"""
from __future__ import annotations

import os
import time

import jax
import numpy as np

from unclip_jax.data import render
from unclip_jax import stages
from unclip_jax.errors import UserError
from unclip_jax.eval import geneval_prompts, geneval_scores, metrics
from unclip_jax.eval.scene_detector import BUNDLED_DETECTOR, CELL_NAMES, HEADS, SceneDetector
from unclip_jax.sample.checks import check_count
from unclip_jax.sample.images import save_grid
from unclip_jax.sample import editing

SINGLE_METRICS = ("colour", "shape", "position", "size", "count")
TWO_METRICS = ("count", "binding", "relative_position")
PRIORS = ("auto", "diffusion", "ar", "text", "true")
METRIC_NAMES = {"colour": "colour", "shape": "shape", "position": "position", "size": "size",
                "count": "exact count", "binding": "colour–shape binding",
                "relative_position": "relative position"}


def intended_ids(obj: dict) -> dict:
    """A prompt object {'colour', 'shape', 'size', 'position': names} → class ids and cell."""
    return {"colour": HEADS["colour"].index(obj["colour"]),
            "shape": HEADS["shape"].index(obj["shape"]), "size": HEADS["size"].index(obj["size"]),
            "cell": CELL_NAMES.index(obj["position"])}


def score_set(pred: dict, entries: list[dict], images_per_prompt: int) -> dict[str, np.ndarray]:
    """Per-image scores bool [P·K] of detections for P entries × K images (prompt-major)."""
    k = int(images_per_prompt)
    sizes = {len(e["objects"]) for e in entries}
    if sizes == {1}:
        intended = [intended_ids(e["objects"][0]) for e in entries for _ in range(k)]
        return geneval_scores.single_object_scores(pred, intended)
    if sizes == {2}:
        pairs = [tuple(intended_ids(o) for o in e["objects"]) for e in entries for _ in range(k)]
        relations = [e["relation"] for e in entries for _ in range(k)]
        return geneval_scores.two_object_scores(pred, pairs, relations)
    raise UserError("a prompt set mixes one- and two-object prompts; split it into two files")


def image_records(pred: dict, entries: list[dict], images_per_prompt: int,
                  scores: dict[str, np.ndarray]) -> list[dict]:
    """One record per image (prompt-major, as `score_set`), GenEval's per-image results:
    {'prompt': index into `entries`, 'image': index among its K, 'objects': what the detector
    read, one {'position', 'colour', 'shape', 'size', 'p'} per cell it calls occupied (p: its
    object probability), 'correct': {metric: bool}} — which prompts fail, and how."""
    k = int(images_per_prompt)
    records = []
    for j in range(len(entries) * k):
        objects = [{"position": CELL_NAMES[c],
                    **{h: HEADS[h][int(pred[h][j, c])] for h in ("colour", "shape", "size")},
                    "p": round(float(pred["object_prob"][j, c]), 3)}
                   for c in np.flatnonzero(pred["object"][j])]
        records.append({"prompt": j // k, "image": j % k, "objects": objects,
                        "correct": {m: bool(v[j]) for m, v in scores.items()}})
    return records


def true_scenes(entries: list[dict], images_per_prompt: int, seed: int) -> list[dict]:
    """Each prompt's scene `images_per_prompt` times, prompt-major, as `render.render` takes
    it: the prompt's objects centred in their cells, with a background and each object's
    angle drawn from a generator seeded by (seed, prompt index, image index)."""
    backgrounds = list(render.BACKGROUNDS)
    scenes = []
    for p, e in enumerate(entries):
        for i in range(images_per_prompt):
            rng = np.random.default_rng([seed, p, i])
            scenes.append(dict(
                background=backgrounds[int(rng.integers(len(backgrounds)))],
                objects=[dict(o, jitter=(0.0, 0.0), angle=float(rng.uniform(-0.25, 0.25)))
                         for o in e["objects"]]))
    return scenes


def decode_true_scenes(pipe, entries: list[dict], images_per_prompt: int, key, *,
                       decoder_steps=None, upsampler_steps=None, decoder_guidance=None,
                       renoise: float | None = None):
    """The decoder (and upsamplers) on the true z_i: the CLIP image embedding of each
    `true_scenes` render at CLIP's input size, with the prompt's caption. → uint8 [B, H, W, 3].

    renoise: None (the decoder starts from noise) or a strength in [0, 1]: the decoder starts
    from the render itself at its own size, noised to level round(renoise · N) of its N steps
    (SDEdit; 0 returns the render, 1 is plain generation), and the result is the decoder's
    image (no upsamplers) — at which noise level the decoder loses an attribute it was shown.
    """
    from unclip_jax.sample import chain
    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    scenes = true_scenes(entries, images_per_prompt, seed)
    size = pipe.image_size("clip")
    z_i = pipe.encode_images(np.stack([render.render(sc, size) for sc in scenes]))
    text = pipe.encode_text([e["prompt"] for e in entries for _ in range(images_per_prompt)])
    if renoise is not None:
        side = pipe.image_size("decoder")
        known = np.stack([render.render(sc, side) for sc in scenes]).astype(np.float32)
        out = editing.edit_decode(pipe, z_i, key, known={"decoder": known / 127.5 - 1.0},
                                  masks=None, strength=float(renoise), text=text,
                                  decoder_steps=decoder_steps, decoder_guidance=decoder_guidance)
        return chain.finish(out, return_intermediates=False)
    out = pipe.decode(z_i, key, text=text, decoder_steps=decoder_steps,
                      upsampler_steps=upsampler_steps, decoder_guidance=decoder_guidance)
    return chain.finish(out, return_intermediates=False)


def evaluate_prompts(checkpoint: str | None = None, *, prompts: str = "geneval",
                     images_per_prompt: int = 4, detector: str | None = None,
                     prior_steps=None, decoder_steps=None, upsampler_steps=None,
                     prior_guidance=None, decoder_guidance=None, prior_best_of=None,
                     seed: int = 0, prior: str = "auto", renoise: float | None = None,
                     num_resamples: int = 1000, progress: bool = True,
                     images_dir: str | None = None) -> dict:
    """Generate `images_per_prompt` images per prompt of each set in `prompts` with the model
    directory `checkpoint` (None: the bundled model), detect, score.

    prior: where z_i comes from, as `unclip-jax sample --prior`: 'auto' (the model's default:
    its MANIFEST's `default_prior`, else the diffusion prior if it has one; the settings'
    `prior_stage` says which was loaded), 'diffusion', 'ar', or 'text' (the caption's CLIP
    text embedding z_t, the paper's §5.1 zero-shot baseline), or 'true' (no prior: the CLIP
    image embedding of a real render of the prompt's scene, `true_scenes`; the decoder's
    ceiling). renoise (prior 'true' only): start the decoder from that render noised to this
    strength, see `decode_true_scenes`. prior_best_of: prior candidates per image, the one
    nearest z_t kept (None: the prior config's `model.sample_candidates`; needs a prior).
    images_dir: also write each set's images there as one PNG grid, NAME.png (a row per
    prompt, in the order of its 'prompts' list).

    Returns {'settings', 'sets': {set: {'num_prompts', 'prompts': [str], 'output_size',
    'metrics': {metric: {'mean', 'lo', 'hi', 'n'}}, 'images': `image_records`}},
    'detector': {'image_size', 'validation_accuracy'}, 'timings_s'}.
    """
    k = check_count("images_per_prompt", images_per_prompt)
    if prior not in PRIORS:
        raise UserError(f"prior={prior!r}: expected one of {', '.join(PRIORS)}")
    if renoise is not None:
        if prior != "true":
            raise UserError("renoise starts the decoder from the real render of each prompt's "
                            "scene; it needs prior='true' (--prior true)")
        renoise = editing.check_strength(renoise)
    if prior_best_of is not None:
        if prior in ("text", "true"):
            raise UserError(f"prior_best_of picks among prior samples; prior={prior!r} samples "
                            "none (use auto, diffusion or ar)")
        prior_best_of = check_count("prior_best_of", prior_best_of)
    sets = geneval_prompts.load_prompt_sets(prompts)
    det = SceneDetector.load(detector or BUNDLED_DETECTOR)
    from unclip_jax.sample.unclip import UnCLIP
    pipe = UnCLIP.from_directory(checkpoint, progress=progress,
                                 prior="none" if prior in ("text", "true") else prior)
    root = jax.random.key(int(seed))
    out = {"settings": {"model": checkpoint or "bundled", "prompts": prompts,
                        "images_per_prompt": k, "seed": int(seed),
                        "prior_steps": prior_steps, "decoder_steps": decoder_steps,
                        "upsampler_steps": upsampler_steps, "prior_guidance": prior_guidance,
                        "decoder_guidance": decoder_guidance, "prior_best_of": prior_best_of,
                        "prior": prior, "prior_stage": next(
                            (n for n in stages.PRIORS if n in pipe.stages), None),
                        "renoise": renoise},
           "sets": {}, "timings_s": {},
           "detector": {"image_size": det.image_size,
                        "validation_accuracy": det.extra.get("validation_accuracy")}}
    for s, (name, entries) in enumerate(sets.items()):
        start = time.time()
        if prior == "true":
            images = decode_true_scenes(pipe, entries, k, jax.random.fold_in(root, s),
                                        decoder_steps=decoder_steps,
                                        upsampler_steps=upsampler_steps,
                                        decoder_guidance=decoder_guidance, renoise=renoise)
        else:
            images = pipe.generate([e["prompt"] for e in entries], jax.random.fold_in(root, s),
                                   num_images_per_prompt=k, prior_steps=prior_steps,
                                   decoder_steps=decoder_steps, upsampler_steps=upsampler_steps,
                                   prior_guidance=prior_guidance,
                                   decoder_guidance=decoder_guidance,
                                   prior_best_of=prior_best_of,
                                   text_as_image_embed=prior == "text")
        images = np.asarray(images)
        pred = det.predict(images)
        scores = score_set(pred, entries, k)
        if images_dir:
            save_grid(os.path.join(images_dir, f"{name}.png"), images, ncols=k)
        ci_key = jax.random.fold_in(jax.random.fold_in(root, 1000), s)
        out["sets"][name] = {
            "num_prompts": len(entries), "prompts": [e["prompt"] for e in entries],
            "output_size": int(images.shape[1]),
            "metrics": {m: metrics.bootstrap_ci(v.astype(np.float64),
                                                jax.random.fold_in(ci_key, i),
                                                num_resamples=num_resamples)
                        for i, (m, v) in enumerate(scores.items())},
            "images": image_records(pred, entries, k, scores)}
        out["timings_s"][name] = round(time.time() - start, 1)
    return out


def format_markdown(results: dict) -> str:
    """One row per prompt set: accuracy % [95% interval] of each metric it has."""
    s = results["settings"]
    cols = [m for m in (*SINGLE_METRICS, *TWO_METRICS[1:])]
    model = os.path.basename(os.path.normpath(s["model"])) or s["model"]
    lines = [f"Model `{model}`, prompts `{s['prompts']}`, {s['images_per_prompt']} images per "
             f"prompt, seed {s['seed']}; % of images, 95% percentile-bootstrap intervals in "
             "brackets; exact count = 1 object (one-object sets) or 2 (two-object set).", "",
             "| prompt set | prompts × images | " + " | ".join(METRIC_NAMES[c] for c in cols) + " |",
             "|" + "---|" * (len(cols) + 2)]
    for name, r in results["sets"].items():
        m = r["metrics"]
        cells = [f"{100 * m[c]['mean']:.1f} [{100 * m[c]['lo']:.1f}, {100 * m[c]['hi']:.1f}]"
                 if c in m else "–" for c in cols]
        lines.append(f"| {name} | {r['num_prompts']} × {s['images_per_prompt']} | "
                     + " | ".join(cells) + " |")
    acc = (results.get("detector") or {}).get("validation_accuracy") or {}
    if acc:
        lines += ["", f"Scene detector ({results['detector']['image_size']} px input) on real "
                  "renders: " + "; ".join(
                      f"{r} px: " + ", ".join(f"{h} {100 * v:.1f}%" for h, v in a.items())
                      for r, a in acc.items()) + "."]
    return "\n".join(lines) + "\n"

"""CLIP zero-shot attribute accuracy on real `unclip_shapes` images: does the embedding carry
colour, shape, position, size, object count and colour–shape binding?

For each real image the scene's own caption competes with captions of the same scene (same
template and background) where one thing differs; the image is correct when its CLIP image
embedding is nearest (cosine) to the true caption's text embedding:

  colour, shape, position, size   single-object scenes; the object's attribute swapped through
                                  every class (chance 1/8, 1/6, 1/9, 1/3)
  count                           every scene; captions of 1, 2 and 3 objects — the scene's
                                  first objects, or the scene plus random objects in free
                                  cells (chance 1/3)
  binding                         scenes of 2+ objects whose first two colours differ; the
                                  caption with those two colours swapped (chance 1/2)

    acc = zero_shot(clip_dir, data_dir, split='validation', limit=1000)
    acc['position']   # fraction correct

CLI: `unclip-jax eval-clip --clip CLIP_DIR --data-dir DATA [--tokenizer DIR]` prints the
table as JSON (`unclip_jax.cli.eval_clip`).
"""
from __future__ import annotations

import numpy as np

from unclip_jax.data import hard_negatives as hn
from unclip_jax.data import render
from unclip_jax.errors import UserError

ATTRIBUTES = ("colour", "shape", "position", "size")
PROBES = ATTRIBUTES + ("count", "binding")
CLASSES = {"colour": tuple(render.COLOURS), "shape": tuple(render.SHAPES),
           "position": tuple(render.POSITIONS), "size": tuple(render.SIZES)}


def candidates(objects: list[dict], background: str, caption: str, probe: str,
               rng: np.random.Generator) -> tuple[list[str], int] | None:
    """(candidate captions, index of the true one) of one scene for `probe`, or None where the
    probe does not apply to the scene (e.g. colour on a two-object scene)."""
    template = hn.template_of(caption, background)

    def cap(objs):
        return render.caption(objs, background, template)

    if probe in ATTRIBUTES:
        if len(objects) != 1:
            return None
        texts = [cap([{**objects[0], probe: v}]) for v in CLASSES[probe]]
        return texts, CLASSES[probe].index(objects[0][probe])
    if probe == "count":
        n = len(objects)
        used = {o["position"] for o in objects}
        free = [c for c in render.POSITIONS if c not in used]
        rng.shuffle(free)
        texts, extra = [], []
        for c in range(1, hn.MAX_OBJECTS + 1):
            if c <= n:
                texts.append(cap(objects[:c]))
            else:
                extra.append(hn.random_object(rng, free[len(extra)]))
                texts.append(cap(objects + extra))
        return texts, n - 1
    if probe == "binding":
        if len(objects) < 2 or objects[0]["colour"] == objects[1]["colour"]:
            return None
        swapped = [dict(o) for o in objects]
        swapped[0]["colour"], swapped[1]["colour"] = objects[1]["colour"], objects[0]["colour"]
        return [cap(objects), cap(swapped)], 0
    raise UserError(f"unknown probe {probe!r}; choose from {PROBES}")


def score(image_embeds: np.ndarray, encode_text, scenes: list[tuple], probes=PROBES,
          seed: int = 0) -> dict:
    """image_embeds [N, D]; encode_text(list of str) → [M, D]; scenes: N (objects, background,
    caption) → {probe: accuracy, probe + '_n': examples scored}."""
    img = image_embeds / np.linalg.norm(image_embeds, axis=-1, keepdims=True)
    out = {}
    for probe in probes:
        rng = np.random.default_rng([seed, PROBES.index(probe)])
        rows, texts, spans = [], [], []
        for i, (objs, bg, caption) in enumerate(scenes):
            c = candidates(objs, bg, caption, probe, rng)
            if c is None:
                continue
            rows.append((i, c[1]))
            spans.append((len(texts), len(texts) + len(c[0])))
            texts.extend(c[0])
        if not rows:
            out[probe], out[probe + "_n"] = float("nan"), 0
            continue
        t = np.asarray(encode_text(texts), np.float32)
        t = t / np.linalg.norm(t, axis=-1, keepdims=True)
        correct = [int(np.argmax(t[a:b] @ img[i])) == truth
                   for (i, truth), (a, b) in zip(rows, spans)]
        out[probe], out[probe + "_n"] = float(np.mean(correct)), len(correct)
    return out


def zero_shot(clip_dir: str, data_dir: str, *, split: str = "validation",
              dataset: str | None = None, tokenizer: str | None = None,
              limit: int | None = None, probes=PROBES, seed: int = 0) -> dict:
    """Zero-shot probe accuracies of the exported CLIP at `clip_dir` on the first `limit`
    scenes of `split` (all scene sizes; the attribute probes use the single-object ones)."""
    from unclip_jax import export
    from unclip_jax.clip.model import clip_encode_images, clip_encode_text, model_config
    from unclip_jax.clip.tokenizer import Tokenizer
    from unclip_jax.data import sources
    from unclip_jax.data.embed import tokenizer_for
    from unclip_jax.eval.data import load_examples, resolve_dataset

    params, cfg, _ = export.load(clip_dir, expect_stage="clip")
    mc = model_config(cfg)
    tok = (Tokenizer(tokenizer, int(mc.text.context_length)) if tokenizer
           else tokenizer_for(clip_dir, mc))
    name = resolve_dataset(data_dir, dataset)
    seed_scene = int(sources.builder_for(name, data_dir).builder_config.seed)
    ex = load_examples(data_dir, split, image_size=int(mc.vision.image_size), dataset=name,
                       single_object=False, limit=limit)
    scenes = [hn.scene(seed_scene, split, int(i)) for i in ex["index"]]
    for (_, _, cap), real in zip(scenes, ex["caption"]):
        if cap != real:
            raise UserError(f"scene caption {cap!r} differs from the stored {real!r}")
    emb = np.concatenate([np.asarray(clip_encode_images(params, mc, ex["image"][i:i + 256])["embeds"])
                          for i in range(0, len(ex["image"]), 256)])

    def encode_text(texts):
        out = []
        for i in range(0, len(texts), 512):
            ids, _ = tok(texts[i:i + 512])
            out.append(np.asarray(clip_encode_text(params, mc, ids)["embeds"]))
        return np.concatenate(out)

    return score(emb, encode_text, scenes, probes, seed)


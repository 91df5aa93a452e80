"""Hard-negative captions for CLIP training on `unclip_shapes`: the caption of the same scene
with one thing changed.

A contrastive batch of random scenes rarely holds two captions that differ only in where an
object is, so in-batch negatives never ask the encoders to tell "on the left" from "on the
right" (the first shapes CLIP scored position at chance). Each hard negative re-captions the
image's own scene with one edit of a given kind:

  colour    one object's colour changed
  shape     one object's shape changed
  size      one object's size changed
  position  one object moved to a free cell of the 3×3 grid
  count     one object dropped (scenes of 2+) or a random one added (scenes of 1 or 2)
  binding   the colours (or shapes) of two objects swapped — same words, other pairing

Edits never create a colour–shape pair of `render.HELDOUT_PAIRS`, so the held-out pairs stay
unseen in every training caption. The template (and background) of the original caption is
kept, so a negative differs from the positive only in the edited words.

`batch_colour_swaps` uses the colour edit the other way, as caption augmentation for a decoder
that reads the caption's token ids itself (`config.data.caption_colour_swap`): with the image,
z_i and the CLIP token states unchanged, the shape word has to name the shape next to a colour
word that does not.

    negs = scene_negatives(objects, background, caption, k=4, rng=np.random.default_rng(0))
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from unclip_jax.data import render
from unclip_jax.errors import UserError

KINDS = ("colour", "shape", "size", "position", "count", "binding")
ATTRS = ("shape", "colour", "size", "position")
MAX_OBJECTS = 3          # render.sample_scene draws 1–3 objects; 'count' never adds a 4th
_NAMES = {"shape": tuple(render.SHAPES), "colour": tuple(render.COLOURS),
          "size": tuple(render.SIZES), "position": tuple(render.POSITIONS)}
_HELDOUT = set(render.HELDOUT_PAIRS)


def parse_kinds(kinds: str | Sequence[str]) -> tuple[str, ...]:
    """'colour,shape' or a sequence → a tuple of kinds (UserError for an unknown one)."""
    if isinstance(kinds, str):
        kinds = [k.strip() for k in kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise UserError(f"hard-negative kinds {list(kinds)!r}: choose from {KINDS}")
    return tuple(kinds)


def template_of(caption: str, background: str) -> int:
    """Which `render.caption` template wrote `caption` (inverse of its four forms)."""
    if caption.startswith("there is "):
        return 1
    if caption.startswith(f"a {background} picture with "):
        return 3
    if caption.endswith(f" on a {background} background"):
        return 2
    return 0


def scene(seed: int, split: str, index: int) -> tuple[list[dict], str, str]:
    """(objects with class names, background, caption) of an unclip_shapes example, rebuilt
    from its (builder seed, split, index) — scenes are a pure function of these."""
    sc = render.sample_scene(seed, split, index)
    objs = [{a: o[a] for a in ATTRS} for o in sc["objects"]]
    return objs, sc["background"], sc["caption"]


def _ok(colour: str, shape: str) -> bool:
    return (colour, shape) not in _HELDOUT


def random_object(rng, cell: str) -> dict:
    while True:
        obj = {a: _NAMES[a][int(rng.integers(len(_NAMES[a])))] for a in ("shape", "colour", "size")}
        if _ok(obj["colour"], obj["shape"]):
            return {**obj, "position": cell}


def edit(objects: list[dict], kind: str, rng: np.random.Generator) -> list[dict] | None:
    """`objects` with one edit of `kind` (see the module docstring), or None where the kind
    does not apply to this scene (e.g. binding with one object). Does not modify its input."""
    objs = [dict(o) for o in objects]
    n = len(objs)
    j = int(rng.integers(n))
    if kind in ("colour", "shape"):
        other = "shape" if kind == "colour" else "colour"
        choices = [v for v in _NAMES[kind] if v != objs[j][kind]
                   and _ok(*((v, objs[j][other]) if kind == "colour" else (objs[j][other], v)))]
        objs[j][kind] = choices[int(rng.integers(len(choices)))]
        return objs
    if kind == "size":
        choices = [v for v in _NAMES["size"] if v != objs[j]["size"]]
        objs[j]["size"] = choices[int(rng.integers(len(choices)))]
        return objs
    free = [c for c in _NAMES["position"] if c not in {o["position"] for o in objs}]
    if kind == "position":
        if not free:
            return None
        objs[j]["position"] = free[int(rng.integers(len(free)))]
        return objs
    if kind == "count":
        can_add, can_drop = bool(free) and n < MAX_OBJECTS, n > 1
        if not (can_add or can_drop):
            return None
        if can_drop and (not can_add or rng.random() < 0.5):
            del objs[j]
        else:
            objs.append(random_object(rng, free[int(rng.integers(len(free)))]))
        return objs
    if kind == "binding":
        pairs = [(a, b, attr) for attr in ("colour", "shape") for a in range(n)
                 for b in range(a + 1, n) if objs[a][attr] != objs[b][attr]]
        rng.shuffle(pairs)
        for a, b, attr in pairs:
            objs[a][attr], objs[b][attr] = objs[b][attr], objs[a][attr]
            if all(_ok(o["colour"], o["shape"]) for o in objs):
                return objs
            objs[a][attr], objs[b][attr] = objs[b][attr], objs[a][attr]
        return None
    raise UserError(f"unknown hard-negative kind {kind!r}; choose from {KINDS}")


def scene_negatives(objects: list[dict], background: str, caption: str, k: int,
                    rng: np.random.Generator, kinds: Sequence[str] = KINDS) -> list[str]:
    """k captions of the scene, each with one edit; kinds taken in a random rotation, skipping
    those that do not apply; every caption differs from `caption` (and, while possible, from
    the others)."""
    template = template_of(caption, background)
    kinds = list(kinds)
    out: list[str] = []
    order = list(rng.permutation(len(kinds)))
    tries = 0
    while len(out) < k:
        kind = kinds[order[tries % len(order)]]
        tries += 1
        new = edit(objects, kind, rng)
        if new is None:
            if tries > 50 * max(1, k):
                raise UserError(f"no hard negative of kinds {kinds} applies to the scene "
                                f"{caption!r}; add a kind such as 'colour'")
            continue
        text = render.caption(new, background, template)
        if text == caption or (text in out and tries <= 20 * k):
            continue
        out.append(text)
    return out


def _batch_scenes(captions: Sequence[str], scenes: Sequence[tuple], seeds: np.ndarray):
    """(caption, objects, background, rng) per example of a pipeline batch, each caption
    checked against its rebuilt scene; seeds [B, 2] per-example seeds."""
    for cap, (objs, background, scene_caption), seed in zip(captions, scenes, seeds):
        if cap != scene_caption:
            raise UserError(f"the caption {cap!r} is not its scene's ({scene_caption!r}); was "
                            "the dataset built with another generator or seed?")
        yield cap, objs, background, np.random.default_rng([int(s) % (2 ** 63) for s in seed])


def batch_negatives(captions: Sequence[str], scenes: Sequence[tuple], k: int,
                    seeds: np.ndarray, kinds: Sequence[str]) -> list[str]:
    """Hard negatives for a pipeline batch: captions (B str), scenes (B `scene` tuples),
    seeds [B, 2] per-example seeds → B·k captions, example-major."""
    out = []
    for cap, objs, background, rng in _batch_scenes(captions, scenes, seeds):
        out.extend(scene_negatives(objs, background, cap, k, rng, kinds))
    return out


def batch_colour_swaps(captions: Sequence[str], scenes: Sequence[tuple], seeds: np.ndarray,
                       p: float) -> list[str]:
    """Caption augmentation for a decoder's own caption encoder: each caption (B str), with
    probability p, becomes its scene's caption with one object's colour changed (an `edit` of
    kind 'colour': never into a held-out pair, the template kept); the others are returned
    unchanged. scenes: B `scene` tuples; seeds [B, 2] → B captions."""
    out = []
    for cap, objs, background, rng in _batch_scenes(captions, scenes, seeds):
        if rng.random() < p:
            cap = render.caption(edit(objs, "colour", rng), background,
                                 template_of(cap, background))
        out.append(cap)
    return out

"""GenEval-style prompt sets for the shapes model, written by rule in the dataset's caption
grammar (`render.object_phrase`, joined by `render.caption` template 0) and kept as JSON files
in unclip_jax/eval/prompts/:

  single_seen     24 one-object prompts over 24 colour–shape pairs that training data contains
  single_heldout  12 one-object prompts over the `render.HELDOUT_PAIRS` (3 each)
  two_object      12 two-object prompts, both objects in one row or one column, each with the
                  relation of the first object to the second ('left of', 'above', ...)

No prompt is a caption of the dataset's validation split (seed 0, the largest config's 5,000
scenes; smaller configs are prefixes of it): the rule skips any phrase that is one. (Held-out
pairs never occur in validation; their 108 one-object phrases are nearly all captions of the
test_heldout split, which is generated with them, so that split is not excluded.)
`geneval` names all three sets.

Beside them, `dev` names three development sets, by the same rule but disjoint from them, for
choosing checkpoints and sampling settings, so that the sets above stay a test nothing was
tuned on:

  dev_single_seen     20 one-object prompts over the 20 seen colour–shape pairs the test
                      sets do not use
  dev_single_heldout  12 one-object prompts over the held-out pairs (3 each) in cells and
                      sizes the test set does not use for that pair
  dev_two_object      12 two-object prompts over the 20 dev pairs

    sets = load_prompt_sets('geneval')    # {set name: [entry, ...]}
    entry = {'prompt': 'a small red circle on the left',
             'objects': [{'colour': 'red', 'shape': 'circle', 'size': 'small', 'position': 'left'}],
             'relation': None}            # two-object entries: 'left of' | 'right of' | 'above' | 'below'

`build_prompt_sets()` re-derives the files (`write_prompt_sets`; `unclip-jax eval-prompts
--rebuild DIR` writes them, `unclip-jax eval-prompts` lists the bundled ones).
"""
from __future__ import annotations

import json
import os

from unclip_jax.data import render
from unclip_jax.errors import UserError

SET_NAMES = ("single_seen", "single_heldout", "two_object")
DEV_SET_NAMES = tuple(f"dev_{n}" for n in SET_NAMES)
ALIASES = {"geneval": SET_NAMES, "dev": DEV_SET_NAMES}
PROMPT_DIR = os.path.join(os.path.dirname(__file__), "prompts")
RELATIONS = ("left of", "right of", "above", "below")
EXCLUDED_SPLITS = ("validation",)
EXCLUDED_SCENES = 5_000            # the default config's split size; others are prefixes
_ATTRS = {"colour": tuple(render.COLOURS), "shape": render.SHAPES,
          "size": tuple(render.SIZES), "position": tuple(render.POSITIONS)}
# two-object layouts: (first object's cell, second's); the relation follows from the cells
_LAYOUTS = (("left", "right"), ("top", "bottom"), ("top left", "top right"),
            ("bottom right", "top right"), ("right", "centre"), ("bottom", "centre"))


def split_captions(seed: int = 0, num: int = EXCLUDED_SCENES) -> set[str]:
    """Every caption of the first `num` scenes of the `EXCLUDED_SPLITS` (scenes are a pure
    function of (seed, split, index))."""
    return {render.sample_scene(seed, split, i)["caption"]
            for split in EXCLUDED_SPLITS for i in range(int(num))}


def relation_of(position_a: str, position_b: str) -> str:
    """Relation of an object in cell `position_a` to one in `position_b`, which must share a
    row ('left of' / 'right of') or a column ('above' / 'below')."""
    (ra, ca), (rb, cb) = render.POSITIONS[position_a], render.POSITIONS[position_b]
    if ra == rb and ca != cb:
        return "left of" if ca < cb else "right of"
    if ca == cb and ra != rb:
        return "above" if ra < rb else "below"
    raise ValueError(f"cells {position_a!r} and {position_b!r} share neither a row nor a column")


def prompt_text(objects: list[dict]) -> str:
    """The dataset grammar's caption (template 0) of `objects`."""
    return render.caption(objects, "white", 0)


def _entry(objects: list[dict]) -> dict:
    rel = relation_of(objects[0]["position"], objects[1]["position"]) if len(objects) == 2 else None
    return {"prompt": prompt_text(objects), "objects": objects, "relation": rel}


def _first_unseen(candidates, excluded: set[str]) -> dict:
    for objects in candidates:
        e = _entry(objects)
        if e["prompt"] not in excluded:
            return e
    raise ValueError("every candidate is a dataset caption")


def _single(pairs, excluded: set[str], offset: int = 0) -> list[dict]:
    """One-object prompt k over pairs[k]: cell (k + offset) mod 9, size (k + k // 9) mod 3
    (the next size, then the next cell, whenever a phrase is `excluded`)."""
    cells, sizes = _ATTRS["position"], _ATTRS["size"]
    return [_first_unseen(([dict(colour=colour, shape=shape, size=sizes[(k + k // 9 + j) % 3],
                                 position=cells[(k + offset + i) % 9])]
                           for i in range(9) for j in range(3)), excluded)
            for k, (colour, shape) in enumerate(pairs)]


def _two(pairs, excluded: set[str], num: int = 12, layout_offset: int = 0) -> list[dict]:
    """Two-object prompt k: pairs[k], the next pair (from k + 7 on) of another colour and
    shape, layout k + layout_offset (reversed on the second pass over `_LAYOUTS`)."""
    sizes, out = _ATTRS["size"], []
    for k in range(num):
        (ca, sa), (cb, sb) = pairs[k], next(
            (c, s) for j in range(7, 7 + len(pairs)) for c, s in [pairs[(k + j) % len(pairs)]]
            if c != pairs[k][0] and s != pairs[k][1])
        m = k + layout_offset
        pa, pb = _LAYOUTS[m % len(_LAYOUTS)]
        if (m // len(_LAYOUTS)) % 2:
            pa, pb = pb, pa
        out.append(_first_unseen(
            ([dict(colour=ca, shape=sa, size=sizes[(k + j) % 3], position=pa),
              dict(colour=cb, shape=sb, size=sizes[(k + j + 1) % 3], position=pb)]
             for j in range(3)), excluded))
    return out


def build_prompt_sets(excluded: set[str] | None = None) -> dict[str, list[dict]]:
    """The test sets and the dev sets by rule. Seen pair k: colour k mod 8, shape
    (k + 2·(k // 8)) mod 6 (the next shape if that pair is held out); the dev pairs are the
    other 20 seen pairs, colour-major. One-object and two-object prompts: `_single`, `_two`.
    The dev sets also exclude every test prompt, and start 4 cells and 3 layouts further on."""
    excluded = split_captions() if excluded is None else excluded
    colours, shapes = _ATTRS["colour"], _ATTRS["shape"]
    seen = []            # 24 distinct pairs: every colour 3×, every shape 4×, none held out
    for k in range(24):
        shape = (k + 2 * (k // 8)) % 6
        while (colours[k % 8], shapes[shape]) in render.HELDOUT_PAIRS:
            shape = (shape + 1) % 6
        seen.append((colours[k % 8], shapes[shape]))
    heldout = [p for p in render.HELDOUT_PAIRS for _ in range(3)]
    test = {"single_seen": _single(seen, excluded),
            "single_heldout": _single(heldout, excluded),
            "two_object": _two(seen, excluded)}
    dev_pairs = [(c, s) for c in colours for s in shapes
                 if (c, s) not in seen and (c, s) not in render.HELDOUT_PAIRS]
    not_dev = set(excluded) | {e["prompt"] for entries in test.values() for e in entries}
    dev = {"dev_single_seen": _single(dev_pairs, not_dev, offset=4),
           "dev_single_heldout": _single(heldout, not_dev, offset=4),
           "dev_two_object": _two(dev_pairs, not_dev, layout_offset=3)}
    return {**test, **dev}


def check_entry(entry: dict, where: str) -> dict:
    """A prompt entry whose attributes name known classes, whose prompt is their caption and
    whose relation (two objects) matches their cells; UserError otherwise."""
    objs = entry.get("objects") if isinstance(entry, dict) else None
    if not isinstance(objs, list) or len(objs) not in (1, 2):
        raise UserError(f"{where}: each prompt needs 'objects', a list of one or two objects")
    for o in objs:
        for k, names in _ATTRS.items():
            if not isinstance(o, dict) or o.get(k) not in names:
                raise UserError(f"{where}: object {o!r} needs {k} in {', '.join(names)}")
    if entry.get("prompt") != prompt_text(objs):
        raise UserError(f"{where}: prompt {entry.get('prompt')!r} is not the caption of its "
                        f"objects, {prompt_text(objs)!r}")
    if len(objs) == 2:
        try:
            rel = relation_of(objs[0]["position"], objs[1]["position"])
        except ValueError as e:
            raise UserError(f"{where}: {e}") from None
        if entry.get("relation") != rel:
            raise UserError(f"{where}: relation {entry.get('relation')!r} should be {rel!r}")
    return {"prompt": entry["prompt"], "objects": [{k: o[k] for k in _ATTRS} for o in objs],
            "relation": entry.get("relation") if len(objs) == 2 else None}


def load_prompt_set(name: str) -> list[dict]:
    """Entries of the bundled set `name` (one of SET_NAMES, DEV_SET_NAMES) or of a JSON file
    `name` (a list of entries, or {'prompts': [...]})."""
    path = name if name.endswith(".json") else os.path.join(PROMPT_DIR, f"{name}.json")
    if not name.endswith(".json") and name not in SET_NAMES + DEV_SET_NAMES:
        raise UserError(f"unknown prompt set {name!r}; choose one of "
                        f"{', '.join((*ALIASES, *SET_NAMES, *DEV_SET_NAMES))} or a .json file")
    if not os.path.isfile(path):
        raise UserError(f"prompt file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"prompt file {path} is not readable JSON: {e}") from None
    entries = data.get("prompts") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise UserError(f"prompt file {path} holds no prompts (a list of entries, or "
                        "{'prompts': [...]})")
    return [check_entry(e, f"{os.path.basename(path)}[{i}]") for i, e in enumerate(entries)]


def load_prompt_sets(spec: str) -> dict[str, list[dict]]:
    """`spec`: 'geneval', 'dev', a set name, a .json file, or a comma list of these
    → {name: entries}."""
    names = [n.strip() for n in str(spec).split(",") if n.strip()]
    if not names:
        raise UserError("--prompts is empty; choose geneval, dev, a set name or a .json file")
    out = {}
    for n in names:
        for m in ALIASES.get(n, (n,)):
            key = os.path.splitext(os.path.basename(m))[0]
            out[key] = load_prompt_set(m)
    return out


def write_prompt_sets(directory: str = PROMPT_DIR) -> list[str]:
    """Write `build_prompt_sets()` as DIRECTORY/NAME.json (default: the bundled files);
    → the paths written."""
    from unclip_jax import atomic
    return [atomic.write_json(os.path.join(directory, f"{name}.json"), {"prompts": entries},
                              indent=1)
            for name, entries in build_prompt_sets().items()]

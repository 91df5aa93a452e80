"""Measurements of the editing paths on a model, on real renders of shapes scenes.

    unclip-jax eval-editing --classifier CLF [--checkpoint DIR] [--final upsampler1]
        [--scenes 16] [--negatives 32] --out editing.json

(`unclip_jax.cli.eval_editing`: `load_model`, then `measure`.)

- inpaint / add: a one-object validation scene, the mask over an empty cell of the 3×3 grid,
  the prompt = the caption with a new object of a random colour in that cell. Scored: PSNR
  of the kept pixels (mask 0 at the final size) against the input; the attribute
  classifier's colour on the cell's crop (= the new colour?). Control: the same crop of the
  real render of the target scene.
- inpaint / remove: a two-object scene, the mask over one object's cell, the prompt = the
  caption of the other object. Scored: the cell is empty (under 3% of its pixels further
  than 40 levels from the background colour). Control: the input (object present).
- img2img: mean absolute difference to the input (uint8 levels) over a strength sweep.
- negative prompt: red rate (classifier colour = red) for a prompt naming no colour, with
  and without `--negative` naming red, with 95% bootstrap intervals.

Images are rendered at 256 px and given to the pipeline at that size; the final size is
that of `--final` (the upsamplers after it are not loaded, to save time on a CPU).
"""
from __future__ import annotations

import jax
import numpy as np

from unclip_jax.data import render
from unclip_jax.eval.data import ATTRIBUTES
from unclip_jax.eval.metrics import bootstrap_ci
from unclip_jax.eval.upsamplers import psnr


def cell_box(position: str, size: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) pixels of a 3×3 grid cell at image size `size`."""
    row, col = render.POSITIONS[position]
    a, b = round(row * size / 3), round((row + 1) * size / 3)
    c, d = round(col * size / 3), round((col + 1) * size / 3)
    return a, c, b, d


def cell_mask(position: str, size: int) -> np.ndarray:
    """uint8 [size, size] mask, white (255) over the cell."""
    m = np.zeros((size, size), np.uint8)
    t, l, b, r = cell_box(position, size)
    m[t:b, l:r] = 255
    return m


def crop_cell(images: np.ndarray, position: str) -> np.ndarray:
    t, l, b, r = cell_box(position, images.shape[1])
    return images[:, t:b, l:r]


def cell_empty(images: np.ndarray, position: str, background: str, *, level: int = 40,
               fraction: float = 0.03) -> np.ndarray:
    """bool [N]: under `fraction` of the cell's pixels differ from the background colour by
    more than `level` (max over RGB)."""
    cells = crop_cell(images, position).astype(np.int32)
    bg = np.asarray(render.BACKGROUNDS[background], np.int32)
    far = np.abs(cells - bg).max(axis=-1) > level
    return far.mean(axis=(1, 2)) < fraction


def _scenes(pred, count: int, start: int = 0):
    i = start
    while count:
        s = render.sample_scene(0, "validation", i)
        i += 1
        if pred(s):
            count -= 1
            yield s


PARTS = ("add", "negative", "remove", "img2img", "mix")


def measure(pipe, clf, *, scenes: int = 16, negatives: int = 32, seed: int = 0,
            strengths=(0.0, 0.25, 0.5, 0.75, 1.0), save=None, parts=PARTS) -> dict:
    """Every measurement of the module docstring → a JSON-able dict; `save(res)` (optional)
    is called after each part with the results so far (and the seconds each part took)."""
    import time
    clock = [time.time()]

    def done(part):
        res.setdefault("seconds", {})[part] = round(time.time() - clock[0], 1)
        clock[0] = time.time()
        if save is not None:
            save(res)
    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    res = {}

    if "add" in parts:
        _add(pipe, clf, res, rng, key, scenes, seed)
        done("inpaint_add")
    if "negative" in parts:
        _negative(pipe, clf, res, key, negatives, seed)
        done("negative")
    if "remove" in parts:
        _remove(pipe, res, key, scenes, seed)
        done("inpaint_remove")
    if "img2img" in parts:
        _img2img(pipe, res, scenes, seed, strengths, done)
    if "mix" in parts:
        _mix(pipe, res, seed)
        done("mix")
    return res


def _add(pipe, clf, res, rng, key, scenes, seed):
    colours = list(render.COLOURS)
    srcs, masks, prompts, targets, cells, reals = [], [], [], [], [], []
    for s in _scenes(lambda s: len(s["objects"]) == 1, scenes):
        free = [p for p in render.POSITIONS if p != s["objects"][0]["position"]]
        pos = free[int(rng.integers(len(free)))]
        new = dict(shape=render.SHAPES[int(rng.integers(len(render.SHAPES)))],
                   colour=colours[int(rng.integers(len(colours)))], size="large",
                   position=pos, jitter=np.zeros(2), angle=0.0)
        target = dict(s, objects=s["objects"] + [new])
        srcs.append(render.render(s))
        reals.append(render.render(target))
        masks.append(cell_mask(pos, 256))
        prompts.append(render.caption(target["objects"], s["background"], 0))
        targets.append(colours.index(new["colour"]))
        cells.append(pos)
    out, inter = pipe.inpaint(srcs, masks, prompts, seed, return_intermediates=True)
    size = out.shape[1]
    keep = inter["mask"][..., 0] == 0
    from unclip_jax.sample.images import to_uint8
    known = to_uint8(inter["known"])      # the input at the final size
    res["inpaint_keep_psnr_db"] = [float(psnr(out[i][keep[i]][None], known[i][keep[i]][None])[0])
                                   for i in range(len(out))]
    crops = [crop_cell(out[i:i + 1], cells[i])[0] for i in range(len(out))]
    real_crops = [crop_cell(_resize([reals[i]], size), cells[i])[0] for i in range(len(out))]
    got = clf.predict(_resize(crops, clf.image_size))["colour"]
    real = clf.predict(_resize(real_crops, clf.image_size))["colour"]
    hit = (got == np.asarray(targets)).astype(float)
    res["inpaint_add_colour"] = bootstrap_ci(hit, jax.random.fold_in(key, 1))
    res["inpaint_add_colour_real_control"] = bootstrap_ci(
        (real == np.asarray(targets)).astype(float), jax.random.fold_in(key, 2))
    res["inpaint_add_prompts"] = prompts[:4]


def _negative(pipe, clf, res, key, negatives, seed):
    colours = list(render.COLOURS)
    prompt, negative = "a large circle in the centre", "a large red circle in the centre"
    red = colours.index("red")
    plain = pipe.generate([prompt], seed, num_images_per_prompt=negatives)
    neg = pipe.generate([prompt], seed, num_images_per_prompt=negatives,
                        negative_prompts=negative)
    res["negative_prompt"] = {"prompt": prompt, "negative": negative}
    res["red_rate_plain"] = bootstrap_ci((clf.predict(plain)["colour"] == red).astype(float),
                                         jax.random.fold_in(key, 4))
    res["red_rate_negative"] = bootstrap_ci((clf.predict(neg)["colour"] == red).astype(float),
                                            jax.random.fold_in(key, 5))
    names = ATTRIBUTES["colour"]
    res["colours_plain"] = [names[i] for i in clf.predict(plain)["colour"]]
    res["colours_negative"] = [names[i] for i in clf.predict(neg)["colour"]]
    diff = np.stack([(clf.predict(plain)["colour"] == red),
                     (clf.predict(neg)["colour"] == red)]).astype(float)
    res["red_rate_drop"] = bootstrap_ci(diff[0] - diff[1],
                                        jax.random.fold_in(key, 6))


def _remove(pipe, res, key, scenes, seed):
    srcs, masks, prompts, info = [], [], [], []
    for s in _scenes(lambda s: len(s["objects"]) == 2, scenes, 1000):
        gone, kept = s["objects"]
        srcs.append(render.render(s))
        masks.append(cell_mask(gone["position"], 256))
        prompts.append(render.caption([kept], s["background"], 0))
        info.append((gone["position"], s["background"]))
    out = pipe.inpaint(srcs, masks, prompts, seed)
    size = out.shape[1]
    empty = np.array([cell_empty(out[i:i + 1], *info[i])[0] for i in range(len(out))])
    before = np.array([cell_empty(_resize([srcs[i]], size), *info[i])[0]
                       for i in range(len(out))])
    res["inpaint_remove_empty"] = bootstrap_ci(empty.astype(float), jax.random.fold_in(key, 3))
    res["inpaint_remove_empty_input_control"] = float(before.mean())


def _img2img(pipe, res, scenes, seed, strengths, done):
    srcs, prompts = [], []
    for s in _scenes(lambda s: True, max(scenes // 2, 1), 2000):
        srcs.append(render.render(s))
        prompts.append(s["caption"])
    size = stage_size(pipe)
    known = _resize(srcs, size).astype(np.float64)
    sweep = {}
    for st in strengths:
        out = pipe.img2img(srcs, prompts, seed, strength=st)
        sweep[str(st)] = float(np.abs(out.astype(np.float64) - known).mean())
        res["img2img_mean_abs_diff"] = dict(sweep)
        done(f"img2img_{st}")


def stage_size(pipe) -> int:
    """The final image size of `pipe`'s chain."""
    return pipe.image_size(pipe.own_stages()[-1])


def _mix(pipe, res, seed, weights=(0.0, 0.25, 0.5, 0.75, 1.0), n: int = 8):
    """Two real renders a (red circle), b (blue square): the decoded mix's CLIP image
    embedding against z_a and z_b as a's weight grows; and weights (1, 0) against a alone."""
    base = dict(size="large", position="centre", jitter=np.zeros(2), angle=0.0)
    a = render.render(dict(objects=[dict(base, shape="circle", colour="red")],
                           background="white"))
    b = render.render(dict(objects=[dict(base, shape="square", colour="blue")],
                           background="black"))
    clip_size = pipe.stages["clip"].model.image_size
    z_ab = pipe.encode_images(_resize([a, b], clip_size))
    unit = z_ab / np.linalg.norm(z_ab, axis=-1, keepdims=True)
    rows = {}
    for w in weights:
        out = pipe.mix([a, b], [w, 1 - w], seed, n=n)
        z = pipe.encode_images(_resize(out, clip_size))
        cos = (z / np.linalg.norm(z, axis=-1, keepdims=True)) @ unit.T
        rows[str(w)] = {"cos_a": float(cos[:, 0].mean()), "cos_b": float(cos[:, 1].mean())}
    res["mix_clip_cosine"] = rows
    one = pipe.mix([a, b], [1.0, 0.0], seed, n=2)
    alone = pipe.mix([a], [1.0], seed, n=2)
    res["mix_one_hot_max_abs_diff"] = int(np.abs(one.astype(int) - alone).max())


def _resize(images, size: int) -> np.ndarray:
    from PIL import Image
    return np.stack([np.asarray(Image.fromarray(np.asarray(im, np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC)) for im in images])


FINAL_STAGES = ("decoder", "upsampler1", "upsampler2")


def load_model(checkpoint: str | None = None, final: str = "upsampler1"):
    """The `UnCLIP` of model directory `checkpoint` (None: the bundled model) with its stages
    up to `final` (one of FINAL_STAGES; the upsamplers after it are not loaded) and its
    diffusion prior (never the AR prior)."""
    from unclip_jax.errors import UserError
    from unclip_jax.sample.loading import MODEL_DIRS, stage_directories
    from unclip_jax.sample.unclip import UnCLIP
    if final not in FINAL_STAGES:
        raise UserError(f"final={final!r}: choose one of {', '.join(FINAL_STAGES)}")
    last = MODEL_DIRS.index(final)
    dirs = {n: d for n, d in stage_directories(checkpoint, "auto").items()
            if n != "ar_prior" and MODEL_DIRS.index(n) <= last}
    return UnCLIP.load(**dirs, progress=False)

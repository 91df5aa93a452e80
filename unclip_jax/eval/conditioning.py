"""How much a decoder uses what it is conditioned on, measured on real `unclip_shapes` scenes.

A decoder that draws the right colour in the right cell but blobs of the wrong shape either
was never told the shape or does not listen. This asks the second question directly: the
decoder denoises real validation images x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε and its ε error is
compared, on the same x0, t and ε, across conditions:

  full              z_i of the real image + its own caption's tokens
  caption: KIND     the caption of the same scene with one KIND edited (colour, shape, size,
                    position; `unclip_jax.data.hard_negatives.edit`, same template)
  no caption        z_i only (the caption dropped, as classifier-free guidance does)
  no z_i            the caption only
  nothing           both dropped (the unconditional model)

`relative` = error / error(full) − 1: how much worse the decoder denoises when told something
false (or nothing) about the scene. A decoder that uses the shape word of its caption has a
clearly positive `caption: shape`; one that ignores it has ≈ 0. Errors are reported over the
whole image and over the object region (pixels that differ from the background, grown by one
pixel): on these scenes the objects cover a few percent of the pixels, so the whole-image error
is dominated by the flat background.

    res = conditioning_usage(model_dir, data_dir, limit=96)
    res["object"]["caption: shape"]["relative"]

CLI: `unclip-jax eval-conditioning --checkpoint MODEL --data-dir DATA` (`cli/eval_conditioning`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from unclip_jax.data import hard_negatives as hn
from unclip_jax.data import render
from unclip_jax.diffusion.object_region import object_region
from unclip_jax.errors import UserError

EDITS = ("colour", "shape", "size", "position")
CONDITIONS = ("full", *(f"caption: {k}" for k in EDITS), "no caption", "no z_i", "nothing")
TIMESTEPS = (100, 300, 500, 700)


def edited_captions(scenes: Sequence[tuple], kind: str, seed: int = 0) -> list[str]:
    """For each `(objects, background, caption)` scene, its caption with one `kind` edit (same
    template; `hard_negatives.edit`, which never writes a held-out colour–shape pair)."""
    rng = np.random.default_rng(seed)
    out = []
    for objects, background, caption in scenes:
        new = hn.edit(objects, kind, rng)
        if new is None:
            raise UserError(f"no {kind} edit applies to the scene {caption!r}")
        out.append(render.caption(new, background, hn.template_of(caption, background)))
    return out


def object_mask(images: np.ndarray, threshold: int = 8) -> np.ndarray:
    """uint8 images [B, H, W, 3] → bool [B, H, W]: pixels farther than `threshold` (0–255, any
    channel) from the background colour (the median of the border pixels), grown by one pixel
    in each direction (`diffusion.object_region`)."""
    return np.asarray(object_region(np.asarray(images, np.float32), threshold))


def eps_errors(model_fn: Callable, alphas_cumprod: np.ndarray, x0: np.ndarray, mask: np.ndarray,
               conditions: dict, *, timesteps: Sequence[int] = TIMESTEPS, seeds: int = 2) -> dict:
    """Mean squared ε error of `model_fn(x_t, t, **conditions[name])` (its first 3 output
    channels), per condition, on the same x0 [B, H, W, 3] in [-1, 1], timesteps and noise.

    Returns {'image': {name: mse}, 'object': {name: mse over `mask` [B, H, W] pixels}}.
    """
    import jax
    import jax.numpy as jnp
    x0 = jnp.asarray(x0, jnp.float32)
    w = jnp.asarray(mask, jnp.float32)[..., None]
    if float(w.sum()) == 0:
        raise UserError("no object pixels in these images (is the data unclip_shapes?)")
    sums = {n: np.zeros(2) for n in conditions}
    for s in range(seeds):
        for t in timesteps:
            noise = jax.random.normal(jax.random.fold_in(jax.random.key(s), int(t)), x0.shape)
            a = float(np.sqrt(alphas_cumprod[t]))
            x_t = a * x0 + float(np.sqrt(1.0 - alphas_cumprod[t])) * noise
            tt = jnp.full((x0.shape[0],), int(t), jnp.int32)
            for name, kw in conditions.items():
                err = (jnp.asarray(model_fn(x_t, tt, **kw))[..., :3] - noise) ** 2
                sums[name] += [float(err.mean()), float((err * w).sum() / (w.sum() * 3))]
    n = seeds * len(timesteps)
    return {region: {name: float(v[i] / n) for name, v in sums.items()}
            for i, region in enumerate(("image", "object"))}


def relative(errors: dict) -> dict:
    """{region: {name: {'eps_mse', 'relative'}}} with relative = mse / mse['full'] − 1."""
    return {region: {n: {"eps_mse": v, "relative": v / row["full"] - 1.0} for n, v in row.items()}
            for region, row in errors.items()}


def conditioning_usage(model_dir: str | None, data_dir: str, *, split: str = "validation",
                       dataset: str | None = None, limit: int = 96,
                       timesteps: Sequence[int] = TIMESTEPS, seeds: int = 2) -> dict:
    """`relative(eps_errors(...))` of the decoder of `model_dir` (None: the bundled model; it
    needs clip/, tokenizer/ and decoder/) on the first `limit` single-object scenes of `split`,
    plus 'n' (scenes) and 'timesteps'."""
    import jax.numpy as jnp

    from unclip_jax.data import sources
    from unclip_jax.diffusion.schedules import from_config
    from unclip_jax.eval.data import load_examples, resolve_dataset
    from unclip_jax.sample import UnCLIP, stage_fns

    pipe = UnCLIP.from_directory(model_dir, prior="none", progress=False)
    pipe.require("clip", "tokenizer", "decoder")
    dec = pipe.stages["decoder"]
    if not dec.model.embed_dim:
        raise UserError(f"{dec.directory} is not a z_i-conditioned decoder")
    name = resolve_dataset(data_dir, dataset)
    seed_scene = int(sources.builder_for(name, data_dir).builder_config.seed)
    small = load_examples(data_dir, split, image_size=pipe.image_size("decoder"), dataset=name,
                          limit=limit)
    big = load_examples(data_dir, split, image_size=pipe.image_size("clip"), dataset=name,
                        limit=limit)
    scenes = [hn.scene(seed_scene, split, int(i)) for i in small["index"]]
    z_i = jnp.asarray(pipe.encode_images(big["image"]))
    texts = {"full": pipe.encode_text([c for _, _, c in scenes])}
    for k in EDITS:
        texts[f"caption: {k}"] = pipe.encode_text(edited_captions(scenes, k))
    B = len(scenes)
    yes, no = jnp.zeros((B,), bool), jnp.ones((B,), bool)
    conditions = {}
    for cond in CONDITIONS:
        text = texts.get(cond, texts["full"])
        conditions[cond] = dict(
            z_i=z_i, text_states=jnp.asarray(text["states"], jnp.float32),
            text_mask=jnp.asarray(text["mask"], bool),
            drop_text=no if cond in ("no caption", "nothing") else yes,
            drop_image_embed=no if cond in ("no z_i", "nothing") else yes)
        if getattr(dec.model, "caption_vocab", 0):
            conditions[cond]["caption_ids"] = jnp.asarray(text["ids"], jnp.int32)
    variables = stage_fns.as_variables(dec.params)
    apply = jax_jit_apply(dec.model, variables)
    sched = from_config(dec.config.diffusion)
    if max(timesteps) >= sched.num_steps:
        raise UserError(f"timestep {max(timesteps)} is past the decoder's {sched.num_steps} "
                        "training steps; give timesteps below it")
    x0 = small["image"].astype(np.float32) / 127.5 - 1.0
    errors = eps_errors(apply, np.asarray(sched.alphas_cumprod), x0, object_mask(small["image"]),
                        conditions, timesteps=timesteps, seeds=seeds)
    return {**relative(errors), "n": B, "timesteps": list(timesteps), "seeds": seeds,
            "decoder": dec.directory}


def jax_jit_apply(model, variables) -> Callable:
    """`model.apply(variables, x_t, t, **kw)` compiled once per argument shapes."""
    import jax
    fn = jax.jit(lambda v, x_t, t, kw: model.apply(v, x_t, t, **kw))
    return lambda x_t, t, **kw: fn(variables, x_t, t, kw)

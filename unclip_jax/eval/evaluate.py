"""`evaluate(checkpoint_dir, data_dir, ...)`: sample images for a split's captions through the
unCLIP chain and score them against the split's real images.

Variants (paper §5.1 in miniature), all sharing the seed and so the same decoder noise x_T:

  unclip         prior + decoder: z_i sampled by the prior from the caption (the diffusion
                 prior when the model has one, else the AR prior)
  unclip_ar      the same with the model's AR prior (ar_prior/ beside prior/)
  zeroshot_text  the caption's CLIP text embedding fed zero-shot to the image-embedding
                 decoder: z_i := normalize(z_t) · s, s = mean ‖z_i‖ of the real images' CLIP
                 image embeddings (the scale of raw CLIP image embeddings; a decoder with
                 model.normalize_z_i ignores it)
  text_decoder   (only with `text_decoder=DIR`) a decoder trained with the CLIP text embedding
                 in place of z_i, fed z_t; it needs a separately trained decoder checkpoint
  true_z_i       the decoder fed the CLIP image embedding of the prompt's own real image (no
                 prior): the decoder's ceiling, what it draws when z_i is exactly right

Per variant: CLIP score (100 × mean cosine to the caption's text embedding, and the raw mean
cosine), Fréchet distance between CLIP image embeddings of generated and real images,
per-prompt diversity (mean pairwise cosine distance of CLIP image embeddings), and, with an
attribute classifier, the fraction of images whose colour / shape / position / size match the
caption. Prior metrics: cosine of the sampled z_i to the real image's z_i and top-1 retrieval
of the real z_i among all prompts' real embeddings (with the z_t-as-z_i baseline beside them).
Every mean carries a 95% percentile-bootstrap interval from a fixed key; Fréchet distances a
bootstrap interval over both sets.

Prompts are the captions of the split's first `num_prompts` single-object scenes (so every
prompt has attribute labels); the real reference set is the first
`max(num_prompts, num_prompts · images_per_prompt)` single-object scenes, read at the chain's
output resolution so that real and generated images are downsampled alike to the CLIP input
(CLIP's preprocessing) and classifier input (antialiased linear) sizes.
"""
from __future__ import annotations

import os
import time

import jax
import numpy as np

from unclip_jax.errors import UserError
from unclip_jax.eval import metrics
from unclip_jax.eval.data import ATTRIBUTES, EVAL_SPLITS, load_examples
from unclip_jax.sample.checks import check_count
from unclip_jax.sample.images import to_uint8
from unclip_jax.stages import UPSAMPLERS

VARIANTS = ("unclip", "unclip_ar", "zeroshot_text", "text_decoder", "true_z_i")
# fold_in ids of the bootstrap keys, one per metric family
_CI_IDS = {"clip": 11, "fd": 12, "div": 13, "attr": 14, "prior": 15, "upsampler": 16}


def decode_in_chunks(pipe, z_i, text: dict, key, chunk: int, decode_kw: dict) -> np.ndarray:
    """The chain's final images uint8 [B, H, W, 3] from z_i [B, D] and text (from
    `encode_text`), `chunk` examples per call (bounded memory, one compiled shape: the last
    chunk is padded). Chunk c draws its noise from fold_in(key, c)."""
    z_i = np.asarray(z_i, np.float32)
    n, out = len(z_i), []
    chunk = min(int(chunk), n)
    for c, start in enumerate(range(0, n, chunk)):
        rows = np.arange(start, start + chunk).clip(max=n - 1)
        sub = {k: np.asarray(v)[rows] for k, v in text.items()}
        res = pipe.decode(z_i[rows], jax.random.fold_in(key, c), text=sub, **decode_kw)
        last = next(res[k] for k in ("upsampler2", "upsampler1", "decoder") if k in res)
        out.append(to_uint8(last)[:min(chunk, n - start)])
    return np.concatenate(out)


def score_images(images: np.ndarray, *, real_feats: np.ndarray, text_embeds: np.ndarray,
                 labels: dict, images_per_prompt: int, encode, classifier, key,
                 num_resamples: int = 1000) -> dict:
    """Metrics of generated images uint8 [P·K, H, W, 3] (prompt-major) given the real images'
    CLIP features [M, D], the captions' text embeddings [P·K, D], labels {head: [P·K]}.
    `encode(images uint8) → CLIP image embeddings` (CLIP's own preprocessing resizes);
    classifier may be None."""
    feats = encode(images)
    clip = metrics.clip_score(feats, text_embeds)
    out = {"clip_score": _scaled(metrics.bootstrap_ci(clip["cosine"], _k(key, "clip"),
                                                      num_resamples=num_resamples), 100.0),
           "clip_cosine": metrics.bootstrap_ci(clip["cosine"], _k(key, "clip"),
                                               num_resamples=num_resamples)}
    out["fd_clip"] = metrics.bootstrap_statistic(metrics.frechet_distance, (feats, real_feats),
                                                 _k(key, "fd"),
                                                 num_resamples=min(100, num_resamples))
    if images_per_prompt >= 2:
        div = metrics.per_prompt_diversity(feats.reshape(-1, images_per_prompt, feats.shape[-1]))
        out["diversity"] = metrics.bootstrap_ci(div, _k(key, "div"), num_resamples=num_resamples)
    if classifier is not None:
        out["attributes"] = attribute_scores(classifier, images, labels, _k(key, "attr"),
                                             num_resamples)
    return out


def attribute_scores(classifier, images, labels: dict, key, num_resamples: int = 1000) -> dict:
    """{head: CI of the fraction of images whose predicted class equals the label, 'all'}."""
    pred = classifier.predict(images)
    correct = {k: np.asarray(pred[k]) == np.asarray(labels[k]) for k in ATTRIBUTES}
    correct["all"] = np.all(np.stack(list(correct.values())), axis=0)
    return {k: metrics.bootstrap_ci(v.astype(np.float64), jax.random.fold_in(key, i),
                                    num_resamples=num_resamples)
            for i, (k, v) in enumerate(correct.items())}


def _k(key, name):
    return jax.random.fold_in(key, _CI_IDS[name])


def _scaled(ci: dict, factor: float) -> dict:
    return {k: (v * factor if k != "n" else v) for k, v in ci.items()}


def prior_scores(z_sampled, z_true, images_per_prompt: int, key,
                 num_resamples: int = 1000) -> dict:
    """z_sampled [P·K, D] (prompt-major), z_true [P, D] → CIs of cosine (all samples) and
    top-1 retrieval (first sample of each prompt among the P true embeddings)."""
    z_sampled = np.asarray(z_sampled).reshape(len(z_true), images_per_prompt, -1)
    cos = metrics.prior_cosine(z_sampled.reshape(-1, z_sampled.shape[-1]),
                               np.repeat(z_true, images_per_prompt, axis=0))
    top1 = metrics.retrieval_top1(z_sampled[:, 0], z_true).astype(np.float64)
    return {"cosine": metrics.bootstrap_ci(cos, jax.random.fold_in(key, 0),
                                           num_resamples=num_resamples),
            "top1": metrics.bootstrap_ci(top1, jax.random.fold_in(key, 1),
                                         num_resamples=num_resamples)}


def evaluate(checkpoint_dir: str, data_dir: str, *, split: str = "validation",
             num_prompts: int = 64, images_per_prompt: int = 4, prior_steps=None,
             decoder_steps=None, upsampler_steps=None, prior_guidance=None,
             decoder_guidance=None, seed: int = 0, classifier: str | None = None,
             text_decoder: str | None = None, dataset: str | None = None,
             variants: tuple[str, ...] = ("unclip", "zeroshot_text"),
             num_resamples: int = 1000, batch_size: int = 256, chunk: int = 64,
             upsampler_images: int = 0, progress: bool = False) -> dict:
    """Evaluate the checkpoint directory (clip/, tokenizer/, prior/ or ar_prior/, decoder/,
    upsampler1/, upsampler2/) on `split` of the unclip_shapes build in `data_dir`.

    classifier: an attribute-classifier directory (`attributes.train_attribute_classifier`);
    text_decoder: a decoder trained on CLIP text embeddings (adds the 'text_decoder' variant).
    chunk: images generated per call (memory bound); batch_size: images per CLIP call.
    upsampler_images > 0 adds 'upsamplers': each upsampler's PSNR on that many real images
    beside bicubic (`unclip_jax.eval.upsamplers`).
    Steps/guidance: None uses each stage's config. Returns a JSON-serialisable dict
    {'settings', 'variants': {name: metrics}, 'real': metrics of the real images,
    'prior': {...}, 'classifier': {...}} (see the module docstring).
    """
    from unclip_jax.eval.attributes import AttributeClassifier
    from unclip_jax.sample.unclip import UnCLIP

    if split not in EVAL_SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {list(EVAL_SPLITS)}")
    num_prompts = check_count("num_prompts", num_prompts)
    chunk = check_count("chunk", chunk)
    images_per_prompt = check_count("images_per_prompt", images_per_prompt)
    variants = tuple(variants) + (("text_decoder",) if text_decoder and
                                  "text_decoder" not in variants else ())
    for v in variants:
        if v not in VARIANTS:
            raise UserError(f"unknown variant {v!r}; choose from {list(VARIANTS)}")
    if not os.path.isdir(checkpoint_dir):
        raise UserError(f"checkpoint directory {checkpoint_dir} does not exist; pass the model "
                        "directory with clip/, tokenizer/, prior/, decoder/ ...")
    start = time.time()
    # 'unclip' is the diffusion prior's row whatever the model's default prior is
    pipe = UnCLIP.from_directory(checkpoint_dir, progress=progress,
                                 prior="diffusion" if "unclip" in variants else "auto")
    pipe.require("clip", "tokenizer", "decoder")
    if "unclip" in variants:
        pipe.require("prior")
    pipe_ar = (UnCLIP.from_directory(checkpoint_dir, prior="ar", progress=progress)
               if "unclip_ar" in variants else None)
    clf = AttributeClassifier.load(classifier) if classifier else None
    feature_size = int(pipe.stages["clip"].model.image_size)
    # real images at the chain's output size, so real and generated images go through the
    # same downsampling to the CLIP and classifier resolutions
    out_size = pipe.image_size(next(n for n in ("upsampler2", "upsampler1", "decoder")
                                    if n in pipe.stages))

    num_ref = max(num_prompts, num_prompts * images_per_prompt)
    real = load_examples(data_dir, split, image_size=out_size, dataset=dataset, limit=num_ref)
    if len(real["image"]) < num_prompts:
        raise UserError(f"split {split!r} has only {len(real['image'])} single-object scenes; "
                        f"ask for num_prompts ≤ {len(real['image'])}")
    prompts = real["caption"][:num_prompts]
    expanded = [p for p in prompts for _ in range(images_per_prompt)]
    labels = {k: np.repeat(real[k][:num_prompts], images_per_prompt) for k in ATTRIBUTES}

    def encode(images):
        return np.concatenate([pipe.encode_images(images[i:i + batch_size])
                               for i in range(0, len(images), batch_size)])

    key = jax.random.key(seed)
    real_feats = encode(real["image"])
    text = pipe.encode_text(expanded)
    common = dict(real_feats=real_feats, text_embeds=text["embeds"], labels=labels,
                  images_per_prompt=images_per_prompt, encode=encode, classifier=clf,
                  num_resamples=num_resamples)
    decode_kw = dict(decoder_steps=decoder_steps, decoder_guidance=decoder_guidance,
                     upsampler_steps=upsampler_steps)
    results = {"variants": {}, "timings_s": {}}
    z_true = real_feats[:num_prompts]
    embed_scale = float(np.linalg.norm(real_feats, axis=-1).mean())
    z_text = metrics.l2_normalize(text["embeds"]).astype(np.float32) * embed_scale

    for name in variants:
        t0 = time.time()
        if name == "unclip":
            z_i = pipe.prior_sample(text, key, steps=prior_steps, guidance=prior_guidance)
            images = decode_in_chunks(pipe, z_i, text, key, chunk, decode_kw)
            results["prior"] = prior_scores(z_i, z_true, images_per_prompt, _k(key, "prior"),
                                            num_resamples)
        elif name == "unclip_ar":
            z_i = pipe_ar.prior_sample(text, key)
            images = decode_in_chunks(pipe_ar, z_i, text, key, chunk, decode_kw)
            results["prior_ar"] = prior_scores(z_i, z_true, images_per_prompt,
                                               _k(key, "prior"), num_resamples)
        elif name == "zeroshot_text":
            images = decode_in_chunks(pipe, z_text, text, key, chunk, decode_kw)
        elif name == "true_z_i":
            images = decode_in_chunks(pipe, np.repeat(z_true, images_per_prompt, axis=0), text,
                                      key, chunk, decode_kw)
        else:
            images = _text_decoder_images(checkpoint_dir, text_decoder, text, key, progress,
                                          chunk, decode_kw)
        results["variants"][name] = score_images(images, key=key, **common)
        results["timings_s"][name] = time.time() - t0
    # z_t as z_i, the zero-shot baseline of the prior metrics
    results["prior_text_baseline"] = prior_scores(z_text, z_true, images_per_prompt,
                                                  _k(key, "prior"), num_resamples)
    real_text = pipe.encode_text(prompts)["embeds"]
    real_clip = metrics.clip_score(z_true, real_text)["cosine"]
    results["real"] = {"clip_score": _scaled(metrics.bootstrap_ci(
        real_clip, _k(key, "clip"), num_resamples=num_resamples), 100.0),
        "clip_cosine": metrics.bootstrap_ci(real_clip, _k(key, "clip"),
                                            num_resamples=num_resamples)}
    if len(real_feats) >= 4:
        half = len(real_feats) // 2
        results["real"]["fd_clip_half_split"] = metrics.frechet_distance(real_feats[:half],
                                                                         real_feats[half:])
    if upsampler_images > 0:
        from unclip_jax.eval.upsamplers import upsampler_scores
        results["upsamplers"] = upsampler_scores(
            pipe, data_dir, split, num_images=upsampler_images, key=_k(key, "upsampler"),
            dataset=dataset, steps=upsampler_steps, chunk=chunk, num_resamples=num_resamples)
    if clf is not None:
        real_labels = {k: real[k][:num_prompts] for k in ATTRIBUTES}
        results["real"]["attributes"] = attribute_scores(clf, real["image"][:num_prompts],
                                                         real_labels, _k(key, "attr"),
                                                         num_resamples)
        results["classifier"] = {"directory": os.path.abspath(classifier),
                                 "image_size": clf.image_size,
                                 "validation_accuracy": clf.extra.get("validation_accuracy")}
    results["settings"] = {
        "checkpoint": os.path.abspath(checkpoint_dir), "data_dir": os.path.abspath(data_dir),
        "dataset": dataset, "split": split, "num_prompts": num_prompts,
        "images_per_prompt": images_per_prompt, "num_reference": len(real_feats),
        "prior_steps": prior_steps, "decoder_steps": decoder_steps,
        "upsampler_steps": upsampler_steps, "prior_guidance": prior_guidance,
        "decoder_guidance": decoder_guidance, "seed": seed, "embed_scale": embed_scale,
        "feature_size": feature_size, "image_size": out_size, "stages": sorted(pipe.stages),
        "text_decoder": os.path.abspath(text_decoder) if text_decoder else None,
        "upsampler_images": upsampler_images,
        "num_resamples": num_resamples, "confidence": 0.95,
        "seconds": time.time() - start}
    return results


def _text_decoder_images(checkpoint_dir, text_decoder, text, key, progress, chunk, decode_kw):
    """Ablation (a): the chain with `text_decoder` in place of decoder/, fed z_t as its
    embedding."""
    from unclip_jax.sample.unclip import UnCLIP
    if not text_decoder:
        raise UserError("the 'text_decoder' variant needs text_decoder=DIR (a decoder trained "
                        "on CLIP text embeddings)")
    dirs = {n: os.path.join(checkpoint_dir, n) for n in ("clip", *UPSAMPLERS)
            if os.path.isdir(os.path.join(checkpoint_dir, n))}
    pipe = UnCLIP.load(decoder=text_decoder, **dirs, progress=progress)
    want = int(pipe.stages["decoder"].config.model.embed_dim)
    if want != text["embeds"].shape[-1]:
        raise UserError(f"text decoder {text_decoder} takes {want}-d embeddings but the CLIP "
                        f"text embedding has {text['embeds'].shape[-1]}; train it on this CLIP")
    return decode_in_chunks(pipe, text["embeds"], text, key, chunk, decode_kw)

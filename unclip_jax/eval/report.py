"""Tables of `evaluate` results: markdown (docs/results.md, and the console)."""
from __future__ import annotations

from unclip_jax.eval.data import ATTRIBUTES

VARIANT_NAMES = {
    "unclip": "prior + decoder (unCLIP)",
    "unclip_ar": "AR prior + decoder",
    "zeroshot_text": "text embedding → image-embedding decoder (zero-shot)",
    "text_decoder": "decoder trained on the text embedding",
    "true_z_i": "decoder on the true z_i (no prior)",
    "real": "real images",
}


def merge(*results: dict) -> dict:
    """One results dict from several `evaluate` runs of the same split and settings (e.g. the
    variants split over two runs): variants and prior entries are united, the first run's
    real-image rows, classifier and settings kept. Runs on different splits or prompt counts
    are refused."""
    if not results:
        raise ValueError("merge needs at least one results dict")
    key = lambda r: (r["settings"]["split"], r["settings"]["num_prompts"],
                     r["settings"]["images_per_prompt"], r["settings"]["seed"])
    if len({key(r) for r in results}) != 1:
        raise ValueError("these results come from different splits, prompt counts or seeds: "
                         f"{sorted({key(r) for r in results})}; merge runs of one evaluation")
    out = dict(results[0])
    out["variants"], out["timings_s"] = {}, {}
    for r in results:
        out["variants"].update(r["variants"])
        out["timings_s"].update(r.get("timings_s", {}))
        for k in ("prior", "prior_ar", "upsamplers"):
            if k in r and k not in out:
                out[k] = r[k]
    return out


def ci(entry: dict | None, digits: int = 2, percent: bool = False) -> str:
    """'m [lo, hi]' of a {'mean'|'value', 'lo', 'hi'} entry; '–' if absent."""
    if entry is None:
        return "–"
    f = 100.0 if percent else 1.0
    m = entry.get("mean", entry.get("value"))
    if "lo" not in entry:
        return f"{m * f:.{digits}f}"
    return f"{m * f:.{digits}f} [{entry['lo'] * f:.{digits}f}, {entry['hi'] * f:.{digits}f}]"


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def format_markdown(results: dict) -> str:
    """Markdown: settings line, a per-variant metrics table (with the real images as the
    reference row), the prior table and the classifier's own accuracy."""
    s = results["settings"]
    heads = list(ATTRIBUTES) + ["all"]
    lines = [f"Split `{s['split']}`: {s['num_prompts']} single-object prompts × "
             f"{s['images_per_prompt']} images, {s['num_reference']} real reference images, "
             f"seed {s['seed']}; 95% percentile-bootstrap intervals in brackets. CLIP score = 100 × "
             "cosine(image, caption); FD between CLIP image embeddings of generated and real "
             "images (real row: between two halves of the real set); diversity = mean pairwise "
             "cosine distance among a prompt's images.", ""]
    cols = ["variant", "CLIP score", "FD (CLIP)", "diversity"] + [f"{h} acc. %" for h in heads]
    lines += [_row(cols), _row(["---"] * len(cols))]
    rows = dict(results["variants"])
    rows["real"] = results["real"]
    for name, m in rows.items():
        attrs = m.get("attributes") or {}
        fd = m.get("fd_clip")
        if fd is None and "fd_clip_half_split" in m:
            fd = {"value": m["fd_clip_half_split"]}
        lines.append(_row([VARIANT_NAMES.get(name, name), ci(m.get("clip_score")), ci(fd),
                           ci(m.get("diversity"), 3)] +
                          [ci(attrs.get(h), 1, percent=True) for h in heads]))
    sources = [(name, key) for name, key in (("diffusion prior sample", "prior"),
                                             ("AR prior sample", "prior_ar"),
                                             ("normalize(z_t)·s", "prior_text_baseline"))
               if key in results]
    if len(sources) > 1 or (sources and sources[0][1] != "prior_text_baseline"):
        lines += ["", _row(["z_i source", "cosine to true z_i", "top-1 retrieval %"]),
                  _row(["---"] * 3)]
        for name, key in sources:
            p = results[key]
            lines.append(_row([name, ci(p["cosine"], 3), ci(p["top1"], 1, percent=True)]))
    if results.get("upsamplers"):
        lines += ["", _row(["upsampler", "real input → output", "PSNR dB", "bicubic PSNR dB"]),
                  _row(["---"] * 4)]
        for name, u in results["upsamplers"].items():
            lines.append(_row([name, f"{u['input_size']} → {u['output_size']} px",
                               ci(u["psnr"]), ci(u["psnr_bicubic"])]))
    clf = results.get("classifier")
    if clf and clf.get("validation_accuracy"):
        acc = clf["validation_accuracy"]
        lines += ["", f"Attribute classifier ({clf['image_size']} px) on real validation "
                  "images: " + ", ".join(f"{h} {100 * acc[h]:.1f}%" for h in heads if h in acc)
                  + "."]
    return "\n".join(lines) + "\n"

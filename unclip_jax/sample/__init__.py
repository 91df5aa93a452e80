"""Sampling engine: a loaded unCLIP model, its stage programs, the chain and the edits.

    from unclip_jax import UnCLIP                    # = unclip_jax.sample.unclip.UnCLIP
    pipe = UnCLIP.from_directory()                   # the bundled model, or a model directory
    images = pipe.generate(["a red circle"], seed)   # uint8 [N, H, W, 3]

Modules (none imports training, data, evaluation or CLI code):
  unclip.py           `UnCLIP`: load, what is loaded, settings, CLIP encoding; binds the rest
  stage_runs.py       each stage as one compiled program over a sharded batch
  chain.py            decode, generate (text → prior → decoder → upsamplers)
  manipulations.py    invert, variations, interpolate, text_diff; slerp
  editing.py          inpaint, img2img       mixing.py   mix of images and prompts
  prompts.py          caption encodings, z_i and negative prompts per example
  masks.py            inpainting masks       diffusers_style.py  `pipe(prompt, ...)`
  stage_fns.py        pure per-stage samplers (prior, decoder, inversion, upsampler)
  programs.py         the one jit cache, pad/shard, per-example keys and noise
  loading.py          model directory layout, `Stage`, the bundled model's path
  records.py          run a recorded command, its sidecar record, `regenerate`
  images.py           image IO and the one grid      sidecars.py  the sidecar file format
  progress.py         the per-stage progress bar     checks.py    user-input checks
"""


def __getattr__(name):
    if name == "UnCLIP":
        from unclip_jax.sample.unclip import UnCLIP
        return UnCLIP
    raise AttributeError(f"module 'unclip_jax.sample' has no attribute {name!r}")

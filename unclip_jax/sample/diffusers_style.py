"""The calling convention diffusers users know, as a thin layer over `UnCLIP`:

    pipe = UnCLIP.from_pretrained()                  # the bundled model (or a directory)
    images = pipe("a red circle", num_images_per_prompt=4, seed=0)   # 4 PIL images

`DiffusersStyle` is a mixin of `UnCLIP`: `from_pretrained` is `from_directory`, and calling
the pipeline is `generate` with diffusers' argument names, returning PIL images or a float
array. Everything it does goes through `generate`, so the same seed and settings give the
same images either way. docs/api.md has runnable examples.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from unclip_jax.diffusion import steps as steps_grammar
from unclip_jax.errors import UserError

OUTPUT_TYPES = ("pil", "np")


def steps_with_count(config_steps: str, count) -> str | None:
    """`num_inference_steps`-style count → a respacing string for a stage whose config samples
    with `config_steps`: the same sampler ('ddim50' → 'ddimN', '50' → 'N';
    `unclip_jax.diffusion.steps.with_count`). None keeps the config's steps."""
    if count is None:
        return None
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise UserError(f"num_inference_steps must be a positive int, got {count!r}")
    return steps_grammar.with_count(config_steps, count)


def pick_key(seed=None, generator=None, key=None):
    """Exactly one of seed (int), generator (an int or a `jax.random.key`, diffusers' name)
    or key (`jax.random.key`); none of them → seed 0. UserError when more than one is given."""
    given = {n: v for n, v in (("seed", seed), ("generator", generator), ("key", key))
             if v is not None}
    if len(given) > 1:
        raise UserError(f"pass one of seed, generator or key, not {' and '.join(given)}")
    return next(iter(given.values()), 0)


def to_output(images: np.ndarray, output_type: str):
    """uint8 images [N, H, W, 3] → a list of PIL images ('pil') or float32 [N, H, W, 3] in
    [0, 1] ('np', diffusers' array convention)."""
    if output_type == "pil":
        from PIL import Image
        return [Image.fromarray(np.asarray(im, np.uint8)) for im in images]
    if output_type == "np":
        return np.asarray(images, np.float32) / 255.0
    raise UserError(f"output_type={output_type!r}; choose one of {', '.join(OUTPUT_TYPES)}")


class DiffusersStyle:
    """`from_pretrained` and `__call__` for `UnCLIP` (see the module docstring)."""

    @classmethod
    def from_pretrained(cls, path: str | None = None, *, prior: str = "auto",
                        progress: bool = False, **kwargs):
        """`from_directory(path)`: a model directory (clip/, tokenizer/, prior/, decoder/,
        upsampler1/, upsampler2/), or the bundled shapes model when `path` is None."""
        return cls.from_directory(path, prior=prior, progress=progress, **kwargs)

    def __call__(self, prompt: str | Sequence[str], *, num_images_per_prompt: int = 1,
                 prior_guidance_scale: float | None = None,
                 decoder_guidance_scale: float | None = None,
                 num_inference_steps: int | None = None,
                 prior_num_inference_steps: int | None = None,
                 decoder_num_inference_steps: int | None = None,
                 super_res_num_inference_steps: int | None = None,
                 negative_prompt: str | Sequence[str] | None = None,
                 seed: int | None = None, generator=None, key=None,
                 output_type: str = "pil"):
        """Text → images, prompt-major: `len(prompts) · num_images_per_prompt` of them.

        prompt: one caption or a list. Guidance scales and step counts left None use each
        stage's config; `num_inference_steps` sets the prior's and the decoder's step count
        (each keeps its sampler, DDPM or DDIM), the `prior_`/`decoder_`/`super_res_` forms
        set one stage (super-res: every upsampler). seed / generator / key: one of them
        (int seed or `jax.random.key`); none → seed 0. output_type: 'pil' (list of
        PIL.Image) or 'np' (float32 [N, H, W, 3] in [0, 1]).
        """
        if output_type not in OUTPUT_TYPES:          # before any sampling
            raise UserError(f"output_type={output_type!r}; choose one of "
                            f"{', '.join(OUTPUT_TYPES)}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        chosen = pick_key(seed, generator, key)

        def steps(stage, count):
            st = self.stages.get(stage)
            return None if st is None else steps_with_count(st.config.diffusion.sample_steps,
                                                            count)

        prior_count = prior_num_inference_steps or num_inference_steps
        decoder_count = decoder_num_inference_steps or num_inference_steps
        up_steps = None         # one value per upsampler; a final-steps stage keeps its own
        if super_res_num_inference_steps is not None:
            up_steps = [steps(n, super_res_num_inference_steps) if n in self.stages and
                        not self.stages[n].config.diffusion.get("final_steps", 0) else None
                        for n in ("upsampler1", "upsampler2")]
        images = self.generate(
            prompts, chosen, num_images_per_prompt=num_images_per_prompt,
            prior_steps=steps("prior", prior_count), decoder_steps=steps("decoder", decoder_count),
            upsampler_steps=up_steps, prior_guidance=prior_guidance_scale,
            decoder_guidance=decoder_guidance_scale, negative_prompts=negative_prompt)
        return to_output(images, output_type)

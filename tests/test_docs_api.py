"""The diffusers-style API (`UnCLIP.from_pretrained`, `pipe(prompt, ...)`) is `generate` with
diffusers' argument names: the same pixels for the same seed and settings, PIL or float
output, one-line errors. The slow test runs every python block of docs/api.md, read from the
page itself, on the bundled model."""
import os

import jax
import numpy as np
import pytest

from unclip_jax.sample.diffusers_style import pick_key, steps_with_count, to_output
from unclip_jax.errors import UserError
from subprocess_env import one_device_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_steps_keep_the_stage_sampler():
    assert steps_with_count("50", 10) == "10"
    assert steps_with_count("ddim15", 4) == "ddim4"
    assert steps_with_count("ddim15", None) is None
    for bad in (0, -2, 2.5, True, "10"):
        with pytest.raises(UserError, match="num_inference_steps must be a positive int"):
            steps_with_count("50", bad)


def test_one_source_of_randomness():
    assert pick_key() == 0 and pick_key(seed=5) == 5 and pick_key(generator=6) == 6
    k = jax.random.key(1)
    assert pick_key(key=k) is k
    with pytest.raises(UserError, match="pass one of seed, generator or key, not seed and key"):
        pick_key(seed=1, key=k)


def test_outputs():
    u8 = np.arange(2 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 2, 3) * 10
    pil = to_output(u8, "pil")
    assert [np.asarray(p).tolist() for p in pil] == u8.tolist()
    arr = to_output(u8, "np")
    assert arr.dtype == np.float32 and np.array_equal(np.rint(arr * 255).astype(np.uint8), u8)
    with pytest.raises(UserError, match="output_type='latent'; choose one of pil, np"):
        to_output(u8, "latent")


class Recorder:
    """An `UnCLIP` stand-in: stage configs of the bundled model, `generate` records its call."""

    def __init__(self, final_steps=0):
        from types import SimpleNamespace

        from unclip_jax.configs import shapes
        from unclip_jax.sample.diffusers_style import DiffusersStyle

        self.stages = {n: SimpleNamespace(config=shapes.get_config(n))
                       for n in ("prior", "decoder", "upsampler1", "upsampler2")}
        with self.stages["upsampler2"].config.unlocked():
            self.stages["upsampler2"].config.diffusion.final_steps = final_steps
        self.call = DiffusersStyle.__call__.__get__(self)

    def generate(self, prompts, key, **kw):
        self.args = (prompts, key, kw)
        return np.zeros((len(prompts) * kw["num_images_per_prompt"], 4, 4, 3), np.uint8)


def test_call_maps_diffusers_names_onto_generate():
    from unclip_jax.configs import shapes

    r = Recorder()
    assert shapes.get_config("prior").diffusion.sample_steps.isdigit()
    assert shapes.get_config("upsampler1").diffusion.sample_steps.startswith("ddim")
    out = r.call("a red circle", num_images_per_prompt=3, prior_guidance_scale=2.0,
                 decoder_guidance_scale=1.5, num_inference_steps=7,
                 super_res_num_inference_steps=2, negative_prompt="blue", seed=4,
                 output_type="np")
    prompts, key, kw = r.args
    assert prompts == ["a red circle"] and key == 4 and out.shape == (3, 4, 4, 3)
    assert kw == dict(num_images_per_prompt=3, prior_steps="7", decoder_steps="7",
                      upsampler_steps=["ddim2", "ddim2"], prior_guidance=2.0,
                      decoder_guidance=1.5, negative_prompts="blue")
    r.call(["a", "b"], decoder_num_inference_steps=5, key=jax.random.key(0))
    prompts, key, kw = r.args
    assert prompts == ["a", "b"] and kw["decoder_steps"] == "5"
    assert kw["prior_steps"] is None and kw["upsampler_steps"] is None     # the configs'
    assert kw["prior_guidance"] is None and kw["decoder_guidance"] is None
    r = Recorder(final_steps=1)             # Karlo's super_res_last keeps its own step
    r.call("x", super_res_num_inference_steps=3)
    assert r.args[2]["upsampler_steps"] == ["ddim3", None]
    with pytest.raises(UserError, match="output_type='tensor'"):
        r.call("x", output_type="tensor")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from pipeline_fixtures import checkpoints
    return checkpoints(tmp_path_factory)


@pytest.mark.slow
def test_call_is_generate_with_diffusers_names(dirs):
    from pipeline_fixtures import CAPTIONS

    from unclip_jax import UnCLIP
    from unclip_jax.export import load_config

    pipe = UnCLIP.from_pretrained(dirs["root"])
    assert all(load_config(dirs[u]).diffusion.sample_steps.startswith("ddim")
               for u in ("upsampler1", "upsampler2"))     # so 1 super-res step is 'ddim1'
    want = pipe.generate([CAPTIONS[0]], 3, num_images_per_prompt=2, prior_steps="2",
                         decoder_steps="2", upsampler_steps="ddim1", prior_guidance=2.0,
                         decoder_guidance=1.5)
    got = pipe(CAPTIONS[0], num_images_per_prompt=2, num_inference_steps=2,
               super_res_num_inference_steps=1, prior_guidance_scale=2.0,
               decoder_guidance_scale=1.5, seed=3, output_type="np")
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.rint(got * 255).astype(np.uint8), want)
    pil = pipe([CAPTIONS[0]], num_images_per_prompt=2, num_inference_steps=2,
               super_res_num_inference_steps=1, prior_guidance_scale=2.0,
               decoder_guidance_scale=1.5, generator=jax.random.key(3))
    assert [np.asarray(p).tolist() for p in pil] == want.tolist()   # a key = its seed
    with pytest.raises(UserError, match="output_type='tensor'"):
        pipe(CAPTIONS[0], output_type="tensor")


def python_blocks(path=os.path.join(REPO, "docs", "api.md")) -> list[str]:
    text = open(path, encoding="utf-8").read()
    return [part.split("```", 1)[0] for part in text.split("```python\n")[1:]]


@pytest.mark.slow
def test_docs_api_examples_run(tmp_path):
    """The page's blocks, in order, as one script in a plain interpreter (one CPU device, as a
    reader runs them; this suite's 8 simulated devices are left out)."""
    import subprocess
    import sys

    blocks = python_blocks()
    assert len(blocks) >= 3
    script = tmp_path / "api_examples.py"
    script.write_text("\n".join(blocks))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=one_device_env(),
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.isfile(tmp_path / "red_circle.png")
    lines = proc.stdout.splitlines()
    assert lines[1] == "2 (256, 256)" and lines[2] == "(2, 256, 256, 3) float32 True True"

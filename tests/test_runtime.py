"""unclip_jax.runtime: the XLA CPU flags the package sets, and the persistent compile cache."""
import json
import os
import subprocess
import sys

import pytest

from unclip_jax import runtime

ENV_KEYS = ("XLA_FLAGS", "UNCLIP_JAX_XLA_DEFAULTS", "UNCLIP_JAX_CACHE_DIR", "XDG_CACHE_HOME")


def _python(code: str, **env) -> dict:
    """Run `code` in a fresh interpreter (JAX not yet started) → the JSON it prints last."""
    base = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    base.update({"JAX_PLATFORMS": "cpu", **env})
    out = subprocess.run([sys.executable, "-c", code], env=base, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_flags_only_for_measured_jaxlib_versions():
    assert runtime.xla_cpu_flags((0, 10)) == [runtime.YNN_CONV_FLAG]
    assert runtime.xla_cpu_flags((0, 9)) == []
    assert runtime.xla_cpu_flags((0, 11)) == []
    assert runtime.xla_cpu_flags(None) == []


def test_a_flag_the_user_set_wins():
    mine = "--xla_cpu_experimental_ynn_fusion_type=-eltwise"
    merged = runtime.merged_xla_flags(f"--xla_force_host_platform_device_count=8 {mine}",
                                      [runtime.YNN_CONV_FLAG])
    assert merged.split() == ["--xla_force_host_platform_device_count=8", mine]
    assert runtime.merged_xla_flags("", [runtime.YNN_CONV_FLAG]) == runtime.YNN_CONV_FLAG


SHOW_FLAGS = ("import json, os, unclip_jax, jax; jax.numpy.ones(2).block_until_ready();"
              "print(json.dumps(os.environ.get('XLA_FLAGS', '')))")


@pytest.mark.skipif(not runtime.xla_cpu_flags(runtime._jaxlib_version()),
                    reason="this jaxlib is not one the CPU flags were measured on")
def test_import_sets_the_flag_unless_turned_off():
    assert runtime.YNN_CONV_FLAG in _python(SHOW_FLAGS)
    assert runtime.YNN_CONV_FLAG not in _python(SHOW_FLAGS, UNCLIP_JAX_XLA_DEFAULTS="0")
    # too late: JAX already started its backend before unclip_jax was imported
    late = ("import json, os, jax; jax.numpy.ones(2).block_until_ready(); import unclip_jax;"
            "print(json.dumps(os.environ.get('XLA_FLAGS', '')))")
    assert runtime.YNN_CONV_FLAG not in _python(late)


UNET_RESULT = """
import json, jax, jax.numpy as jnp, numpy as np
from unclip_jax.models.unet import UNet
from unclip_jax.configs import shapes
cfg = shapes.upsampler1().model
with cfg.unlocked():
    cfg.model_channels, cfg.norm_groups, cfg.channel_mult = 16, 4, (1, 2)
m = UNet.from_config(cfg)
x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
low = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
t = jnp.array([10, 700])
p = jax.jit(lambda k: m.init(k, x, t, low_res=low))(jax.random.key(2))
leaves, tree = jax.tree.flatten(p)
noise = [0.05 * np.random.default_rng(i).standard_normal(a.shape, np.float32) for i, a in enumerate(leaves)]
p = jax.tree.unflatten(tree, [a + n for a, n in zip(leaves, noise)])
loss = lambda p: jnp.mean(m.apply(p, x, t, low_res=low) ** 2)
val, g = jax.jit(jax.value_and_grad(loss))(p)
print(json.dumps([float(val)] + [float(jnp.sum(a * a)) for a in jax.tree.leaves(g)]))
"""


@pytest.mark.slow       # two UNet compiles in fresh processes (~50 s)
def test_cpu_flags_change_speed_not_results():
    """The UNet's loss and every gradient agree with and without the flags (float32 rounding)."""
    with_flags = _python(UNET_RESULT)
    without = _python(UNET_RESULT, UNCLIP_JAX_XLA_DEFAULTS="0")
    assert len(with_flags) == len(without) > 10
    for a, b in zip(with_flags, without):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-8)


CACHE = """
import json, jax, jax.numpy as jnp
from unclip_jax import runtime
d = runtime.enable_compilation_cache()
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
f(jnp.ones((64, 64))).block_until_ready()
print(json.dumps(d))
"""


def test_compilation_cache_directory_and_off_switch(tmp_path):
    d = tmp_path / "cache"
    got = _python(CACHE.replace("0.5", "0"), UNCLIP_JAX_CACHE_DIR=str(d))
    assert got == str(d) and d.is_dir()
    xdg = tmp_path / "xdg"
    assert _python(CACHE, XDG_CACHE_HOME=str(xdg)) == str(xdg / "unclip-jax" / "xla")
    assert _python(CACHE, UNCLIP_JAX_CACHE_DIR="off") is None


def test_second_process_reads_compiled_programs_from_the_cache(tmp_path):
    """A program compiled in one process is stored and found by the next one."""
    code = """
import json, jax, jax.numpy as jnp
from unclip_jax import runtime
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
runtime.enable_compilation_cache()
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
from jax._src import compilation_cache as cc
f = jax.jit(lambda x: jnp.sin(x @ x.T).sum() * 3.0)
f(jnp.ones((32, 32))).block_until_ready()
print(json.dumps(len(list(__import__('pathlib').Path(runtime.cache_directory()).iterdir()))))
"""
    n1 = _python(code, UNCLIP_JAX_CACHE_DIR=str(tmp_path))
    n2 = _python(code, UNCLIP_JAX_CACHE_DIR=str(tmp_path))
    assert n1 >= 1 and n2 == n1       # nothing new written: the entry was reused


def test_sampling_path_imports_neither_tensorflow_nor_transformers():
    """Loading the bundled model and encoding a prompt (what `unclip-jax sample` does before
    the diffusion stages) imports no TensorFlow, transformers or torch."""
    code = ("import json, sys\nfrom unclip_jax import UnCLIP\nimport unclip_jax.cli.sample\n"
            "m = UnCLIP.from_directory(progress=False, compile_cache=False)\n"
            "m.encode_text(['a small red circle on the left'])\n"
            "print(json.dumps(sorted(x for x in ('tensorflow', 'tensorflow_datasets', "
            "'transformers', 'torch') if x in sys.modules)))")
    assert _python(code) == []

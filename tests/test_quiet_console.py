"""`unclip-jax sample` and `unclip-jax data build` as a user runs them: their output has no
TensorFlow, absl or PyTorch line (the sampling path imports neither TensorFlow nor torch; the
data path imports TensorFlow, whose notices the CLI silences). Run as subprocesses with the
test suite's quieting variables removed."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from pipeline_fixtures import CAPTIONS, checkpoints

NOISE = re.compile(r"tensorflow|onednn|absl|initializelog|pytorch|torch|cuda|"
                   r"^[IWEF]\d{4} \d\d:\d\d", re.IGNORECASE | re.MULTILINE)


def user_env() -> dict:
    """The environment without what the test suite sets to quiet TensorFlow and XLA."""
    return {k: v for k, v in os.environ.items()
            if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "JAX_PLATFORMS",
                         "CUDA_VISIBLE_DEVICES", "XLA_FLAGS")}


def user_command() -> list[str]:
    exe = shutil.which("unclip-jax", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "unclip_jax.cli"]


@pytest.mark.slow       # a fresh process: JAX import and compiles, ~15 s idle (.ci/run runs it)
def test_sample_prints_no_tensorflow_absl_or_pytorch_line(tmp_path_factory, tmp_path):
    dirs = checkpoints(tmp_path_factory)
    model = tmp_path / "model"          # the chain without upsamplers: fewer programs to compile
    model.mkdir()
    for stage in ("clip", "tokenizer", "prior", "decoder"):
        os.symlink(os.path.join(dirs["root"], stage), model / stage)
    out = str(tmp_path / "s.png")
    r = subprocess.run(user_command() + ["sample", CAPTIONS[0], "--checkpoint", str(model),
                              "--prior-steps", "2", "--decoder-steps", "2", "--out", out],
                       env=user_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert os.path.isfile(out)
    assert not NOISE.search(r.stderr), r.stderr
    assert not NOISE.search(r.stdout), r.stdout


@pytest.mark.slow       # imports TensorFlow and TFDS and renders 512 scenes: ~20 s
def test_data_build_prints_no_tensorflow_or_absl_line(tmp_path):
    r = subprocess.run(user_command() + ["data", "build", "shapes", "--config", "small",
                                         "--data-dir", str(tmp_path / "data")],
                       env=user_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "unclip_shapes/small" in r.stdout
    assert os.path.isdir(tmp_path / "data" / "unclip_shapes" / "small")
    assert not NOISE.search(r.stderr), r.stderr
    assert not NOISE.search(r.stdout), r.stdout

"""`unclip-jax sample` as a user runs it: its stderr has no TensorFlow, absl or PyTorch line
(the sampling path imports neither TensorFlow nor torch, and what a user cannot act on is
silenced). Run as a subprocess with the test suite's quieting variables removed."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from pipeline_fixtures import CAPTIONS, checkpoints

NOISE = re.compile(r"tensorflow|onednn|absl|initializelog|pytorch|torch|cuda|"
                   r"^[IWEF]\d{4} \d\d:\d\d", re.IGNORECASE | re.MULTILINE)


@pytest.mark.slow       # a fresh process: JAX import and compiles, ~15 s idle (.ci/run runs it)
def test_sample_prints_no_tensorflow_absl_or_pytorch_line(tmp_path_factory, tmp_path):
    dirs = checkpoints(tmp_path_factory)
    model = tmp_path / "model"          # the chain without upsamplers: fewer programs to compile
    model.mkdir()
    for stage in ("clip", "tokenizer", "prior", "decoder"):
        os.symlink(os.path.join(dirs["root"], stage), model / stage)
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES",
                        "XLA_FLAGS")}
    exe = shutil.which("unclip-jax", path=os.path.dirname(sys.executable))
    cmd = [exe] if exe else [sys.executable, "-m", "unclip_jax.cli"]
    out = str(tmp_path / "s.png")
    r = subprocess.run(cmd + ["sample", CAPTIONS[0], "--checkpoint", str(model),
                              "--prior-steps", "2", "--decoder-steps", "2", "--out", out],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert os.path.isfile(out)
    assert not NOISE.search(r.stderr), r.stderr
    assert not NOISE.search(r.stdout), r.stdout

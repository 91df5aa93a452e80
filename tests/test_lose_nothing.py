"""Issue-17 guarantees for training checkpoints: a resume that cannot use a finalised step
stops with one line naming the difference and deletes nothing; restored parameters are
checked for NaN/Inf; metrics.jsonl never repeats rows after a resume."""
import hashlib
import json
import os

import jax
import numpy as np
import pytest

import test_train_toy as train_toy
from unclip_jax.errors import CheckpointError
from unclip_jax.train.checkpoint import Checkpointer
from unclip_jax.train.loop import train


def snapshot(root):
    """{relative path: sha256} of every file under `root` (directories listed too)."""
    out = {}
    for r, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(r, d), root) + "/"] = "dir"
        for f in files:
            p = os.path.join(r, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def run10(tmp_path_factory, devices8):
    wd = str(tmp_path_factory.mktemp("resume") / "wd")
    train(train_toy.toy_config(steps=10), wd, devices=devices8[:1], progress=False)
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["10", "5"]
    return wd


@pytest.mark.parametrize("change, expect", [
    (dict(hidden=128), r"config model\.hidden is 256 in the checkpoint and 128 now; "
                       r"ema_params\.fc1\.bias has shape \(256,\) in the checkpoint and \(128,\) now"),
    (dict(grad_clip=0.0), r"config train\.grad_clip is 1\.0 in the checkpoint and 0\.0 now"),
])
def test_changed_config_stops_naming_the_difference_and_deletes_nothing(run10, devices8,
                                                                         change, expect,
                                                                         caplog):
    before = snapshot(run10)
    cfg = train_toy.toy_config(steps=20, **change)
    with pytest.raises(CheckpointError, match=expect) as err:
        train(cfg, run10, devices=devices8[:1], progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "nothing was deleted" in msg and "step 10" in msg
    assert snapshot(run10) == before          # no step removed, no file changed or added
    assert not [r for r in caplog.records if r.levelno >= 30]   # the one line stands alone


def test_damaged_finalised_step_stops_without_deleting(tmp_path, run10, devices8):
    wd = str(tmp_path / "wd")
    import shutil
    shutil.copytree(run10, wd)
    state_dir = os.path.join(wd, "checkpoints", "10", "state")
    victims = [os.path.join(r, f) for r, _, fs in os.walk(state_dir) for f in fs
               if "manifest" not in f and os.path.getsize(os.path.join(r, f)) > 64]
    for v in victims:
        with open(v, "r+b") as fh:
            fh.truncate(16)
    before = snapshot(wd)
    with pytest.raises(CheckpointError, match=r"cannot restore checkpoint step 10 .*move "
                       r".*10 aside to resume from step 5") as err:
        train(train_toy.toy_config(steps=10), wd, devices=devices8[:1], progress=False)
    assert "\n" not in str(err.value)
    assert snapshot(wd) == before


def test_non_finite_parameters_after_restore_are_refused(tmp_path, run10, devices8):
    wd = str(tmp_path / "wd")
    import shutil
    shutil.copytree(run10, wd)
    cfg = train_toy.toy_config(steps=10)
    ckpt = Checkpointer(wd, cfg.train, async_save=False)
    from unclip_jax.train.loop import build, _init_fn
    from unclip_jax.train.state import state_shardings
    stage, mesh, rules, model, tx, _ = build(cfg, devices8[:1])
    abstract, _ = state_shardings(_init_fn(stage, model, cfg, jax.random.key(0)), tx, mesh,
                                  rules)
    step, state, config, data, extras = ckpt.restore_latest(abstract, cfg)
    bad = state.replace(ema_params=jax.tree.map(lambda x: x, state.ema_params))
    bad.ema_params["fc2"]["kernel"] = bad.ema_params["fc2"]["kernel"].at[0, 0].set(np.inf)
    ckpt.save(15, bad, cfg, data, extras)
    ckpt.close()
    before = snapshot(wd)
    with pytest.raises(CheckpointError, match=r"checkpoint step 15 in .* holds non-finite "
                       r"values \(ema_params\.fc2\.kernel\); it is damaged — move .*15 aside "
                       r"to resume from step 10"):
        train(train_toy.toy_config(steps=20), wd, devices=devices8[:1], progress=False)
    assert snapshot(wd) == before


def test_metrics_rows_are_not_repeated_after_a_resume(tmp_path, devices8):
    wd = str(tmp_path / "wd")
    cfg = train_toy.toy_config(steps=12)
    train(cfg, wd, devices=devices8[:1], max_steps=8, progress=False)   # saved step 5, logged to 8
    train(cfg, wd, devices=devices8[:1], progress=False)                # resumes from 5
    steps = [json.loads(line)["step"] for line in open(os.path.join(wd, "metrics.jsonl"))]
    assert steps == list(range(1, 13))
    assert not [f for f in os.listdir(wd) if f.endswith(".tmp") or f.startswith(".")]

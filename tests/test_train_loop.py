"""The generic trainer on the tiny `toy` stage: sharding equivalence, FSDP memory, resume,
half-written checkpoints, NaN stop, gradient accumulation, decay mask, export."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

import test_train_toy as train_toy
from unclip_jax import export, parallel
from unclip_jax.errors import CheckpointError, NonFiniteError
from unclip_jax.train.loop import export_from_workdir, train
from unclip_jax.train.optim import decay_mask


def losses(workdir):
    return [json.loads(line)["loss"] for line in open(os.path.join(workdir, "metrics.jsonl"))]


def host(tree):
    return jax.tree.map(lambda a: np.asarray(jax.device_get(a)), tree)


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(host(a)), jax.tree.leaves(host(b))):
        np.testing.assert_array_equal(x, y)


def test_one_device_equals_eight_devices_data_and_fsdp(tmp_path, devices8):
    ref = train(train_toy.toy_config(), str(tmp_path / "one"), devices=devices8[:1],
                progress=False)
    ref_losses = losses(tmp_path / "one")
    assert len(ref_losses) == 20 and ref_losses[-1] < ref_losses[0]
    for mesh in (dict(data=8), dict(data=1, fsdp=8)):
        wd = tmp_path / "_".join(f"{k}{v}" for k, v in mesh.items())
        out = train(train_toy.toy_config(mesh=mesh), str(wd), devices=devices8, progress=False)
        np.testing.assert_allclose(losses(wd), ref_losses, rtol=2e-5, atol=1e-6)
        for x, y in zip(jax.tree.leaves(host(out["state"].params)),
                        jax.tree.leaves(host(ref["state"].params))):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
        if mesh.get("fsdp") == 8:
            state = out["state"]
            for tree in (state.params, state.opt_state):
                per_dev = parallel.bytes_per_device(tree)
                total = sum(np.asarray(x).nbytes for x in jax.tree.leaves(host(tree)))
                assert len(per_dev) == 8
                # kernels are split 8 ways; only tiny biases/norms/counters are replicated
                assert max(per_dev.values()) < total / 8 * 1.15, (per_dev, total)


def test_resume_is_bit_exact_and_half_written_checkpoints_are_skipped(tmp_path, devices8):
    cfg = train_toy.toy_config(steps=15)
    one = devices8[:1]   # bit-exact on one CPU device (a cross-device all-reduce may reorder sums)
    full = train(cfg, str(tmp_path / "full"), devices=one, progress=False)
    wd = str(tmp_path / "resumed")
    first = train(cfg, wd, devices=one, max_steps=10, progress=False)
    assert first["step"] == 10 and sorted(os.listdir(os.path.join(wd, "checkpoints"))) == [
        "10", "5"]
    # step 10 loses its commit metadata (as if killed mid-write): resume must skip it
    os.remove(os.path.join(wd, "checkpoints", "10", "_CHECKPOINT_METADATA"))
    with pytest.warns(RuntimeWarning, match="skipping half-written checkpoint step 10"):
        out = train(cfg, wd, devices=one, progress=False)
    assert out["step"] == 15
    assert_trees_equal(out["state"], full["state"])
    # a truncated array file in a finalised step is damage, not a half-written save: resume
    # stops naming the step and deletes nothing; moved aside, the run resumes from step 10
    state_dir = os.path.join(wd, "checkpoints", "15", "state")
    victims = [os.path.join(r, f) for r, _, fs in os.walk(state_dir) for f in fs
               if "manifest" not in f and os.path.getsize(os.path.join(r, f)) > 64]
    assert victims
    for v in victims:
        with open(v, "r+b") as fh:
            fh.truncate(16)
    with pytest.raises(CheckpointError, match="cannot restore checkpoint step 15.*aside to "
                       "resume from step 10"):
        train(cfg, wd, devices=devices8[:4], progress=False)
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["10", "15", "5"]
    shutil.move(os.path.join(wd, "checkpoints", "15"), str(tmp_path / "damaged-15"))
    again = train(cfg, wd, devices=devices8[:4], progress=False)   # also: another mesh
    assert again["step"] == 15
    for x, y in zip(jax.tree.leaves(host(again["state"])), jax.tree.leaves(host(full["state"]))):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_nan_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, devices8):
    cfg = train_toy.toy_config(steps=20)
    with cfg.unlocked():
        cfg.data.nan_at = 7            # the 8th batch → step 8
        cfg.train.log_every = 4
    wd = str(tmp_path / "nan")
    with pytest.raises(NonFiniteError, match=r"non-finite loss \(nan\) at step 8.*step 5"):
        train(cfg, wd, devices=devices8[:1], progress=False)
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["5"]
    # the kept checkpoint is intact: resuming with clean data continues from step 5
    with cfg.unlocked():
        cfg.data.nan_at = -1
        cfg.train.steps = 6
    out = train(cfg, wd, devices=devices8[:1], progress=False)
    assert out["step"] == 6 and np.isfinite(out["metrics"]["loss"])


def test_gradient_accumulation_matches_full_batch(tmp_path, devices8):
    outs = []
    for accum in (1, 4):
        cfg = train_toy.toy_config(steps=5, grad_accum=accum)
        with cfg.unlocked():
            cfg.model.dropout = 0.0
        outs.append(train(cfg, str(tmp_path / f"a{accum}"), devices=devices8[:2],
                          progress=False))
    for x, y in zip(jax.tree.leaves(host(outs[0]["state"].params)),
                    jax.tree.leaves(host(outs[1]["state"].params))):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_decay_mask_skips_norms_biases_embeddings():
    params = {"fc1": {"kernel": np.zeros((4, 8)), "bias": np.zeros(8)},
              "norm": {"ln": {"scale": np.zeros(4)}},
              "token_embedding": {"embedding": np.zeros((10, 4))},
              "position_embedding": np.zeros((5, 4))}
    mask = decay_mask(params)
    assert mask["fc1"]["kernel"] and not mask["fc1"]["bias"]
    assert not mask["norm"]["ln"]["scale"]
    assert not mask["token_embedding"]["embedding"] and not mask["position_embedding"]


def test_export_writes_ema_params(tmp_path, devices8):
    wd = str(tmp_path / "run")
    out = train(train_toy.toy_config(steps=5), wd, devices=devices8[:1], progress=False)
    ema, params = host(out["state"].ema_params), host(out["state"].params)
    assert any(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(ema), jax.tree.leaves(params)))   # EMA is not a copy
    export_from_workdir(wd, str(tmp_path / "export"))
    loaded, config, extra = export.load(str(tmp_path / "export"), expect_stage="toy")
    assert config.stage == "toy" and extra["step"] == 5
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(ema)):
        np.testing.assert_array_equal(a, b)


def test_first_step_says_it_is_compiling_and_tensorboard_reads_the_events(tmp_path, devices8,
                                                                           capsys):
    """The progress bar names the compile before the first step (tens of seconds with no step
    to show on a CPU), then goes back to counting steps; the installed TensorBoard reads the
    loss the trainer wrote (`tensorboard --logdir WORKDIR`)."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    out = train(train_toy.toy_config(steps=3), str(tmp_path / "run"), devices=devices8[:1])
    events = EventMultiplexer().AddRunsFromDirectory(str(tmp_path / "run"))
    events.Reload()
    (run, _), = events.Runs().items()
    loss = events.Tensors(run, "loss")
    assert [e.step for e in loss][-1] == 3
    np.testing.assert_allclose(float(tf_value(loss[-1])), out["metrics"]["loss"], rtol=1e-6)
    err = capsys.readouterr().err
    notice = err.find("train toy (compiling the training step…)")
    assert notice >= 0, err
    first = err.find("1/3")
    assert first > notice and "compiling" not in err[err.rfind("3/3") - 40:]


def tf_value(event) -> float:
    """The scalar of a TensorBoard tensor event (its TensorProto), without TensorFlow."""
    from tensorboard.util import tensor_util
    return tensor_util.make_ndarray(event.tensor_proto)


def test_init_from_starts_a_new_run_from_an_export_and_refuses_another_model(tmp_path, devices8):
    one = devices8[:1]
    wd = str(tmp_path / "run")
    out = train(train_toy.toy_config(steps=5), wd, devices=one, progress=False)
    export_from_workdir(wd, str(tmp_path / "export"))
    ema = host(out["state"].ema_params)

    cfg = train_toy.toy_config(steps=20, init_from=str(tmp_path / "export"))
    start = train(cfg, str(tmp_path / "tuned"), devices=one, max_steps=0, progress=False)
    assert start["step"] == 0
    assert_trees_equal(start["state"].params, ema)         # step 0 = the exported EMA weights
    assert_trees_equal(start["state"].ema_params, ema)
    # ... also when the params are sharded over 8 devices (FSDP)
    fsdp = train_toy.toy_config(steps=20, init_from=str(tmp_path / "export"),
                                mesh=dict(data=1, fsdp=8))
    sharded = train(fsdp, str(tmp_path / "fsdp"), devices=devices8, max_steps=0, progress=False)
    assert_trees_equal(sharded["state"].params, ema)
    assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(sharded["state"].params))
    # a fresh random init is far from the trained weights: its first loss is higher
    train(cfg, str(tmp_path / "tuned"), devices=one, max_steps=1, progress=False)
    train(train_toy.toy_config(steps=20), str(tmp_path / "fresh"), devices=one, max_steps=1,
          progress=False)
    assert losses(tmp_path / "tuned")[0] < losses(tmp_path / "fresh")[0]

    other = train_toy.toy_config(hidden=128, init_from=str(tmp_path / "export"))
    with pytest.raises(CheckpointError, match=r"another model config: config model\.hidden is "
                                              r"256 in the export and 128 now"):
        train(other, str(tmp_path / "other"), devices=one, progress=False)
    with pytest.raises(CheckpointError, match="does not exist"):
        train(train_toy.toy_config(init_from=str(tmp_path / "nowhere")),
              str(tmp_path / "none"), devices=one, progress=False)


def test_init_from_bundled_names_the_bundled_models_stage():
    from unclip_jax.sample.loading import BUNDLED_MODEL
    from unclip_jax.train import init_from
    assert init_from.resolve("bundled", "decoder") == os.path.join(BUNDLED_MODEL, "decoder")
    assert os.path.isfile(os.path.join(init_from.resolve("bundled", "decoder"), "config.json"))

"""`unclip-jax package`: real tiny prior and AR-prior training runs are packaged into a model
directory; the shipped weights are the runs' EMA parameters in float16, the stage directories
load, the MANIFEST matches the workdirs, re-packaging one stage keeps the other, and each
user mistake gets a message naming the fix (with the model directory left untouched)."""
import json
import os
import pathlib
import shutil
import subprocess

import jax
import numpy as np
import pytest

import pipeline_fixtures
import test_train_stages
from unclip_jax import cli, export, package
from unclip_jax.clip.tokenizer import Tokenizer, build_tokenizer
from unclip_jax.errors import CheckpointError, UserError
from unclip_jax.package import final_loss, human_bytes, package_model, parse_pairs
from unclip_jax.sample.loading import stage_directories
from unclip_jax.sample.unclip import UnCLIP
from unclip_jax.train.loop import restore_for_inference, train

STEPS = 7          # log_every=1: 7 metric rows, so "last 5" differs from "all"
F16_RTOL = 2.0 ** -11      # float16 keeps 11 significant bits: round-to-nearest error ≤ 2^-11
F16_ATOL = 2.0 ** -25      # half the smallest float16 subnormal


def metric_rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def tree_bytes(root):
    return sum(p.stat().st_size for p in pathlib.Path(root).rglob("*") if p.is_file())


def leaves(tree):
    return [np.asarray(jax.device_get(a)) for a in jax.tree.leaves(tree)]


def test_final_loss_skips_rows_without_a_finite_loss_and_sizes_read_well():
    rows = [{"step": 1, "loss": 9.0}, {"step": 2, "loss": 1.0}, {"step": 3, "mae": 0.5},
            {"step": 4, "loss": "nan"}, {"step": 5, "loss": 2.0}, {"step": 6, "loss": 3.0}]
    assert final_loss(rows, last=3) == pytest.approx(2.0)
    assert final_loss(rows, last=5) == pytest.approx(15.0 / 4)
    assert final_loss([{"step": 1, "mae": 1.0}]) is None
    assert [human_bytes(n) for n in (512, 1536, 5 * 2**20 + 2**19, 3 * 2**30)] == [
        "512 B", "1.5 KiB", "5.5 MiB", "3.0 GiB"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, devices8):
    """Two real training workdirs (tiny prior and AR prior) and a tokenizer directory."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name in ("prior", "ar_prior"):
        cfg = test_train_stages.tiny_config(name, steps=STEPS)
        state = train(cfg, str(root / name), devices=devices8[:1], progress=False)["state"]
        out[name] = {"dir": str(root / name), "params": state.params, "config": cfg}
    out["tokenizer"] = build_tokenizer(pipeline_fixtures.CAPTIONS * 4, 64,
                                       str(root / "tokenizer"), pipeline_fixtures.CTX)
    return out


@pytest.fixture(scope="module")
def packaged(runs, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("model") / "model")
    manifest = package_model({"prior": runs["prior"]["dir"], "ar_prior": runs["ar_prior"]["dir"]},
                             out, tokenizer=runs["tokenizer"], dataset="synthetic",
                             notes={"prior": "tiny test run"})
    return out, manifest


def test_weights_are_the_ema_params_in_float16(runs, packaged):
    out, _ = packaged
    for name in ("prior", "ar_prior"):
        ema, _, _, step = restore_for_inference(runs[name]["dir"])
        assert step == STEPS
        raw, config, extra = export.load(os.path.join(out, name), expect_stage=name, dtype=None)
        assert config.stage == name and extra["step"] == STEPS
        assert {a.dtype for a in jax.tree.leaves(raw)} == {np.dtype("float16")}
        for got, want in zip(leaves(raw), leaves(ema)):
            np.testing.assert_array_equal(got, want.astype(np.float16))
            np.testing.assert_allclose(got.astype(np.float32), want, rtol=F16_RTOL,
                                       atol=F16_ATOL)
        # EMA (decay 0.5), not the raw training params: some leaf differs well beyond rounding
        assert any(not np.allclose(g.astype(np.float32), p, rtol=1e-2, atol=1e-3)
                   for g, p in zip(leaves(raw), leaves(runs[name]["params"])))


def test_stage_dirs_load_in_the_pipeline(runs, packaged):
    out, _ = packaged
    pipe = UnCLIP.load(prior=os.path.join(out, "prior"), progress=False)
    params, _, _ = export.load(os.path.join(out, "prior"), expect_stage="prior")
    for got, want in zip(leaves(pipe.stages["prior"].params), leaves(params)):
        np.testing.assert_array_equal(got, want)
    assert pipe.stages["prior"].config.model.width == runs["prior"]["config"].model.width
    export.load(os.path.join(out, "ar_prior"), expect_stage="ar_prior")
    original = Tokenizer(runs["tokenizer"], context_length=32)
    copied = Tokenizer(os.path.join(out, "tokenizer"), context_length=32)
    for a, b in zip(original(pipeline_fixtures.CAPTIONS), copied(pipeline_fixtures.CAPTIONS)):
        np.testing.assert_array_equal(a, b)


def test_manifest_describes_the_runs(runs, packaged):
    out, manifest = packaged
    with open(os.path.join(out, "MANIFEST.json")) as f:
        assert json.load(f) == manifest
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert manifest["commit"] == head.stdout.strip() and len(manifest["commit"]) == 40
    assert manifest["dataset"] == "synthetic" and manifest["dtype"] == "float16"
    assert list(manifest["stages"]) == ["prior", "ar_prior"]
    for name in ("prior", "ar_prior"):
        entry, cfg = manifest["stages"][name], runs[name]["config"]
        rows = metric_rows(runs[name]["dir"])
        assert len(rows) == STEPS
        losses = [r["loss"] for r in rows]
        assert entry["steps"] == STEPS
        assert entry["final_loss"] == pytest.approx(np.mean(losses[-5:]), rel=1e-12)
        assert entry["final_loss"] != pytest.approx(np.mean(losses), rel=1e-9)
        assert entry["final_metrics"] == rows[-1]
        assert entry["batch_size"] == cfg.train.batch_size
        assert entry["planned_steps"] == cfg.train.steps
        assert entry["size_bytes"] == tree_bytes(os.path.join(out, name)) > 0
        assert entry["workdir"] == name            # the run's name, not this machine's path
    assert manifest["stages"]["prior"]["note"] == "tiny test run"
    assert "note" not in manifest["stages"]["ar_prior"]
    assert manifest["total_size_bytes"] == tree_bytes(out) - os.path.getsize(
        os.path.join(out, "MANIFEST.json"))


def test_no_file_names_the_packaging_machines_paths(runs, packaged):
    """Configs, extras and MANIFEST hold no local path of the machine that packaged them: the
    training inputs are blanked (the tokenizer ships beside), runs are named, weights kept."""
    out, _ = packaged
    root = os.path.dirname(runs["prior"]["dir"])
    for r, _, files in os.walk(out):
        for name in files:
            with open(os.path.join(r, name), "rb") as f:
                data = f.read()
            # neither the runs' nor the model's own directory (Orbax's commit_success.txt
            # names the directory it was written to)
            assert root.encode() not in data and out.encode() not in data, os.path.join(r, name)
            if name.endswith(".json") and name != "tokenizer.json":
                assert b"/tmp" not in data, os.path.join(r, name)
    with open(os.path.join(out, "prior", "config.json")) as f:
        cfg = json.load(f)
    assert cfg["data"]["embeddings_dir"] == "" and cfg["train"] == json.loads(
        runs["prior"]["config"].to_json_best_effort())["train"]
    with open(os.path.join(out, "prior", "extra.json")) as f:
        assert json.load(f)["source"] == "prior"


def test_repackaging_one_stage_replaces_it_and_keeps_the_other(runs, packaged, tmp_path):
    out = str(tmp_path / "model")
    shutil.copytree(packaged[0], out)
    before = packaged[1]
    ar_files = {p: open(os.path.join(r, p), "rb").read()
                for r, _, fs in os.walk(os.path.join(out, "ar_prior")) for p in fs}
    # a retrained prior whose metrics log ran past its last checkpoint (as after a crash)
    work = str(tmp_path / "prior_run")
    shutil.copytree(runs["prior"]["dir"], work)
    with open(os.path.join(work, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": STEPS + 3, "loss": 1e6}) + "\n")
    manifest = package_model({"prior": work}, out, tokenizer=None, dtype="float32",
                             commit="c0ffee", notes={"prior": "retrained"})
    ema, _, _, _ = restore_for_inference(work)
    raw, _, _ = export.load(os.path.join(out, "prior"), dtype=None)
    for got, want in zip(leaves(raw), leaves(ema)):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    prior = manifest["stages"]["prior"]
    assert prior["commit"] == "c0ffee" and prior["note"] == "retrained"
    assert prior["dtype"] == "float32" and prior["workdir"] == "prior_run"
    assert prior["final_loss"] == before["stages"]["prior"]["final_loss"]  # row past step 7 ignored
    assert manifest["stages"]["ar_prior"] == before["stages"]["ar_prior"]
    assert manifest["commit"] == "c0ffee" and manifest["dtype"] == "mixed"
    assert manifest["dataset"] == "synthetic"          # kept from the first packaging
    assert os.path.isdir(os.path.join(out, "tokenizer"))
    assert ar_files == {p: open(os.path.join(r, p), "rb").read()
                        for r, _, fs in os.walk(os.path.join(out, "ar_prior")) for p in fs}
    assert manifest["total_size_bytes"] == tree_bytes(out) - os.path.getsize(
        os.path.join(out, "MANIFEST.json"))
    assert not [d for d in os.listdir(out) if d.startswith(".")]   # no staging left behind


def test_cli_packages_and_prints_one_line_per_stage(runs, tmp_path, capsys):
    out = str(tmp_path / "model")
    code = cli.main(["package", "--out", out, "--stage", f"ar_prior={runs['ar_prior']['dir']}",
                     "--dtype", "bfloat16", "--commit", "abc", "--note", "ar_prior=AR run"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    manifest = json.load(open(os.path.join(out, "MANIFEST.json")))
    entry = manifest["stages"]["ar_prior"]
    assert lines[0].startswith(f"ar_prior: {STEPS} steps, final loss {entry['final_loss']:.4g}, ")
    assert "KiB" in lines[0] and "MANIFEST.json" in lines[1]
    assert entry["note"] == "AR run" and manifest["commit"] == "abc"
    raw, _, _ = export.load(os.path.join(out, "ar_prior"), dtype=None)
    assert {a.dtype.name for a in jax.tree.leaves(raw)} == {"bfloat16"}


def test_user_mistakes_name_the_fix_and_write_nothing(runs, packaged, tmp_path, capsys):
    out = str(tmp_path / "model")
    shutil.copytree(packaged[0], out)
    snapshot = {os.path.join(r, f): os.path.getmtime(os.path.join(r, f))
                for r, _, fs in os.walk(out) for f in fs}
    prior = runs["prior"]["dir"]
    empty = tmp_path / "empty_run"
    empty.mkdir()
    cases = [
        (dict(stages={"priorr": prior}), r"unknown stage 'priorr'; choose from clip, prior, "),
        (dict(stages={"prior": str(tmp_path / "nope")}),
         r"stage prior: workdir .*nope does not exist; pass the --workdir used by"),
        (dict(stages={"prior": str(empty)}),
         r"stage prior: cannot export .*empty_run \(.*has no checkpoints/.*\); pass "
         r"--stage prior=WORKDIR with the --workdir that `unclip-jax train"),
        (dict(stages={"decoder": prior}),
         r"stage decoder: .* trained a 'prior' model, not 'decoder'; pass it as --stage prior="),
        (dict(stages={"prior": prior}, tokenizer=str(tmp_path / "no_tok")),
         r"tokenizer directory .*no_tok does not exist; pass the Hugging Face tokenizer"),
        (dict(stages={"prior": prior}, notes={"decoder": "x"}),
         r"--note decoder=\.\.\. is for a stage that is not being packaged"),
        (dict(stages={"prior": prior}, dtype="float64"),
         r"dtype 'float64' is not supported; choose from float16, float32, bfloat16"),
    ]
    for kwargs, message in cases:
        kwargs.setdefault("tokenizer", None)
        with pytest.raises(UserError, match=message):
            package_model(out_dir=out, **kwargs)
    (empty / "checkpoints").mkdir()
    with pytest.raises(UserError, match=r"cannot export .*holds no checkpoint steps"):
        package_model({"prior": str(empty)}, out, tokenizer=None)
    (empty / "checkpoints" / "5").mkdir()          # a step directory with nothing in it
    with pytest.raises(UserError, match=r"stage prior: cannot export .*step 5 .*half-written.*; pass "
                                        r"--stage prior=WORKDIR"):
        package_model({"prior": str(empty)}, out, tokenizer=None)
    fresh = tmp_path / "fresh_model"
    with pytest.raises(UserError, match="trained a 'prior' model"):
        package_model({"decoder": prior}, str(fresh), tokenizer=None)
    assert not fresh.exists()
    with pytest.raises(UserError, match=r"stage 'prior' is given twice .*give each stage once"):
        parse_pairs(["prior=a", "prior=b"], "--stage", "WORKDIR")
    assert snapshot == {os.path.join(r, f): os.path.getmtime(os.path.join(r, f))
                        for r, _, fs in os.walk(out) for f in fs}
    # the command line: one-line errors, exit status 2
    for argv, message in [
        (["--stage", prior], f"--stage '{prior}': write --stage STAGE=WORKDIR"),
        (["--stage", f"prior={prior}", "--stage", f"prior={prior}"], "given twice"),
        (["--stage", f"prior={prior}", "--note", "decoder"], "write --note STAGE=TEXT"),
        ([], "nothing to package; give at least one --stage STAGE=WORKDIR"),
    ]:
        assert cli.main(["package", "--out", out, *argv]) == 2
        assert message in capsys.readouterr().err


def _priors(root, prior="auto"):
    return sorted({"prior", "ar_prior"} & set(stage_directories(root, prior)))


def _copy_without_tokenizer(model, out):
    """The packaged priors without tokenizer/ (which needs a clip/ to load)."""
    shutil.copytree(model, out)
    shutil.rmtree(os.path.join(out, "tokenizer"))


def test_default_prior_is_recorded_kept_and_loaded_by_auto(runs, packaged, tmp_path, capsys):
    out = str(tmp_path / "model")
    _copy_without_tokenizer(packaged[0], out)
    assert _priors(out) == ["prior"]                  # no default_prior: the diffusion prior
    assert cli.main(["package", "--out", out, "--default-prior", "ar"]) == 0
    manifest = json.load(open(os.path.join(out, "MANIFEST.json")))
    assert manifest["default_prior"] == "ar"
    assert manifest["stages"] == packaged[1]["stages"]      # setting it touches no stage
    assert _priors(out) == ["ar_prior"] and _priors(out, "diffusion") == ["prior"]
    # re-packaging a stage without --default-prior keeps it
    manifest = package_model({"prior": runs["prior"]["dir"]}, out, tokenizer=None)
    assert manifest["default_prior"] == "ar" and _priors(out) == ["ar_prior"]
    manifest = package_model({}, out, tokenizer=None, default_prior="diffusion")
    assert manifest["default_prior"] == "diffusion" and _priors(out) == ["prior"]


def test_default_prior_mistakes_name_the_fix(runs, packaged, tmp_path, capsys):
    fresh = tmp_path / "only_prior"
    with pytest.raises(UserError, match=r"--default-prior ar: the model will have no ar_prior/; "
                                        r"add --stage ar_prior=WORKDIR"):
        package_model({"prior": runs["prior"]["dir"]}, str(fresh), tokenizer=None,
                      default_prior="ar")
    assert not fresh.exists()
    with pytest.raises(UserError, match=r"--default-prior 'gan'; choose one of diffusion, ar"):
        package_model({}, packaged[0], tokenizer=None, default_prior="gan")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["package", "--out", str(fresh), "--default-prior", "gan"])
    assert exit_.value.code == 2
    assert "--default-prior: invalid choice: 'gan'" in capsys.readouterr().err
    # a MANIFEST edited by hand: loading says what is wrong and executes nothing
    out = tmp_path / "model"
    _copy_without_tokenizer(packaged[0], out)
    manifest = json.load(open(out / "MANIFEST.json"))
    bad = dict(manifest, default_prior="__import__('os')")
    (out / "MANIFEST.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match=r"MANIFEST.json: default_prior=\"__import__\('os'\)"
                                              r"\"; it must be one of diffusion, ar \(or absent\)"):
        stage_directories(str(out))
    (out / "MANIFEST.json").write_text(json.dumps(dict(manifest, default_prior="ar")))
    shutil.rmtree(out / "ar_prior")
    with pytest.raises(CheckpointError, match=r"names 'ar' as the default prior but .*ar_prior "
                                              r"does not exist; pass prior=diffusion or re-pack"):
        UnCLIP.from_directory(str(out), progress=False)
    assert _priors(str(out), "diffusion") == ["prior"]      # a named prior still loads
    (out / "MANIFEST.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"MANIFEST.json is not valid JSON .*re-package"):
        stage_directories(str(out))


@pytest.mark.parametrize("init_from, shipped", [("/home/me/runs/export/decoder", ""),
                                                ("bundled", "bundled"), ("", "")])
def test_the_export_a_run_started_from_is_not_shipped_as_a_path(tmp_path, init_from, shipped):
    exported = tmp_path / "decoder"
    exported.mkdir()
    cfg = {"stage": "decoder", "train": {"init_from": init_from, "steps": 6000},
           "data": {"data_dir": "/home/me/data", "embeddings_dir": "gs://b/emb"}}
    (exported / "config.json").write_text(json.dumps(cfg))
    package.strip_machine_paths(str(exported), "/home/me/runs/decoder32b")
    out = json.loads((exported / "config.json").read_text())
    assert out["train"] == {"init_from": shipped, "steps": 6000}
    assert out["data"] == {"data_dir": "", "embeddings_dir": "gs://b/emb"}

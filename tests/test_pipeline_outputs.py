"""Issue-17 guarantees of `unclip-jax sample|vary|...` outputs: checked before sampling,
written atomically with their sidecar, never clobbered without --overwrite, JPEG when asked;
--from-sidecar alone; sidecars validated; identities cover weights and tokenizer; non-finite
stage outputs are errors. Every refusal is one line and leaves the directory as it was."""
import json
import os
import shutil

import numpy as np
import pytest

from pipeline_fixtures import CAPTIONS, checkpoints
from unclip_jax import cli, export
from unclip_jax.export import checkpoint_identity

FAST = ["--prior-steps", "2", "--decoder-steps", "2", "--upsampler-steps", "ddim1",
        "--no-progress"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return checkpoints(tmp_path_factory)


def listing(root):
    out = {}
    for r, ds, fs in os.walk(root):
        for d in ds:
            out[os.path.relpath(os.path.join(r, d), root) + "/"] = None
        for f in fs:
            p = os.path.join(r, f)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


@pytest.fixture
def no_sampling(monkeypatch):
    """Fail the test if a model is loaded: the refusal must come before any sampling."""
    from unclip_jax.sample.unclip import UnCLIP

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the output path was checked")
    monkeypatch.setattr(UnCLIP, "from_directory", classmethod(boom))


def one_line_error(capsys, rc):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("unclip-jax: error:"), err
    return err[0]


@pytest.mark.slow   # ~20 s
def test_existing_output_needs_overwrite_and_jpeg_is_real(dirs, tmp_path, capsys):
    out = str(tmp_path / "grid.png")
    argv = ["sample", CAPTIONS[0], "--checkpoint", dirs["root"], "--seed", "1", "--prior",
            "text"] + FAST
    assert cli.main(argv + ["--out", out]) == 0
    before = listing(tmp_path)
    assert set(before) == {"grid.png", "grid.json"}
    capsys.readouterr()
    rc = cli.main(argv + ["--seed", "2", "--out", out])
    assert "already exists; pass --overwrite" in one_line_error(capsys, rc)
    assert listing(tmp_path) == before
    assert cli.main(argv + ["--seed", "2", "--out", out, "--overwrite"]) == 0
    after = listing(tmp_path)
    assert set(after) == {"grid.png", "grid.json"} and after["grid.png"] != before["grid.png"]
    assert json.loads(after["grid.json"])["seed"] == 2
    jpg = str(tmp_path / "photo.jpg")
    assert cli.main(argv + ["--out", jpg]) == 0
    assert open(jpg, "rb").read(3) == b"\xff\xd8\xff"          # JPEG, not PNG bytes
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


@pytest.mark.parametrize("make_out, msg", [
    (lambda t: str(t), "is a directory"),
    (lambda t: str(t / "file.txt" / "x.png"), "is a file, not a directory"),
    (lambda t: str(t / "x.json"), "write a .png, .jpg or .jpeg file"),
    (lambda t: str(t / "x.gif"), "write a .png, .jpg or .jpeg file"),
    (lambda t: str(t / "taken.png"), "already exists"),
    (lambda t: str(t / "sidecar_taken.png"), "sidecar"),
])
def test_bad_out_is_refused_before_sampling(dirs, tmp_path, capsys, no_sampling, make_out, msg):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "taken.png").write_bytes(b"png")
    (tmp_path / "sidecar_taken.json").write_text("{}")
    before = listing(tmp_path)
    rc = cli.main(["sample", CAPTIONS[0], "--checkpoint", dirs["root"], "--out",
                   make_out(tmp_path)] + FAST)
    assert msg in one_line_error(capsys, rc)
    assert listing(tmp_path) == before


@pytest.mark.parametrize("extra, msg", [
    (["--seed", str(2 ** 63)], "seed 9223372036854775808 is out of range"),
    (["--cols", "0"], "--cols 0"),
    (["--cols", "-3"], "--cols -3"),
])
def test_bad_numbers_are_one_line(dirs, tmp_path, capsys, no_sampling, extra, msg):
    rc = cli.main(["sample", CAPTIONS[0], "--checkpoint", dirs["root"], "--out",
                   str(tmp_path / "x.png")] + FAST + extra)
    assert msg in one_line_error(capsys, rc)
    assert os.listdir(tmp_path) == []


def test_from_sidecar_refuses_other_settings_and_bad_sidecars(dirs, tmp_path, capsys,
                                                              no_sampling):
    side = tmp_path / "s.json"
    good = {"command": "sample", "seed": 1, "inputs": {"prompts": ["a red circle"]},
            "settings": {"decoder_steps": "2"}, "checkpoint": dirs["root"], "cols": None,
            "prior": "auto"}
    side.write_text(json.dumps(good))
    before = listing(tmp_path)
    for extra in (["a blue square"], ["--seed", "5"], ["-n", "3"],
                  ["--checkpoint", "/nonexistent"], ["--decoder-steps", "999999"]):
        rc = cli.main(["sample", "--from-sidecar", str(side), "--no-progress"] + extra)
        line = one_line_error(capsys, rc)
        assert "--from-sidecar redoes the recorded command" in line and "drop" in line
    for field, value, named in (("seed", 2 ** 64, "'seed'"), ("seed", "7", "'seed'"),
                                ("inputs", {"prompts": "a red circle"}, "'inputs.prompts'"),
                                ("settings", [], "'settings'"), ("command", "rm", "'command'"),
                                ("cols", "2", "'cols'")):
        side.write_text(json.dumps(dict(good, **{field: value})))
        rc = cli.main(["sample", "--from-sidecar", str(side), "--no-progress"])
        assert f"field {named}" in one_line_error(capsys, rc)
    side.write_text(json.dumps({k: v for k, v in good.items() if k != "inputs"}))
    rc = cli.main(["sample", "--from-sidecar", str(side), "--no-progress"])
    assert "field 'inputs'" in one_line_error(capsys, rc)
    side.write_text(json.dumps(good))
    assert listing(tmp_path) == before


def test_identity_covers_weights_and_tokenizer(dirs, tmp_path):
    dec = str(tmp_path / "decoder")
    params, config, extra = export.load(dirs["decoder"])
    export.save(dec, params, config, extra=extra)
    same = checkpoint_identity(dec)
    import jax
    export.save(dec, jax.tree.map(lambda a: a * 0.9, params), config, extra=extra,
                overwrite=True)
    assert checkpoint_identity(dec) != same
    tok = str(tmp_path / "tok")
    shutil.copytree(os.path.join(dirs["root"], "tokenizer"), tok)
    before = checkpoint_identity(tok)
    with open(os.path.join(tok, "tokenizer.json"), "a") as f:
        f.write(" ")
    assert checkpoint_identity(tok) != before
    assert checkpoint_identity(tok) != checkpoint_identity(dirs["clip"])


def test_regenerate_refuses_changed_weights(dirs, tmp_path, capsys):
    root = tmp_path / "model"
    root.mkdir()
    for name in ("clip", "tokenizer", "decoder"):
        shutil.copytree(os.path.join(dirs["root"], name), root / name)
    side = tmp_path / "a.json"
    side.write_text(json.dumps({
        "command": "sample", "seed": 1, "inputs": {"prompts": [CAPTIONS[0]]},
        "settings": {"decoder_steps": "1", "text_as_image_embed": True}, "prior": "text",
        "checkpoint": str(root), "cols": None,
        "checkpoints": {n: {"dir": str(root / n), "identity": checkpoint_identity(str(root / n))}
                        for n in ("clip", "tokenizer", "decoder")}}))
    params, config, extra = export.load(str(root / "decoder"))
    import jax
    export.save(str(root / "decoder"), jax.tree.map(lambda a: a * 0.9, params), config,
                extra=extra, overwrite=True)
    rc = cli.main(["sample", "--from-sidecar", str(side), "--no-progress"])
    assert "the decoder checkpoint differs" in one_line_error(capsys, rc)
    assert not os.path.exists(str(tmp_path / "a-regen.png"))


def test_non_finite_stage_output_is_an_error_naming_the_stage(dirs, tmp_path, capsys):
    root = tmp_path / "model"
    root.mkdir()
    for name in ("clip", "tokenizer"):
        shutil.copytree(os.path.join(dirs["root"], name), root / name)
    params, config, extra = export.load(dirs["decoder"])
    import jax
    export.save(str(root / "decoder"), jax.tree.map(lambda a: a * np.nan, params), config,
                extra=extra)
    out = tmp_path / "out.png"
    rc = cli.main(["sample", CAPTIONS[0], "--checkpoint", str(root), "--prior", "text",
                   "--decoder-steps", "1", "--no-progress", "--out", str(out)])
    assert "the decoder stage produced non-finite values" in one_line_error(capsys, rc)
    assert not out.exists() and not (tmp_path / "out.json").exists()


def test_decompression_bomb_and_empty_from_are_one_line(dirs, tmp_path, capsys, monkeypatch):
    from PIL import Image
    big = tmp_path / "big.png"
    Image.new("RGB", (100, 100), "white").save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)      # 10,000 px is now a "bomb"
    before = listing(tmp_path)
    for argv in (["vary", str(big)], ["interpolate", str(big), str(big)],
                 ["textdiff", str(big), "--from", "a", "--to", "b"]):
        rc = cli.main(argv + ["--checkpoint", dirs["root"], "--out", str(tmp_path / "o.png"),
                              "--no-progress"])
        assert "too large to decode safely" in one_line_error(capsys, rc)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89478485)
    rc = cli.main(["textdiff", str(big), "--from", " ", "--to", "b", "--checkpoint",
                   dirs["root"], "--out", str(tmp_path / "o.png"), "--no-progress"])
    assert "the --from caption is empty" in one_line_error(capsys, rc)
    rc = cli.main(["sample", "--checkpoint", dirs["root"], "--out", str(tmp_path / "o.png")])
    line = one_line_error(capsys, rc)
    assert "no prompts" in line and "--prompt" not in line
    assert listing(tmp_path) == before


def test_config_not_matching_params_is_one_line_and_debug_shows_traceback(dirs, tmp_path,
                                                                           capsys):
    root = tmp_path / "model"
    root.mkdir()
    for name in ("clip", "tokenizer", "decoder"):
        shutil.copytree(os.path.join(dirs["root"], name), root / name)
    cfg_path = root / "decoder" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["model_channels"] *= 2
    cfg_path.write_text(json.dumps(cfg))
    argv = ["sample", CAPTIONS[0], "--checkpoint", str(root), "--prior", "text",
            "--decoder-steps", "1", "--no-progress", "--out", str(tmp_path / "o.png")]
    line = one_line_error(capsys, cli.main(argv))
    assert "config.json does not match its parameters" in line
    with pytest.raises(Exception) as err:
        cli.main(["--debug"] + argv)
    assert type(err.value).__module__.startswith("flax")
    assert not (tmp_path / "o.png").exists()


def test_unknown_tokens_warn(dirs):
    from unclip_jax.clip.tokenizer import Tokenizer
    tok = Tokenizer(os.path.join(dirs["root"], "tokenizer"), context_length=8)
    with pytest.warns(UserWarning, match="made only of tokens unknown"):
        tok(["☃☃ ☃"])


def test_large_requests_run_in_chunks_with_the_same_images(dirs):
    from unclip_jax.sample.unclip import UnCLIP
    pipe = UnCLIP.from_directory(dirs["root"], progress=False)
    kw = dict(num_images_per_prompt=2, decoder_steps="2", upsampler_steps="ddim1",
              text_as_image_embed=True)   # the programs test_existing_output... compiled
    whole = pipe.generate(CAPTIONS[:3], 5, **kw)
    chunked = pipe.generate(CAPTIONS[:3], 5, max_batch=4, **kw)     # chunks of 4 and 2
    assert whole.shape[0] == 6
    np.testing.assert_array_equal(chunked, whole)


def test_requests_that_cannot_fit_are_refused_with_the_number(dirs, tmp_path, capsys,
                                                                monkeypatch):
    page = os.sysconf("SC_PAGE_SIZE")
    real = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda name: 1024 if name == "SC_AVPHYS_PAGES"
                        else real(name))
    rc = cli.main(["sample", CAPTIONS[0], "-n", "100000", "--checkpoint", dirs["root"],
                   "--out", str(tmp_path / "o.png")] + FAST)
    line = one_line_error(capsys, rc)
    assert "100000 images of 32×32 need" in line and "ask for at most" in line
    assert f"{1024 * page / 2**30:.1f} GiB of memory is free" in line
    assert os.listdir(tmp_path) == []


def test_docs_figure_sidecars_name_no_machine_path():
    """Each docs/*.json figure sidecar is a valid sidecar naming no absolute path (inputs
    relative to docs/, the bundled model as `bundled:`), and its recorded inputs are the files
    beside it (their sha256 as recorded)."""
    from pipeline_fixtures import json_strings
    from unclip_jax.sample import records, sidecars
    docs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
    found = 0
    for name in sorted(os.listdir(docs)):
        path = os.path.join(docs, name)
        if not name.endswith(".json") or "command" not in json.load(open(path)):
            continue                                # results tables, not sidecars
        rec = sidecars.read_sidecar(path)
        assert not [s for s in json_strings(rec) if os.path.isabs(s) or s.startswith("~")], name
        assert rec["checkpoint"] is None or not os.path.isabs(rec["checkpoint"])
        resolved = records.inputs_beside(rec["inputs"], docs)
        assert all(os.path.isfile(f) for f in sidecars.input_files(rec["command"], resolved))
        sidecars.check_input_hashes(rec, resolved, path)
        found += 1
    assert found >= 5

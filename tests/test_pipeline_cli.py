"""`unclip-jax sample|vary|interpolate|textdiff` on tiny random checkpoints."""
import json
import os

import numpy as np
import pytest

from pipeline_fixtures import CAPTIONS, checkpoints, json_strings, read_png, smooth_image
from unclip_jax import cli
from unclip_jax.errors import UserError
from unclip_jax.export import checkpoint_identity
from unclip_jax.sample import records, sidecars
from unclip_jax.sample.images import to_uint8
from unclip_jax.sample.sidecars import sidecar_path

FAST = ["--prior-steps", "2", "--decoder-steps", "2", "--upsampler-steps", "ddim1",
        "--no-progress"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return checkpoints(tmp_path_factory)


def test_sample_writes_grid_and_sidecar_and_regenerates(dirs, tmp_path):
    out = str(tmp_path / "grid.png")
    rc = cli.main(["sample", CAPTIONS[0], CAPTIONS[1], "--checkpoint", dirs["root"],
                   "--seed", "3", "--out", out, "--cols", "2"] + FAST)
    assert rc == 0 and os.path.isfile(out)
    side = sidecar_path(out)
    rec = json.load(open(side))
    assert rec["command"] == "sample" and rec["seed"] == 3
    assert rec["inputs"]["prompts"] == CAPTIONS[:2]
    assert rec["settings"]["decoder_steps"] == "2"
    assert set(rec["checkpoints"]) >= {"clip", "prior", "decoder", "upsampler1", "upsampler2",
                                       "tokenizer"}
    assert rec["checkpoints"]["decoder"]["identity"] == checkpoint_identity(dirs["decoder"])
    assert rec["package_version"]
    grid = read_png(out)
    assert grid.shape == (2 + 34, 2 + 2 * 34, 3)      # one row of two 32 px tiles, 2 px gaps
    regen = str(tmp_path / "regen.png")
    assert cli.main(["sample", "--from-sidecar", side, "--out", regen, "--no-progress"]) == 0
    np.testing.assert_array_equal(read_png(regen), grid)
    other = str(tmp_path / "other.png")
    cli.main(["sample", CAPTIONS[0], CAPTIONS[1], "--checkpoint", dirs["root"], "--seed", "4",
              "--out", other, "--cols", "2"] + FAST)
    assert np.abs(read_png(other).astype(int) - grid.astype(int)).max() > 0


def test_sample_prior_text_uses_the_text_embedding_and_regenerates(dirs, tmp_path):
    """`--prior text`: no prior is loaded, z_i is the caption's z_t (§5.1 zero-shot); the
    sidecar records it and regenerates the same grid."""
    from unclip_jax.sample.unclip import UnCLIP
    out = str(tmp_path / "text.png")
    assert cli.main(["sample", CAPTIONS[0], "--checkpoint", dirs["root"], "--prior", "text",
                     "--seed", "2", "--out", out] + FAST) == 0
    rec = json.load(open(sidecar_path(out)))
    assert rec["prior"] == "text" and rec["settings"]["text_as_image_embed"] is True
    assert "prior" not in rec["checkpoints"]
    pipe = UnCLIP.from_directory(dirs["root"], prior="none", progress=False)
    text = pipe.encode_text(CAPTIONS[:1])
    want = pipe.decode(text["embeds"], 2, text=text, decoder_steps="2",
                       upsampler_steps="ddim1")["upsampler2"]
    np.testing.assert_array_equal(read_png(out)[2:-2, 2:-2], to_uint8(want)[0])
    regen = str(tmp_path / "regen.png")
    assert cli.main(["sample", "--from-sidecar", sidecar_path(out), "--out", regen,
                     "--no-progress"]) == 0
    np.testing.assert_array_equal(read_png(regen), read_png(out))


def _input_pngs(folder, seeds=(0, 1)) -> list[str]:
    """Smooth 12 px test images written as FOLDER/in{i}.png."""
    from PIL import Image
    paths = []
    for i, seed in enumerate(seeds):
        p = str(folder / f"in{i}.png")
        Image.fromarray(to_uint8(smooth_image(seed, 12))).save(p)
        paths.append(p)
    return paths


def test_manipulation_commands(dirs, tmp_path, monkeypatch):
    """vary / interpolate / textdiff given relative paths (inputs, --checkpoint, --out in a
    subfolder): the sidecar names them relative to its own folder, holds no absolute path
    but one the user gave, and regenerates the same grid from another directory."""
    _input_pngs(tmp_path)
    absolute = str(tmp_path / "in1.png")                  # given absolute: recorded as such
    monkeypatch.chdir(tmp_path)
    ckpt = os.path.relpath(dirs["root"])
    common = ["--checkpoint", ckpt, "--decoder-steps", "ddim2", "--upsampler-steps",
              "ddim1", "--no-progress"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for argv, n, want in [
            (["vary", "in0.png", "-n", "2"], 3, ["../in0.png"]),   # the source + 2 variations
            (["interpolate", "in0.png", absolute, "-n", "3"], 3, ["../in0.png", absolute]),
            (["textdiff", "in1.png", "--from", CAPTIONS[0], "--to", CAPTIONS[1], "-n", "2"], 2,
             ["../in1.png"])]:
        monkeypatch.chdir(tmp_path)
        out = os.path.join("out", f"{argv[0]}.png")
        assert cli.main(argv + common + ["--out", out, "--cols", "1"]) == 0
        assert read_png(out).shape[0] == 2 + n * 34
        rec = json.load(open(sidecar_path(out)))
        assert sidecars.input_files(rec["command"], rec["inputs"]) == want
        assert set(rec["input_sha256"]) == set(want)
        assert rec["checkpoint"] == os.path.join("..", ckpt)
        assert rec["checkpoints"]["decoder"]["dir"] == os.path.join("..", ckpt, "decoder")
        assert rec["output"] == f"{argv[0]}.png"
        assert {s for s in json_strings(rec) if os.path.isabs(s)} <= {absolute}
        monkeypatch.chdir(elsewhere)
        side = os.path.join("..", sidecar_path(out))
        assert cli.main(["sample", "--from-sidecar", side, "--out", "again.png",
                         "--no-progress"]) == 0
        np.testing.assert_array_equal(read_png("again.png"), read_png(str(tmp_path / out)))
        again = json.load(open("again.json"))
        assert again["inputs"] == rec["inputs"] and again["checkpoint"] == rec["checkpoint"]
        assert again["regenerated_from"] == side
        assert {s for s in json_strings(again) if os.path.isabs(s)} <= {absolute}
        os.remove("again.png")
        os.remove("again.json")


def test_vary_grid_starts_each_row_with_its_source_and_records_input_hashes(dirs, tmp_path):
    import hashlib

    from unclip_jax.sample.images import load_images
    paths = _input_pngs(tmp_path)
    out = str(tmp_path / "vary.png")
    assert cli.main(["vary", *paths, "-n", "2", "--checkpoint", dirs["root"], "--decoder-steps",
                     "ddim2", "--upsampler-steps", "ddim1", "--no-progress", "--out", out]) == 0
    grid = read_png(out)
    assert grid.shape == (2 + 2 * 34, 2 + 3 * 34, 3)       # a row per source: it + 2 variations
    sources = to_uint8(load_images(paths, 32))
    for r in range(2):
        np.testing.assert_array_equal(grid[2 + r * 34:34 + r * 34, 2:34], sources[r])
    rec = json.load(open(sidecar_path(out)))
    assert rec["image_shape"] == [4, 32, 32, 3]             # the variations themselves
    assert rec["input_sha256"] == {p: hashlib.sha256(open(p, "rb").read()).hexdigest()
                                   for p in paths}
    # an input changed since: --from-sidecar names it instead of drawing different pixels
    _input_pngs(tmp_path, seeds=(0, 5))
    with pytest.raises(UserError, match=r"input image .*in1.png differs from the one .* recorded"):
        records.regenerate(sidecar_path(out), str(tmp_path / "again.png"))
    assert not os.path.exists(tmp_path / "again.png")


@pytest.mark.parametrize("argv,msg", [
    (["sample", "a red circle", "--checkpoint", "/no/such/checkpoint"], "does not exist"),
    (["sample", "--checkpoint", "ROOT"], "no prompts"),
    (["sample", "a", "--checkpoint", "ROOT", "--decoder-guidance", "-2"], "guidance"),
    (["sample", "a", "--checkpoint", "ROOT", "--decoder-steps", "5000"], "at most"),
    (["vary", "/no/such/image.png", "--checkpoint", "ROOT"], "does not exist"),
    (["sample", "a", "--checkpoint", "DECODER"], "none of the stage subdirectories"),
    (["sample", "--from-sidecar", "/no/such.json"], "sidecar"),
])
def test_cli_errors_are_one_line(dirs, tmp_path, capsys, argv, msg):
    argv = [a.replace("ROOT", dirs["root"]).replace("DECODER", dirs["decoder"]) for a in argv]
    rc = cli.main(argv + ["--out", str(tmp_path / "x.png"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("unclip-jax: error:") and msg in err[-1]
    assert not os.path.exists(tmp_path / "x.png")


def test_missing_default_model_names_the_flag(tmp_path, capsys, monkeypatch):
    """Without --checkpoint the embedded model is used; when a package ships none, the error
    names the flag."""
    from unclip_jax.sample import loading
    monkeypatch.setattr(loading, "BUNDLED_MODEL", str(tmp_path / "no_model"))
    rc = cli.main(["sample", "a red circle", "--out", str(tmp_path / "x.png"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("unclip-jax: error:") and "--checkpoint" in err[-1]
    assert not os.path.exists(tmp_path / "x.png")

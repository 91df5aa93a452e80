"""Issue-17 guarantees for files the project writes and reads back: atomic, non-clobbering
writes (`unclip_jax.atomic`), per-array checksums of exports verified on load, MANIFEST
digests, and a one-line error for a damaged or modified export."""
import errno
import json
import os

import jax
import ml_collections as mlc
import numpy as np
import pytest

from unclip_jax import atomic, export
from unclip_jax.errors import CheckpointError, UserError


def listing(root):
    out = {}
    for r, dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(r, f)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


# ------------------------------------------------------------------ atomic writes
def test_atomic_write_refuses_to_clobber_and_leaves_nothing(tmp_path):
    p = str(tmp_path / "a.json")
    atomic.write_json(p, {"x": 1})
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        atomic.write_json(p, {"x": 2}, overwrite=False)
    assert json.load(open(p)) == {"x": 1}
    atomic.write_json(p, {"x": 3})
    assert json.load(open(p)) == {"x": 3}
    assert sorted(os.listdir(tmp_path)) == ["a.json"]


def test_atomic_write_gives_the_mode_a_plain_write_would(tmp_path):
    atomic._umask.cache_clear()
    old = os.umask(0o022)
    try:
        atomic.write_text(str(tmp_path / "a.txt"), "x")
        with open(tmp_path / "b.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
        atomic._umask.cache_clear()
    mode = lambda n: os.stat(tmp_path / n).st_mode & 0o777
    assert mode("a.txt") == mode("b.txt") == 0o644


def test_failed_write_keeps_the_old_file_whole(tmp_path, monkeypatch):
    p = str(tmp_path / "out.png")
    atomic.write_bytes(p, b"old image")
    real_fsync = os.fsync

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(UserError, match=r"cannot write .*out\.png \(No space left on device\); "
                                        "nothing was changed"):
        atomic.write_files({p: b"new image", str(tmp_path / "out.json"): b"{}"})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert listing(tmp_path) == {"out.png": b"old image"}


def test_check_output_path(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a directory"):
        atomic.check_output_path(str(tmp_path))
    with pytest.raises(UserError, match="is a file, not a directory"):
        atomic.check_output_path(str(tmp_path / "file" / "sub" / "x.png"))
    with pytest.raises(UserError, match="already exists"):
        atomic.check_output_path(str(tmp_path / "file"))
    assert atomic.check_output_path(str(tmp_path / "file"), overwrite=True)


def test_build_dir_replaces_only_when_complete(tmp_path):
    d = str(tmp_path / "out")
    with atomic.build_dir(d) as tmp:
        open(os.path.join(tmp, "a"), "w").write("1")
    with pytest.raises(RuntimeError):
        with atomic.build_dir(d) as tmp:
            open(os.path.join(tmp, "a"), "w").write("2")
            raise RuntimeError("interrupted")
    assert listing(tmp_path) == {"out/a": b"1"}
    assert atomic.leftovers(str(tmp_path)) == []


# ------------------------------------------------------------------ exports
def _params():
    rng = np.random.default_rng(0)
    return {"dense": {"kernel": rng.normal(size=(4, 3)).astype(np.float32),
                      "bias": np.zeros(3, np.float32)}}


def _config():
    return mlc.ConfigDict({"stage": "toy", "model": {"dim": 4}})


def test_export_writes_checksums_and_verifies_them(tmp_path):
    d = str(tmp_path / "toy")
    export.save(d, _params(), _config(), extra={"step": 3})
    sums = json.load(open(os.path.join(d, export.CHECKSUMS)))["arrays"]
    assert set(sums) == {"dense.kernel", "dense.bias"}
    params, _, extra = export.load(d)
    np.testing.assert_array_equal(params["dense"]["kernel"], _params()["dense"]["kernel"])
    assert extra == {"step": 3}
    assert atomic.leftovers(str(tmp_path)) == []
    # an existing export is not replaced unless asked
    before = listing(d)
    with pytest.raises(UserError, match="already holds an exported checkpoint; pass --overwrite"):
        export.save(d, _params(), _config())
    assert listing(d) == before
    changed = jax.tree.map(lambda a: a * 0.9, _params())
    export.save(d, changed, _config(), overwrite=True)
    np.testing.assert_allclose(export.load(d)[0]["dense"]["kernel"],
                               changed["dense"]["kernel"])
    assert sorted(os.listdir(tmp_path)) == ["toy"]


def test_export_refuses_a_file_as_directory(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        export.save(str(tmp_path / "f"), _params(), _config())
    assert listing(tmp_path) == {"f": b"x"}


def test_modified_weights_are_refused_naming_the_array(tmp_path):
    d = str(tmp_path / "toy")
    export.save(d, _params(), _config())
    # rewrite params/ with other values but keep the old checksums: as if bytes flipped
    import orbax.checkpoint as ocp
    import shutil
    shutil.rmtree(os.path.join(d, "params"))
    bad = _params()
    bad["dense"]["kernel"][0, 0] = np.nan
    with ocp.StandardCheckpointer() as c:
        c.save(os.path.join(d, "params"), bad)
    before = listing(d)
    with pytest.raises(CheckpointError, match=r"array dense\.kernel does not match its "
                                              r"checksum .*damaged weights"):
        export.load(d)
    assert listing(d) == before


def test_manifest_digest_is_checked(tmp_path):
    d = str(tmp_path / "decoder")
    export.save(d, _params(), mlc.ConfigDict({"stage": "decoder"}))
    digest = export.file_sha256(os.path.join(d, export.CHECKSUMS))
    atomic.write_json(str(tmp_path / "MANIFEST.json"),
                      {"stages": {"decoder": {"params_sha256": digest}}})
    export.load(d)
    atomic.write_json(str(tmp_path / "MANIFEST.json"),
                      {"stages": {"decoder": {"params_sha256": "0" * 64}}})
    with pytest.raises(CheckpointError, match="does not match the checksum recorded for "
                                              "'decoder'"):
        export.load(d)


def test_export_without_checksums_loads_but_says_unverified(tmp_path):
    d = str(tmp_path / "old")
    export.save(d, _params(), _config())
    os.remove(os.path.join(d, export.CHECKSUMS))
    with pytest.warns(UserWarning, match="weights are unverified"):
        export.load(d)


def test_invalid_config_json_names_the_file(tmp_path):
    d = str(tmp_path / "toy")
    export.save(d, _params(), _config())
    open(os.path.join(d, "config.json"), "w").write("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        export.load(d)


def test_bundled_model_is_verified():
    """The shipped model carries checksums for every array and the MANIFEST's digests."""
    import unclip_jax
    BUNDLED_MODEL = os.path.join(os.path.dirname(unclip_jax.__file__), "assets", "shapes")
    manifest = json.load(open(os.path.join(BUNDLED_MODEL, "MANIFEST.json")))
    for name, entry in manifest["stages"].items():
        d = os.path.join(BUNDLED_MODEL, name)
        assert entry["params_sha256"] == export.file_sha256(os.path.join(d, export.CHECKSUMS))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        params, config, _ = export.load(os.path.join(BUNDLED_MODEL, "upsampler2"))
    assert config.stage == "upsampler2"

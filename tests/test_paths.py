"""unclip_jax.paths: one rule for every path option, and the local half of the layer.

The gs:// half runs against a Cloud Storage emulator in tests/test_gcs.py.
"""
import os

import pytest

from unclip_jax import paths
from unclip_jax.errors import UserError


def test_one_rule_for_every_path_option(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RUNS", "/data/runs")
    assert paths.resolve("runs/a") == str(tmp_path / "runs" / "a")          # relative: cwd
    assert paths.resolve("./runs/../b/") == str(tmp_path / "b")
    assert paths.resolve("~/x") == str(tmp_path / "home" / "x")             # ~ expanded
    assert paths.resolve("$RUNS/x") == "/data/runs/x"                       # $VARS expanded
    assert paths.resolve("/abs/y") == "/abs/y"
    assert paths.resolve("gs://bucket/run/") == "gs://bucket/run"           # URL kept
    assert paths.resolve("  gs://bucket  ") == "gs://bucket"
    assert paths.resolve(paths.resolve("runs/a")) == paths.resolve("runs/a")  # idempotent
    assert paths.resolve_optional("") == "" and paths.resolve_optional(None) == ""


@pytest.mark.parametrize("value, message", [
    ("gs:/bucket/run", "--workdir gs:/bucket/run is not a URL (one slash after 'gs:'); "
                       "write gs://bucket/run"),
    ("gs://", "--workdir gs:// names no bucket"),
    ("s3://bucket/run", "--workdir s3://bucket/run: s3:// is not supported"),
    ("", "--workdir is empty"),
])
def test_bad_path_options_are_one_line_user_errors(value, message):
    with pytest.raises(UserError) as e:
        paths.resolve(value, "--workdir")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_join_and_names_keep_urls_intact():
    assert paths.join("gs://b/run", "checkpoints", "3") == "gs://b/run/checkpoints/3"
    assert paths.is_remote("gs://b/x") and not paths.is_remote("/gs/b/x")
    assert paths.basename("gs://b/run/") == "run" and paths.dirname("gs://b/run/x") == "gs://b/run"
    # os.path.normpath would turn the URL into a local 'gs:/b/run' — the bug this layer fixes
    assert os.path.normpath("gs://b/run") == "gs:/b/run"


def test_local_operations(tmp_path):
    root = str(tmp_path / "r")
    paths.write_text(paths.join(root, "a", "x.txt"), "hi")      # parents created
    with paths.open(paths.join(root, "a", "log.jsonl"), "a") as f:
        f.write("1\n")
    with paths.open(paths.join(root, "a", "log.jsonl"), "a") as f:
        f.write("2\n")
    assert paths.read_text(paths.join(root, "a", "log.jsonl")) == "1\n2\n"
    assert paths.listdir(paths.join(root, "a")) == ["log.jsonl", "x.txt"]
    assert paths.listdir(paths.join(root, "missing")) == []
    assert paths.isdir(paths.join(root, "a")) and paths.isfile(paths.join(root, "a", "x.txt"))
    dst = str(tmp_path / "copy")
    paths.copy_tree(root, dst, last=("a/x.txt",))
    assert sorted(paths.walk_files(dst)) == ["a/log.jsonl", "a/x.txt"]
    with paths.local_copy(dst) as d:
        assert d == dst                                        # local: no copy made
    paths.rmtree(dst)
    paths.rmtree(dst)                                          # missing is fine
    assert not paths.exists(dst)


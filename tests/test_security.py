"""Issue-17 security checks: nothing from a model directory is ever executed — a tokenizer
whose config maps to the directory's own Python file is refused even when "y" is waiting on
stdin — and no download skips TLS verification."""
import io
import json
import os
import shutil
import sys

import pytest

import unclip_jax
from unclip_jax import cli
from unclip_jax.clip.tokenizer import Tokenizer
from unclip_jax.errors import UserError

BUNDLED = os.path.join(os.path.dirname(unclip_jax.__file__), "assets", "shapes")


def hostile_tokenizer(directory, marker):
    """A tokenizer directory whose tokenizer_config.json maps AutoTokenizer to evil.py, a file
    that creates `marker` when imported."""
    os.makedirs(directory)
    shutil.copy(os.path.join(BUNDLED, "tokenizer", "tokenizer.json"), directory)
    with open(os.path.join(BUNDLED, "tokenizer", "tokenizer_config.json")) as f:
        cfg = json.load(f)
    cfg["tokenizer_class"] = "EvilTokenizer"
    cfg["auto_map"] = {"AutoTokenizer": [None, "evil.EvilTokenizer"]}
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f)
    with open(os.path.join(directory, "evil.py"), "w") as f:
        f.write(f"open({str(marker)!r}, 'w').write('ran')\n"
                "from transformers import PreTrainedTokenizerFast\n"
                "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    return directory


def test_tokenizer_never_runs_code_from_its_directory(tmp_path, monkeypatch):
    marker = tmp_path / "PWNED"
    d = hostile_tokenizer(str(tmp_path / "tok"), marker)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))
    with pytest.raises(UserError, match="asks to run its own Python code .*never runs code"):
        Tokenizer(d, context_length=8)
    assert not marker.exists()
    # even past the auto_map check, transformers itself is told not to trust the directory
    from unclip_jax.clip import tokenizer as tok_mod
    from transformers import AutoTokenizer
    with pytest.raises(ValueError):
        AutoTokenizer.from_pretrained(d, trust_remote_code=False, local_files_only=True)
    assert not marker.exists()
    assert tok_mod.load_hf_tokenizer(os.path.join(BUNDLED, "tokenizer")).pad_token_id is not None


def test_sample_with_a_hostile_model_directory(tmp_path, monkeypatch, capsys):
    """`echo y | unclip-jax sample ... --checkpoint EVIL`: one line, exit 2, no code run,
    nothing written."""
    evil = tmp_path / "EVIL"
    evil.mkdir()
    for stage in ("clip", "decoder"):
        shutil.copytree(os.path.join(BUNDLED, stage), evil / stage)
    marker = tmp_path / "PWNED"
    hostile_tokenizer(str(evil / "tokenizer"), marker)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))
    out = tmp_path / "out" / "x.png"
    rc = cli.main(["sample", "a red circle", "--checkpoint", str(evil), "--prior", "text",
                   "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("unclip-jax: error:")
    assert "never runs code" in err[0]
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_no_tls_verification_is_switched_off():
    root = os.path.dirname(unclip_jax.__file__)
    for r, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                text = open(os.path.join(r, f), encoding="utf-8").read()
                assert "verify_ssl=False" not in text and "verify=False" not in text, f

"""Presets by name from any directory (`--config shapes:decoder`), files by path, the errors,
and the packaging: the presets ship as unclip_jax.configs, with no top-level `configs`."""
import glob
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from unclip_jax.errors import UserError
from unclip_jax.cli.config_args import load_config, preset_names

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_preset_by_name_equals_the_file_by_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)              # outside the checkout: no configs/ here
    assert {"shapes", "paper", "karlo"} <= set(preset_names())
    assert "common" not in preset_names()
    for spec in ("shapes:decoder", "shapes:clip3", "paper:prior", "karlo:upsampler2"):
        name, _, arg = spec.partition(":")
        by_path = load_config(os.path.join(REPO, "configs", f"{name}.py") + ":" + arg)
        assert load_config(spec).to_dict() == by_path.to_dict(), spec
    assert load_config("shapes").stage == "decoder"        # no variant: the preset's default


def test_relative_file_path_still_loads(monkeypatch):
    monkeypatch.chdir(REPO)                  # what the launch scripts and run scripts pass
    assert load_config("configs/shapes.py:clip3").to_dict() == \
        load_config("shapes:clip3").to_dict()


def test_own_config_file_with_home_in_its_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "mine.py").write_text(
        "from unclip_jax.configs import shapes\n"
        "def get_config(arg=None):\n"
        "    cfg = shapes.get_config(arg)\n"
        "    cfg.seed = 7\n"
        "    return cfg\n")
    cfg = load_config("~/mine.py:prior")
    assert cfg.stage == "prior" and cfg.seed == 7


def test_bad_specs_name_the_fix():
    with pytest.raises(UserError, match=r"no preset named 'shaeps'; presets: .*shapes"):
        load_config("shaeps:decoder")
    with pytest.raises(UserError, match=r"config file 'nope/x.py' not found.*shapes:decoder"):
        load_config("nope/x.py:decoder")
    with pytest.raises(UserError, match=r"unknown config variant 'decodr'.*'decoder'"):
        load_config("shapes:decodr")


def test_cli_resolves_a_preset_from_outside_the_checkout(tmp_path):
    """A fresh interpreter in a directory with no configs/ (what an installed user has)."""
    code = ("from unclip_jax.cli.config_args import load_config; "
            "c = load_config('shapes:decoder'); print(c.stage, c.data.name)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["decoder", "unclip_shapes/medium"]
    bad = subprocess.run([sys.executable, "-m", "unclip_jax.cli", "train", "--config",
                          "shapes:nope", "--workdir", str(tmp_path / "w")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown config variant 'nope'" in bad.stderr


def test_wheel_ships_presets_inside_the_package_only(tmp_path):
    """`pip wheel` of a copy of the checkout: unclip_jax/configs/*.py, no top-level configs."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "assets")
    os.makedirs(src)
    for item in ("setup.py", "README.md", "configs", "unclip_jax"):
        path = os.path.join(REPO, item)
        if os.path.isdir(path):
            shutil.copytree(path, src / item, ignore=ignore)
        else:
            shutil.copy2(path, src / item)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    names = zipfile.ZipFile(glob.glob(str(tmp_path / "dist" / "*.whl"))[0]).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"unclip_jax"}, tops
    shipped = {os.path.basename(n) for n in names if n.startswith("unclip_jax/configs/")}
    assert {"__init__.py", "shapes.py", "paper.py", "karlo.py"} <= shipped
    assert "unclip_jax/config_schema.py" in names          # the schema the presets use
    data = {os.path.relpath(os.path.join(d, f), src).replace(os.sep, "/")
            for d, _, files in os.walk(src / "unclip_jax") for f in files
            if not f.endswith((".py", ".pyc"))}
    assert data and data <= set(names), data - set(names)   # e.g. eval/prompts/*.json


@pytest.mark.parametrize("name,steps,keep", [("upsampler1_32b", 3000, 1000),
                                              ("upsampler1_32c", 6000, 2000)])
def test_upsampler1_continuations_keep_the_bundled_upsampler1(name, steps, keep):
    """upsampler1_32b / _32c are upsampler1_32 trained on: the same model and data, their own
    step counts, and the model is the bundled upsampler1's tree (so `train.init_from` takes
    its export)."""
    import json
    from unclip_jax.paths import BUNDLED_MODEL
    a, b = (json.loads(json.dumps(load_config(f"shapes:{n}").to_dict()))
            for n in ("upsampler1_32", name))
    assert b["train"] == {**a["train"], "steps": steps, "keep_every": keep}
    assert {k: v for k, v in b.items() if k != "train"} == \
        {k: v for k, v in a.items() if k != "train"}
    with open(os.path.join(BUNDLED_MODEL, "upsampler1", "config.json")) as f:
        bundled = json.load(f)["model"]
    assert {k: bundled.get(k) for k in b["model"]} == b["model"]


def test_prior3b_continues_the_bundled_prior():
    """prior3b is prior3 trained on from the bundled prior: the same model, data and CLIP,
    its own step count and kept checkpoints, and the bundled prior's model tree."""
    import json
    from unclip_jax.paths import BUNDLED_MODEL
    a, b = (json.loads(json.dumps(load_config(f"shapes:{n}").to_dict()))
            for n in ("prior3", "prior3b"))
    assert b["train"] == {**a["train"], "steps": 2400, "keep_every": 400, "init_from": "bundled"}
    assert {k: v for k, v in b.items() if k != "train"} == \
        {k: v for k, v in a.items() if k != "train"}
    with open(os.path.join(BUNDLED_MODEL, "prior", "config.json")) as f:
        bundled = json.load(f)["model"]
    assert {k: bundled.get(k) for k in b["model"]} == b["model"]

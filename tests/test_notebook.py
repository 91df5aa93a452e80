"""colab/unclip_sampling.ipynb: executed headless on CPU from a clean kernel (this venv's
interpreter) against the tiny random checkpoints of tests/pipeline_fixtures.py, with the
notebook's fast settings (UNCLIP_NOTEBOOK_FAST=1: 2 steps per stage, 2 prompts × 1 image,
2 variations, 3 interpolation frames, 4 text-diff frames)."""
import base64
import importlib.util
import io
import json
import os
import subprocess
import sys

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

from pipeline_fixtures import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "colab", "unclip_sampling.ipynb")
PX = 12                 # UNCLIP_DISPLAY_PX: displayed tile size
PAD = 2                 # sample.images.make_grid's gap
FINAL_PX = 32           # the fixture's last upsampler output size
# (rows, cols) of each tagged cell's single image output under UNCLIP_NOTEBOOK_FAST=1
GRIDS = {"sample": (2, 1), "stages": (1, 3), "variation": (1, 3), "interpolation": (1, 3),
         "textdiff": (1, 4)}
SAVED = {"sample": (2, 1), "variations": (1, 3), "interpolation": (1, 3), "textdiff": (1, 4)}


def _load_generator():
    spec = importlib.util.spec_from_file_location(
        "make_notebook", os.path.join(ROOT, "colab", "make_notebook.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _grid_size(rows, cols, tile):
    """(width, height) of a make_grid canvas."""
    return cols * (tile + PAD) + PAD, rows * (tile + PAD) + PAD


def _tile(grid: np.ndarray, r: int, c: int, tile: int) -> np.ndarray:
    y, x = PAD + r * (tile + PAD), PAD + c * (tile + PAD)
    return grid[y:y + tile, x:x + tile]


def _tagged(nb, tag):
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}"
    return cells[0]


def _pngs(cell) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(o["data"]["image/png"]))).convert("RGB"))
            for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Execute the committed notebook; returns (executed notebook, output directory)."""
    dirs = checkpoints(tmp_path_factory)
    work = tmp_path_factory.mktemp("notebook")
    spec_dir = work / "jupyter" / "kernels" / "unclip-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "unclip-jax test", "language": "python"}))
    out_dir = work / "out"
    env = dict(os.environ, UNCLIP_CHECKPOINT=dirs["root"], UNCLIP_NOTEBOOK_FAST="1",
               UNCLIP_DISPLAY_PX=str(PX), UNCLIP_NOTEBOOK_OUT=str(out_dir),
               JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, kernel_name="unclip-test", timeout=600,
                            resources={"metadata": {"path": str(work)}})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(work / "jupyter"))
        client.execute(env=env)
    return nb, out_dir


def test_committed_notebook_is_the_generators_output_with_outputs_cleared():
    gen = _load_generator()
    with open(NOTEBOOK, encoding="utf-8") as f:
        assert f.read() == gen.render(), "run python colab/make_notebook.py"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)


def _run_install_cell(monkeypatch, cwd, source=None):
    """Execute the install cell as if unclip_jax were not installed; → the commands it ran."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "REPO_URL" in c.source)
    assert "OWNER" not in cell.source and cell.source.count("github.com") == 1
    if source is None:
        monkeypatch.delenv("UNCLIP_SOURCE", raising=False)
    else:
        monkeypatch.setenv("UNCLIP_SOURCE", source)
    monkeypatch.chdir(cwd)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "unclip_jax" else real(name, *a))
    ran = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: ran.append(cmd[1:]))
    scope = {}
    exec(compile(cell.source, "install-cell", "exec"), scope)
    return scope, ran


def test_install_cell_installs_from_an_upload_or_the_repository(monkeypatch, tmp_path):
    scope, ran = _run_install_cell(monkeypatch, tmp_path)
    repo = scope["REPO_URL"]
    assert repo.startswith("https://github.com/")
    # nothing uploaded: the package from the repository without its requirements, then the
    # setup module installs them (keeping a preinstalled TensorFlow) and checks JAX's backend
    assert ran == [["-m", "pip", "install", "-q", "--no-deps", f"git+{repo}"],
                   ["-m", "unclip_jax.colab_setup", "--deps"]]
    (tmp_path / "unclip-jax").mkdir()
    (tmp_path / "unclip-jax" / "setup.py").write_text("")
    _, ran = _run_install_cell(monkeypatch, tmp_path)
    assert ran[0][-1] == str(tmp_path / "unclip-jax")               # an uploaded checkout
    (tmp_path / "unclip_jax-0.1.0-py3-none-any.whl").write_text("")
    _, ran = _run_install_cell(monkeypatch, tmp_path)
    assert ran[0][-1] == str(tmp_path / "unclip_jax-0.1.0-py3-none-any.whl")   # a wheel first
    _, ran = _run_install_cell(monkeypatch, tmp_path, source="git+https://example.org/fork@dev")
    assert ran[0][-1] == "git+https://example.org/fork@dev"


def test_model_cell_names_the_fix_when_no_model_is_bundled(monkeypatch, tmp_path):
    from unclip_jax.errors import UserError
    from unclip_jax.sample import loading
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "UNCLIP_CHECKPOINT" in c.source)
    monkeypatch.setenv("UNCLIP_CHECKPOINT", "")
    monkeypatch.setattr(loading, "BUNDLED_MODEL", str(tmp_path / "absent"))
    with pytest.raises(UserError, match="no bundled model; set CHECKPOINT to a directory"):
        exec(compile(cell.source, "model-cell", "exec"), {"os": os})


@pytest.mark.slow   # the notebook run on the bundled model: ~60 s
def test_every_cell_ran_without_error(run):
    nb, _ = run
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for c in code for o in c.outputs)
    assert "already installed; skipping pip install" in text
    assert "devices: 4" in text    # the pipeline sharded over the kernel's 4 CPU devices


@pytest.mark.slow   # the notebook run on the bundled model: ~60 s
@pytest.mark.parametrize("tag", sorted(GRIDS))
def test_cell_shows_one_grid_with_the_expected_tiles(run, tag):
    nb, _ = run
    pngs = _pngs(_tagged(nb, tag))
    assert len(pngs) == 1, f"{tag}: {len(pngs)} images"
    rows, cols = GRIDS[tag]
    grid = pngs[0]
    assert (grid.shape[1], grid.shape[0]) == _grid_size(rows, cols, PX)
    tiles = [_tile(grid, r, c, PX) for r in range(rows) for c in range(cols)]
    gaps = grid.copy()
    for r in range(rows):
        for c in range(cols):
            y, x = PAD + r * (PX + PAD), PAD + c * (PX + PAD)
            gaps[y:y + PX, x:x + PX] = 255
    assert (gaps == 255).all(), "tiles must sit exactly in make_grid's cells"
    assert all(t.std() > 0 for t in tiles), "a tile is a flat colour"


@pytest.mark.slow   # the notebook run on the bundled model: ~60 s
def test_variation_strip_starts_with_the_generated_image(run):
    nb, _ = run
    sample = _pngs(_tagged(nb, "sample"))[0]
    strip = _pngs(_tagged(nb, "variation"))[0]
    np.testing.assert_array_equal(_tile(strip, 0, 0, PX), _tile(sample, 0, 0, PX))
    assert not np.array_equal(_tile(strip, 0, 1, PX), _tile(strip, 0, 2, PX))


@pytest.mark.slow   # the notebook run on the bundled model: ~60 s
def test_saved_pngs_are_full_resolution_grids(run):
    _, out_dir = run
    assert sorted(os.listdir(out_dir)) == sorted(f"{k}.png" for k in SAVED)
    for name, (rows, cols) in SAVED.items():
        with Image.open(out_dir / f"{name}.png") as im:
            assert im.format == "PNG"
            assert im.size == _grid_size(rows, cols, FINAL_PX), name

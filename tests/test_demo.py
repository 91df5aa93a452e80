"""`unclip-jax demo` end to end with small settings."""
import numpy as np
import pytest
from PIL import Image

from unclip_jax import cli
from unclip_jax.diffusion import demo


@pytest.mark.slow   # ~20 s
def test_demo_writes_png_and_samples_the_mixture(tmp_path, capsys):
    out = tmp_path / "demo.png"
    rows = demo.run_all(str(out), steps=30, num_samples=800, seed=2)
    img = Image.open(out)
    assert img.format == "PNG" and img.width == 6 * 256
    assert np.asarray(img).std() > 0
    text = capsys.readouterr().out
    by = {r["sampler"]: r for r in rows}
    assert set(by) == {"ddpm (fixed_small)", "ddpm (fixed_large)", "ddim eta=0", "ddim eta=1",
                       "ddim invert→sample"}
    for name, r in by.items():
        assert name in text
        # mixture variance 0.186 per axis; 800 samples → s.e. of the mean ≈ 0.015 per axis
        assert r["mean_err"] < 0.07 and r["cov_err"] < 0.05, r
    assert by["ddim invert→sample"]["inv_err"] < 0.05


def test_demo_cli_bad_settings(capsys):
    assert cli.main(["demo", "--steps", "5000", "--out", ""]) == 2
    assert "--steps must be between 1 and 1000" in capsys.readouterr().err

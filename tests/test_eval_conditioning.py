"""`unclip_jax.eval.conditioning` (`unclip-jax eval-conditioning`): edited captions change
exactly the asked attribute, the object mask, the paired ε errors against an oracle, bad flags."""
import numpy as np
import pytest

from unclip_jax import cli
from unclip_jax.data import hard_negatives as hn
from unclip_jax.data import render
from unclip_jax.eval import conditioning as cond


def words(caption, names):
    return sorted(w for w in caption.replace(",", " ").split() if w in names)


@pytest.mark.parametrize("kind, names", [("shape", render.SHAPES), ("colour", render.COLOURS),
                                         ("size", render.SIZES)])
def test_edited_captions_change_only_that_attribute(kind, names):
    scenes = [s for s in (hn.scene(7, "validation", i) for i in range(40)) if len(s[0]) == 1][:8]
    edited = cond.edited_captions(scenes, kind)
    others = [n for n in (render.SHAPES, render.COLOURS, render.SIZES) if n is not names]
    for (_, _, cap), new in zip(scenes, edited):
        assert words(new, names) != words(cap, names)
        assert all(words(new, o) == words(cap, o) for o in others)


def test_object_mask_is_the_object_grown_by_one_pixel():
    img = np.full((1, 8, 8, 3), 200, np.uint8)
    img[0, 3:5, 4:6] = (255, 0, 0)
    want = np.zeros((1, 8, 8), bool)
    want[0, 2:6, 3:7] = True
    np.testing.assert_array_equal(cond.object_mask(img), want)


def test_paired_errors_are_zero_for_an_oracle_and_one_for_a_blind_model():
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
    ac = np.linspace(0.999, 0.01, 1000)

    def model_fn(x_t, t, use):       # recovers ε exactly from x_t when it may use x0
        a = np.sqrt(ac[np.asarray(t)])[:, None, None, None]
        eps = (np.asarray(x_t) - a * x0) / np.sqrt(1 - a ** 2)
        return eps if use else np.zeros_like(eps)
    mask = np.zeros((4, 8, 8), bool)
    mask[:, 2:4, 2:4] = True
    err = cond.eps_errors(model_fn, ac, x0, mask, {"full": {"use": True},
                                                   "nothing": {"use": False}}, seeds=3)
    assert err["image"]["full"] < 1e-8 and err["object"]["full"] < 1e-8
    assert abs(err["image"]["nothing"] - 1.0) < 0.05          # E[ε²] = 1
    rel = cond.relative({"image": {"full": 0.5, "no z_i": 0.75}})
    assert rel["image"]["no z_i"]["relative"] == pytest.approx(0.5)


def test_bad_flags_are_one_argparse_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli.build_parser(load="eval-conditioning").parse_args(
            ["eval-conditioning", "--data-dir", "D", "--timesteps", "100,x"])
    assert e.value.code == 2
    assert "argument --timesteps: '100,x' is not a comma list" in capsys.readouterr().err
    assert cli.main(["eval-conditioning", "--data-dir", "D", "--limit", "0"]) == 2
    assert capsys.readouterr().err.strip() == ("unclip-jax: error: --limit 0 and --seeds 2 must "
                                               "be at least 1")

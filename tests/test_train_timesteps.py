"""Training timesteps: uniform by default, or a band drawn more often (train.t_band / t_band_p)."""
import jax
import ml_collections as mlc
import numpy as np
import pytest

from unclip_jax.errors import UserError
from unclip_jax.train import losses


def _config(band=(), band_p=0.0, T=1000):
    return mlc.ConfigDict(dict(diffusion=dict(timesteps=T),
                               train=dict(t_band=band, t_band_p=band_p)))


def test_without_a_band_the_draw_is_the_uniform_one():
    """band_p = 0 draws the same t as a plain randint from the same key (old runs resume with
    the same timesteps), and a config without the keys (an older export's) does too."""
    key = jax.random.key(3)
    plain = jax.random.randint(key, (64,), 0, 1000)
    np.testing.assert_array_equal(losses.sample_timesteps(key, 64, 1000), plain)
    np.testing.assert_array_equal(losses.sample_timesteps(key, 64, 1000, (50, 500), 0.0), plain)
    old = mlc.ConfigDict(dict(diffusion=dict(timesteps=1000), train=dict()))
    t_old = losses._diffusion_draws(key, old, 64)[0]
    t_new = losses._diffusion_draws(key, _config(), 64)[0]
    np.testing.assert_array_equal(t_old, t_new)


def test_band_mixture_frequencies():
    """With p = 0.7 and band [100, 300) of T = 1000, the band holds 0.7 + 0.3·0.2 = 0.76 of the
    draws, and outside it t stays uniform (each of [0, 100) and [300, 1000) at 0.3 × its
    share); every t is in [0, T)."""
    n = 200_000
    t = np.asarray(losses.sample_timesteps(jax.random.key(0), n, 1000, (100, 300), 0.7))
    assert t.dtype == np.int32 and t.min() >= 0 and t.max() <= 999
    se = 4 * np.sqrt(0.25 / n)           # 4 standard errors of a proportion
    assert abs(np.mean((t >= 100) & (t < 300)) - 0.76) < se
    assert abs(np.mean(t < 100) - 0.03) < se
    assert abs(np.mean(t >= 300) - 0.21) < se
    # inside the band: uniform over its 200 steps (both halves equal)
    inside = t[(t >= 100) & (t < 300)]
    assert abs(np.mean(inside < 200) - 0.5) < 4 * np.sqrt(0.25 / inside.size)


def test_band_p_one_draws_only_the_band():
    t = np.asarray(losses.sample_timesteps(jax.random.key(1), 10_000, 1000, (50, 60), 1.0))
    assert t.min() == 50 and t.max() == 59


@pytest.mark.parametrize("band,band_p,message", [
    ((50, 500), 1.5, "t_band_p must be in [0, 1], got 1.5"),
    ((500, 50), 0.5, "t_band must be (lo, hi) with 0 <= lo < hi <= diffusion.timesteps = 1000, got (500, 50)"),
    ((0, 2000), 0.5, "got (0, 2000)"),
    ((), 0.5, "got ()"),
])
def test_bad_band_is_a_clear_error(band, band_p, message):
    with pytest.raises(UserError) as e:
        losses._diffusion_draws(jax.random.key(0), _config(band, band_p), 8)
    assert message in str(e.value)


@pytest.mark.parametrize("name", ["decoder32f", "decoder32g", "decoder32h",
                                  "decoder32i", "decoder32j"])
def test_band_presets_draw_their_band(name):
    """decoder32f / g / h / i / j train the decoder32d model (same tree, so init_from takes its export)
    with 70% of their steps in [50, 500)."""
    from unclip_jax.cli.config_args import load_config
    d = load_config("shapes:decoder32d")
    f = load_config(f"shapes:{name}")
    assert f.model.to_dict() == d.model.to_dict()
    assert tuple(f.train.t_band) == (50, 500) and f.train.t_band_p == 0.7
    assert tuple(d.train.t_band) == () and d.train.t_band_p == 0.0

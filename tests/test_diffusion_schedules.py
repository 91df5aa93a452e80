"""Schedules and respacing: identities, caps, respacing consistency, config helper, errors."""
import math

import ml_collections as mlc
import numpy as np
import pytest

import references as R
from unclip_jax.diffusion import schedules as S


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_alpha_bar_strictly_decreasing_and_in_unit_interval(name):
    s = S.make_schedule(name, 1000)
    abar = np.asarray(s.alphas_cumprod, np.float64)
    assert s.num_steps == 1000
    assert np.all(np.diff(abar) < 0)
    assert 0 < abar[-1] < abar[0] < 1
    np.testing.assert_array_equal(np.asarray(s.timesteps), np.arange(1000))


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_posterior_identities(name):
    s = S.make_schedule(name, 300)
    b = S.make_betas(name, 300)
    np.testing.assert_allclose(s.betas, b, rtol=1e-6)
    abar = np.cumprod(1 - b)
    abar_prev = np.append(1.0, abar[:-1])
    np.testing.assert_allclose(s.alphas_cumprod, abar, rtol=1e-5)
    np.testing.assert_allclose(s.alphas_cumprod_prev, abar_prev, rtol=1e-5)
    np.testing.assert_allclose(s.posterior_variance, b * (1 - abar_prev) / (1 - abar), rtol=1e-4,
                               atol=1e-10)
    # clipped log variance: log β̃ except at t = 0 where it takes β̃_1
    pv = np.asarray(s.posterior_variance, np.float64)
    np.testing.assert_allclose(np.exp(s.posterior_log_variance_clipped[1:]), pv[1:], rtol=1e-4)
    np.testing.assert_allclose(np.exp(s.posterior_log_variance_clipped[0]), pv[1], rtol=1e-4)
    # posterior mean of the noise-free path: μ̃(x0, x_t = √ᾱ_t x0) = √ᾱ_{t-1} x0
    c1 = np.asarray(s.posterior_mean_coef1, np.float64)
    c2 = np.asarray(s.posterior_mean_coef2, np.float64)
    np.testing.assert_allclose(c1 + c2 * np.sqrt(abar), np.sqrt(abar_prev), rtol=1e-4)
    np.testing.assert_allclose(s.sqrt_recip_alphas_cumprod * s.sqrt_alphas_cumprod, 1, rtol=1e-5)


def test_cosine_matches_closed_form_and_caps_at_0999():
    T = 1000
    b = S.make_betas("cosine", T)
    assert b.max() == pytest.approx(0.999)
    assert np.sum(b == 0.999) >= 1
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500, 900):
        assert b[t] == pytest.approx(1 - f(t + 1) / f(t), rel=1e-12)


def test_linear_scaled_by_T():
    b = S.make_betas("linear", 1000)
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02)
    b4 = S.make_betas("linear", 4000)
    assert b4[0] == pytest.approx(2.5e-5) and b4[-1] == pytest.approx(0.005)


@pytest.mark.parametrize("source", R.SOURCES)
def test_cosine_parity_with_diffusers(source):
    """β of diffusers' DDPMScheduler: squaredcos_cap_v2 and linear (1e-4 → 0.02), 1000 steps."""
    if source == "golden":
        g = R.load_golden("diffusion")
        ref = {k: g["betas/" + k] for k in ("cosine", "linear")}
    else:
        ref = R.ddpm_betas()
    np.testing.assert_allclose(S.make_betas("cosine", 1000), ref["cosine"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(S.make_betas("linear", 1000), ref["linear"], rtol=1e-5)


@pytest.mark.parametrize("spacing", ["200", [*range(200)], "ddim200", 200])
def test_respacing_that_keeps_every_step_is_the_original(spacing):
    a = S.make_schedule("cosine", 200)
    b = S.respace("cosine", 200, spacing)
    for field in ("betas", "alphas_cumprod", "posterior_variance", "posterior_mean_coef1",
                  "posterior_mean_coef2", "posterior_log_variance_clipped"):
        np.testing.assert_allclose(getattr(b, field), getattr(a, field), rtol=2e-5, atol=1e-7,
                                   err_msg=field)
    np.testing.assert_array_equal(b.timesteps, a.timesteps)


@pytest.mark.parametrize("spacing,n", [("50", 50), ("ddim25", 25), ("10,10,5", 25), ("27", 27),
                                       ("ddim27", 27), ("ddim15", 15), ([0, 3, 999], 3)])
def test_respaced_alpha_bar_equals_original_at_kept_steps(spacing, n):
    full = S.make_schedule("cosine", 1000)
    r = S.respace("cosine", 1000, spacing)
    kept = np.asarray(r.timesteps)
    assert r.num_steps == n == len(kept)
    assert np.all(np.diff(kept) > 0) and kept[0] >= 0 and kept[-1] < 1000
    np.testing.assert_allclose(r.alphas_cumprod, np.asarray(full.alphas_cumprod)[kept], rtol=1e-5)
    np.testing.assert_allclose(r.alphas_cumprod_prev[1:], r.alphas_cumprod[:-1], rtol=1e-6)


def test_timestep_maps():
    assert S.space_timesteps(1000, "ddim25") == list(range(0, 1000, 40))
    assert S.space_timesteps(10, "3") == [0, 4, 9]  # first and last of the section, round(4.5)=4
    # sections: 0..4 and 5..9, 2 and 3 steps
    assert S.space_timesteps(10, "2,3") == [0, 4, 5, 7, 9]
    assert S.space_timesteps(100, [5, 1, 5, 50]) == [1, 5, 50]


def test_from_config():
    cfg = mlc.ConfigDict(dict(schedule="linear", timesteps=100, sample_steps="ddim10"))
    assert S.from_config(cfg).num_steps == 100
    assert S.from_config(cfg, sampling=True).num_steps == 10
    assert list(S.from_config(cfg, "5").timesteps) == list(S.space_timesteps(100, "5"))


def test_bad_inputs_name_the_fix():
    with pytest.raises(ValueError, match=r"unknown noise schedule 'quadratic'.*cosine.*linear"):
        S.make_schedule("quadratic", 10)
    with pytest.raises(ValueError, match=r"trained with T=100 steps; use at most 100"):
        S.respace("cosine", 100, "250")
    with pytest.raises(ValueError, match=r"use at most 100"):
        S.respace("cosine", 100, "ddim101")
    with pytest.raises(ValueError, match=r"section 1 has only 5 .* use at most 5"):
        S.respace("cosine", 10, "1,6")
    with pytest.raises(ValueError, match=r"must lie in \[0, 99\]"):
        S.respace("cosine", 100, [0, 100])
    with pytest.raises(ValueError, match=r"use e.g. '250', 'ddim25'"):
        S.respace("cosine", 100, "ddimx")
    with pytest.raises(ValueError, match=r"positive integer"):
        S.make_schedule("cosine", 0)

"""Samplers driven by the analytic ε-predictor of Gaussian data reproduce the data law."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax import diffusion as D
from unclip_jax.diffusion import toy

T = 1000
FULL = D.make_schedule("cosine", T)
MU = jnp.array([0.3, -0.2, 0.1, 0.5], jnp.float32)
SIGMA = 0.5
N = 4000


def eps_star(x_t, t):
    """Exact ε-predictor for x0 ~ N(MU, SIGMA² I): (x_t − √ᾱ μ)·√(1−ᾱ)/(ᾱσ² + 1−ᾱ)."""
    a = FULL.alphas_cumprod[t][:, None]
    return (x_t - jnp.sqrt(a) * MU) * jnp.sqrt(1 - a) / (a * SIGMA**2 + 1 - a)


def x0_star(x_t, t):
    """The same model parameterised as x0."""
    a = FULL.alphas_cumprod[t][:, None]
    return (x_t - jnp.sqrt(1 - a) * eps_star(x_t, t)) / jnp.sqrt(a)


def check_law(x, mean_tol=0.035, std_tol=0.03):
    x = np.asarray(x)
    assert np.all(np.isfinite(x))
    np.testing.assert_allclose(x.mean(0), MU, atol=mean_tol)   # 4 standard errors ≈ 0.032
    np.testing.assert_allclose(x.std(0), SIGMA, atol=std_tol)  # 100-step bias ≲ 0.015
    cov = np.cov(x.T)
    off = cov - np.diag(np.diag(cov))
    assert np.abs(off).max() < 0.02


@pytest.fixture(scope="module")
def sched100():
    return D.respace("cosine", T, "100")


@pytest.fixture(scope="module")
def sched20():
    return D.respace("cosine", T, "20")


def test_ddpm_reproduces_gaussian_and_variance_choice_orders_spread(sched100):
    """Both fixed variances reproduce N(μ, σ²); β̃ ≤ β so fixed_small spreads less (same noise)."""
    @jax.jit
    def run(key):
        kw = dict(predict="eps", clip_denoised=False)
        return (D.ddpm_sample(eps_star, sched100, (N, 4), key, variance="fixed_small", **kw),
                D.ddpm_sample(eps_star, sched100, (N, 4), key, variance="fixed_large", **kw))

    small, large = run(jax.random.key(0))
    check_law(small)
    check_law(large)
    assert float(small.std(0).mean()) < SIGMA < float(large.std(0).mean())


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_reproduces_gaussian(sched100, eta):
    run = jax.jit(lambda key: D.ddim_sample(eps_star, sched100, (N, 4), key, predict="eps",
                                            eta=eta, clip_denoised=False))
    check_law(run(jax.random.key(2)))


def test_ddim_eta1_is_ddpm_fixed_small(sched20):
    """σ(η=1) = √β̃ and the DDIM mean equals the posterior mean: same key → same samples."""
    key = jax.random.key(3)
    a = D.ddim_sample(eps_star, sched20, (256, 4), key, predict="eps", eta=1.0, clip_denoised=False)
    b = D.ddpm_sample(eps_star, sched20, (256, 4), key, predict="eps", variance="fixed_small",
                      clip_denoised=False)
    np.testing.assert_allclose(a, b, atol=2e-4)


def test_x0_and_v_parameterisations_sample_the_same(sched20):
    key = jax.random.key(4)
    kw = dict(variance="fixed_small", clip_denoised=False)
    a = D.ddpm_sample(eps_star, sched20, (64, 4), key, predict="eps", **kw)
    b = D.ddpm_sample(x0_star, sched20, (64, 4), key, predict="x0", **kw)

    def v_star(x_t, t):
        a_ = FULL.alphas_cumprod[t][:, None]
        return jnp.sqrt(a_) * eps_star(x_t, t) - jnp.sqrt(1 - a_) * x0_star(x_t, t)

    c = D.ddpm_sample(v_star, sched20, (64, 4), key, predict="v", **kw)
    np.testing.assert_allclose(a, b, atol=2e-3)
    np.testing.assert_allclose(a, c, atol=2e-3)


def test_ddim_inversion_round_trip_converges():
    x0 = MU + SIGMA * jax.random.normal(jax.random.key(5), (256, 4))
    errs = []
    for steps in ("ddim50", "ddim100", "ddim200"):
        s = D.respace("cosine", T, steps)
        x_T = jax.jit(lambda x: D.ddim_invert(eps_star, s, x, predict="eps"))(x0)
        # x_T is (approximately) standard normal when x0 follows the data law
        assert abs(float(x_T.std()) - 1.0) < 0.1
        back = D.ddim_sample(eps_star, s, x0.shape, None, predict="eps", x_T=x_T,
                             clip_denoised=False)
        errs.append(float(jnp.abs(back - x0).mean()))
    assert errs[1] < 0.02
    assert errs[2] < 0.7 * errs[1] < 0.7 * 0.7 * errs[0] / 0.7  # first-order convergence


def test_trajectory_and_timesteps_passed_to_model():
    s = D.respace("cosine", T, "ddim10")
    seen = []

    def model(x, t):
        jax.debug.callback(lambda tt: seen.append(np.asarray(tt)), t)
        return jnp.zeros_like(x)

    x, traj = D.ddim_sample(model, s, (3, 2), jax.random.key(0), predict="eps",
                            return_trajectory=True)
    assert traj.shape == (11, 3, 2)
    np.testing.assert_array_equal(traj[-1], x)
    assert [int(t[0]) for t in seen] == list(range(900, -1, -100))
    assert all(t.shape == (3,) and t.dtype == np.int32 for t in seen)


def test_learned_variance_output_is_used_by_ddpm_and_ignored_by_ddim(sched20):
    def learned(v):
        return lambda x, t: jnp.concatenate([eps_star(x, t), jnp.full_like(x, v)], axis=-1)

    key = jax.random.key(6)
    kw = dict(predict="eps", clip_denoised=False)
    lo = D.ddpm_sample(learned(-1.0), sched20, (64, 4), key, variance="learned_range", **kw)
    hi = D.ddpm_sample(learned(1.0), sched20, (64, 4), key, variance="learned_range", **kw)
    small = D.ddpm_sample(eps_star, sched20, (64, 4), key, variance="fixed_small", **kw)
    large = D.ddpm_sample(eps_star, sched20, (64, 4), key, variance="fixed_large", **kw)
    np.testing.assert_allclose(lo, small, atol=1e-4)
    # v = 1 gives log β; fixed_large differs only at t = 0 (β̃_1 instead of β_0), a noise-free step
    np.testing.assert_allclose(hi, large, atol=1e-3)
    d0 = D.ddim_sample(learned(0.3), sched20, (64, 4), key, **kw)
    d1 = D.ddim_sample(eps_star, sched20, (64, 4), key, **kw)
    np.testing.assert_allclose(d0, d1, atol=1e-5)


def test_mixture_demo_model_matches_gaussian_formula_and_autodiff():
    one = toy.Mixture(jnp.ones((1,)), MU[None], SIGMA**2 * jnp.eye(4)[None])
    x = jax.random.normal(jax.random.key(7), (16, 4))
    t = jnp.arange(16, dtype=jnp.int32) * 60
    np.testing.assert_allclose(jax.jit(toy.exact_eps_model(one, FULL.alphas_cumprod))(x, t),
                               eps_star(x, t), atol=1e-5)
    ring = toy.ring_mixture()

    @jax.jit
    def both(x2, a):
        score = jax.vmap(jax.grad(lambda xi, ai: toy.log_marginal(ring, xi[None], ai[None])[0]))
        return toy.exact_eps(ring, x2, a), -jnp.sqrt(1 - a)[:, None] * score(x2, a)

    got, want = both(x[:, :2], FULL.alphas_cumprod[t])
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_samplers_are_single_programs_under_jit(sched100):
    calls = []

    def model(x, t):
        calls.append(1)  # Python side effect: counts traces, not steps
        return eps_star(x, t)

    f = jax.jit(lambda k: D.ddpm_sample(model, sched100, (8, 4), k, predict="eps",
                                        variance="fixed_small"))
    f(jax.random.key(0)).block_until_ready()
    f(jax.random.key(1)).block_until_ready()
    assert len(calls) == 1  # traced once for 100 steps (a scan), not unrolled, not re-traced


def test_bad_sampler_inputs():
    s = D.respace("cosine", 100, "10")
    with pytest.raises(ValueError, match=r"eta must be >= 0"):
        D.ddim_sample(eps_star, s, (2, 4), jax.random.key(0), predict="eps", eta=-0.5)
    with pytest.raises(ValueError, match=r"unknown variance type .*fixed_small"):
        D.ddpm_sample(eps_star, s, (2, 4), jax.random.key(0), predict="eps", variance="learned")
    with pytest.raises(ValueError, match=r"unknown prediction target .*'eps', 'x0', 'v'"):
        D.ddim_sample(eps_star, s, (2, 4), jax.random.key(0), predict="noise")
    with pytest.raises(ValueError, match=r"pass a PRNG key"):
        D.ddpm_sample(eps_star, s, (2, 4), None, predict="eps", variance="fixed_small")
    with pytest.raises(ValueError, match=r"expected 8 .*learned"):
        D.ddpm_sample(eps_star, s, (2, 4), jax.random.key(0), predict="eps",
                      variance="learned_range")

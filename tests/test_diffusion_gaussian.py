"""Forward process, posterior and parameterisation conversions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax import diffusion as D

SCHED = D.make_schedule("cosine", 100)


def _data(shape, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.uniform(k1, shape, minval=-1, maxval=1), jax.random.normal(k2, shape)


@pytest.mark.parametrize("shape", [(5, 8), (5, 4, 4, 3)])
def test_conversions_round_trip(shape):
    x0, eps = _data(shape)
    t = jnp.array([0, 1, 37, 80, 90], jnp.int32)
    x_t = D.q_sample(SCHED, x0, t, eps)
    np.testing.assert_allclose(D.eps_to_x0(SCHED, x_t, t, eps), x0, atol=2e-4)
    np.testing.assert_allclose(D.x0_to_eps(SCHED, x_t, t[:], x0)[1:], eps[1:], atol=2e-3)
    v = D.v_target(SCHED, x0, eps, t)
    np.testing.assert_allclose(D.v_to_x0(SCHED, x_t, t, v), x0, atol=1e-5)
    np.testing.assert_allclose(D.v_to_eps(SCHED, x_t, t, v), eps, atol=1e-5)
    for predict, out in (("eps", eps), ("x0", x0), ("v", v)):
        got_x0, got_eps = D.to_x0_eps(SCHED, out, x_t, t, predict)
        np.testing.assert_allclose(got_x0, x0, atol=2e-4)
        np.testing.assert_allclose(got_eps[1:], eps[1:], atol=2e-3)


def test_q_sample_moments():
    x0 = jnp.full((20000, 2), 0.7)
    eps = jax.random.normal(jax.random.key(1), x0.shape)
    t = jnp.full((20000,), 50, jnp.int32)
    x_t = np.asarray(D.q_sample(SCHED, x0, t, eps))
    a = float(SCHED.alphas_cumprod[50])
    np.testing.assert_allclose(x_t.mean(0), np.sqrt(a) * 0.7, atol=0.02)
    np.testing.assert_allclose(x_t.var(0), 1 - a, rtol=0.05)


def test_q_posterior_matches_bayes_rule():
    """q(x_{t-1}|x_t,x0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x0): product of two Gaussians in x_{t-1}."""
    x0, x_t = _data((4, 3), seed=2)
    t = jnp.array([1, 5, 50, 99], jnp.int32)
    mean, var, logvar = D.q_posterior(SCHED, x0, x_t, t)
    b = np.asarray(SCHED.betas)[np.asarray(t)][:, None].astype(np.float64)
    ap = np.asarray(SCHED.alphas_cumprod_prev)[np.asarray(t)][:, None].astype(np.float64)
    prec = (1 - b) / b + 1 / (1 - ap)
    want_mean = (np.sqrt(1 - b) / b * np.asarray(x_t) + np.sqrt(ap) / (1 - ap) * np.asarray(x0)) / prec
    np.testing.assert_allclose(var, np.broadcast_to(1 / prec, var.shape), rtol=1e-4)
    np.testing.assert_allclose(mean, want_mean, atol=1e-5)
    np.testing.assert_allclose(jnp.exp(logvar), var, rtol=1e-4)


def test_p_mean_variance_variances_and_clipping():
    x0, eps = _data((3, 2, 2, 3), seed=3)
    t = jnp.array([0, 10, 99], jnp.int32)
    x_t = D.q_sample(SCHED, x0, t, eps)
    small = D.p_mean_variance(SCHED, eps, x_t, t, predict="eps", variance="fixed_small",
                              clip_denoised=False)
    large = D.p_mean_variance(SCHED, eps, x_t, t, predict="eps", variance="fixed_large",
                              clip_denoised=False)
    pv, betas = np.asarray(SCHED.posterior_variance), np.asarray(SCHED.betas)
    np.testing.assert_allclose(small["variance"][:, 0, 0, 0], [pv[1], pv[10], pv[99]], rtol=1e-4)
    np.testing.assert_allclose(large["variance"][:, 0, 0, 0], [pv[1], betas[10], betas[99]],
                               rtol=1e-4)
    # with the true noise the mean is the true posterior mean
    np.testing.assert_allclose(small["mean"], D.q_posterior(SCHED, x0, x_t, t)[0], atol=1e-4)
    # v ∈ [-1, 1] interpolates log β̃ .. log β
    for v, want in ((-1.0, small), (1.0, None)):
        out = jnp.concatenate([eps, jnp.full_like(eps, v)], axis=-1)
        got = D.p_mean_variance(SCHED, out, x_t, t, predict="eps", variance="learned_range",
                                clip_denoised=False)
        if want is not None:
            np.testing.assert_allclose(got["log_variance"], want["log_variance"], atol=1e-6)
        else:
            np.testing.assert_allclose(got["variance"][:, 0, 0, 0], betas[[0, 10, 99]], rtol=1e-4)
    # static clipping bounds x0 and eps is recomputed consistently from the clipped x0
    wild = 5 * eps
    clipped = D.p_mean_variance(SCHED, wild, x_t, t, predict="eps", variance="fixed_small")
    assert float(jnp.abs(clipped["pred_x0"]).max()) <= 1.0
    np.testing.assert_allclose(D.eps_to_x0(SCHED, x_t, t, clipped["pred_eps"])[:2],
                               clipped["pred_x0"][:2], atol=1e-4)  # t=99 is ill-conditioned


def test_dynamic_threshold():
    x0 = jnp.stack([jnp.linspace(-3, 3, 101), jnp.linspace(-0.5, 0.5, 101)])
    out = D.dynamic_threshold_x0(x0, 0.9)
    s = float(jnp.quantile(jnp.abs(x0[0]), 0.9))
    np.testing.assert_allclose(out[0], jnp.clip(x0[0], -s, s) / s, atol=1e-6)
    np.testing.assert_allclose(out[1], x0[1], atol=1e-7)   # s = max(1, q) = 1 leaves it alone
    assert float(jnp.abs(out).max()) <= 1.0 + 1e-6


def test_bad_prediction_and_variance_names():
    x = jnp.zeros((2, 3))
    t = jnp.zeros((2,), jnp.int32)
    with pytest.raises(ValueError, match=r"predict='score'.*choose one of \('eps', 'x0', 'v'\)"):
        D.to_x0_eps(SCHED, x, x, t, "score")
    with pytest.raises(ValueError, match=r"variance='learned'.*'learned_range'"):
        D.p_mean_variance(SCHED, x, x, t, predict="eps", variance="learned")
    with pytest.raises(ValueError, match=r"percentile in \(0, 1\]"):
        D.p_mean_variance(SCHED, x, x, t, predict="eps", variance="fixed_small",
                          dynamic_threshold=99.5)

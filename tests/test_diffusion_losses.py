"""Training losses, KL / discretised likelihood helpers, and the full VLB."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import references as R
from unclip_jax import diffusion as D

LIN = D.make_schedule("linear", 200)
MU = jnp.array([0.3, -0.2, 0.1, 0.5], jnp.float32)
SIGMA = 0.5


def eps_star(x_t, t):
    a = LIN.alphas_cumprod[t][:, None]
    return (x_t - jnp.sqrt(a) * MU) * jnp.sqrt(1 - a) / (a * SIGMA**2 + 1 - a)


@pytest.mark.parametrize("source", R.SOURCES)
def test_normal_kl_matches_torch(source):
    if source == "golden":
        g = R.load_golden("diffusion")
        x, want = {k: g["kl/" + k] for k in ("m1", "m2", "lv1", "lv2")}, g["kl/out"]
    else:
        x = R.normal_kl_inputs()
        want = R.normal_kl_outputs(x)
    np.testing.assert_allclose(D.normal_kl(x["m1"], x["lv1"], x["m2"], x["lv2"]), want,
                               rtol=1e-4, atol=1e-6)


def test_discretized_likelihood_is_a_distribution_over_256_bins():
    bins = jnp.linspace(-1, 1, 256)[None]
    means = jnp.array([0.1, -0.97, 0.999, 0.0])[:, None]
    log_scales = jnp.array([-2.0, -4.0, -1.0, 1.0])[:, None]
    logp = D.discretized_gaussian_log_likelihood(bins, means, log_scales)
    np.testing.assert_allclose(jnp.exp(logp).sum(1), 1.0, atol=1e-4)
    # a wide Gaussian's bin mass ≈ density × bin width
    logp = D.discretized_gaussian_log_likelihood(jnp.zeros(1), jnp.zeros(1), jnp.zeros(1))
    assert float(jnp.exp(logp)[0]) == pytest.approx(2 / 255 / np.sqrt(2 * np.pi), rel=1e-3)


@pytest.mark.parametrize("predict", ["eps", "x0", "v"])
def test_mse_target_is_zero_for_the_true_target(predict):
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    x0 = jax.random.uniform(k1, (6, 4, 4, 3), minval=-1, maxval=1)
    noise = jax.random.normal(k2, x0.shape)
    t = jax.random.randint(k3, (6,), 0, 200)
    target = {"eps": noise, "x0": x0, "v": D.v_target(LIN, x0, noise, t)}[predict]
    seen = {}

    def model(x_t, t_model):
        seen["t"] = t_model
        return target

    out = D.training_losses(LIN, model, x0, t, noise, predict=predict, variance="fixed_small")
    assert out["mse"].shape == (6,) and "vlb" not in out
    np.testing.assert_allclose(out["mse"], 0, atol=1e-10)
    np.testing.assert_array_equal(seen["t"], t)
    wrong = D.training_losses(LIN, lambda x, tt: target + 0.1, x0, t, noise, predict=predict,
                              variance="fixed_small")
    np.testing.assert_allclose(wrong["loss"], 0.01, rtol=1e-4)


def test_model_sees_original_timesteps_of_a_respaced_schedule():
    s = D.respace("cosine", 1000, "ddim10")
    seen = {}

    def model(x_t, t_model):
        seen["t"] = t_model
        return jnp.zeros_like(x_t)

    D.training_losses(s, model, jnp.zeros((3, 2)), jnp.array([0, 4, 9]), jnp.zeros((3, 2)),
                      predict="eps", variance="fixed_small")
    np.testing.assert_array_equal(seen["t"], [0, 400, 900])


def test_exact_model_mse_matches_analytic_minimum():
    """E‖ε − ε*‖²/D = ᾱσ²/(ᾱσ² + 1 − ᾱ) for Gaussian data."""
    n, step = 20000, 60
    k1, k2 = jax.random.split(jax.random.key(2))
    x0 = MU + SIGMA * jax.random.normal(k1, (n, 4))
    t = jnp.full((n,), step, jnp.int32)
    out = D.training_losses(LIN, eps_star, x0, t, jax.random.normal(k2, x0.shape), predict="eps",
                            variance="fixed_small")
    a = float(LIN.alphas_cumprod[step])
    assert float(out["mse"].mean()) == pytest.approx(a * SIGMA**2 / (a * SIGMA**2 + 1 - a), rel=0.03)


def test_hybrid_vlb_trains_only_the_variance():
    x0 = jax.random.uniform(jax.random.key(3), (4, 2, 2, 3), minval=-1, maxval=1)
    noise = jax.random.normal(jax.random.key(4), x0.shape)
    t = jnp.array([0, 3, 50, 199], jnp.int32)
    raw = 0.3 * jax.random.normal(jax.random.key(5), x0.shape[:-1] + (6,))

    def terms(out):
        return D.training_losses(LIN, lambda x, tt: out, x0, t, noise, predict="eps",
                                 variance="learned_range", loss="hybrid")

    @jax.jit
    def everything(o):
        return (terms(o), jax.grad(lambda o: terms(o)["vlb"].sum())(o),
                jax.grad(lambda o: terms(o)["mse"].sum())(o))

    out, g_vlb, g_mse = everything(raw)
    assert set(out) == {"loss", "mse", "vlb"}
    assert np.all(np.isfinite(out["vlb"])) and np.all(out["vlb"] > 0)
    np.testing.assert_allclose(out["loss"], out["mse"] + 0.001 * 200 * out["vlb"], rtol=1e-5)
    np.testing.assert_array_equal(g_vlb[..., :3], 0.0)          # stop-gradient on the mean
    assert float(jnp.abs(g_vlb[..., 3:]).min()) > 0             # every variance output is trained
    np.testing.assert_array_equal(g_mse[..., 3:], 0.0)
    assert float(jnp.abs(g_mse[..., :3]).sum()) > 0


def test_vlb_of_exact_model_is_finite_and_lower_than_perturbed():
    x0 = MU + SIGMA * jax.random.normal(jax.random.key(6), (512, 4))
    key = jax.random.key(7)

    @jax.jit
    def bounds():
        kw = dict(predict="eps", variance="fixed_small")
        exact = D.vlb_bits_per_dim(LIN, eps_star, x0, key, **kw)
        scaled = D.vlb_bits_per_dim(LIN, lambda x, t: 1.1 * eps_star(x, t), x0, key, **kw)
        shifted = D.vlb_bits_per_dim(LIN, lambda x, t: eps_star(x, t) + 0.05, x0, key, **kw)
        return exact, scaled, shifted

    exact, scaled, shifted = bounds()
    assert exact["terms"].shape == (200, 512)
    assert np.all(np.isfinite(exact["total"]))
    np.testing.assert_allclose(exact["total"], exact["terms"].sum(0) + exact["prior"], rtol=1e-5)
    # the KL terms are ≥ 0; the exact model is the per-step optimum, so it wins in expectation
    assert float(exact["terms"][1:].min()) >= -1e-5
    assert float(exact["total"].mean()) < float(scaled["total"].mean())
    assert float(exact["total"].mean()) < float(shifted["total"].mean())
    assert float(exact["terms"][1:].sum(0).mean()) < float(scaled["terms"][1:].sum(0).mean())


def test_bad_loss_settings():
    x = jnp.zeros((2, 3))
    t = jnp.zeros((2,), jnp.int32)
    f = lambda a, b: a  # noqa: E731
    with pytest.raises(ValueError, match=r"unknown loss 'l1'.*'mse', 'hybrid'"):
        D.training_losses(LIN, f, x, t, x, predict="eps", variance="fixed_small", loss="l1")
    with pytest.raises(ValueError, match=r"set loss='hybrid'"):
        D.training_losses(LIN, f, x, t, x, predict="eps", variance="learned_range")
    with pytest.raises(ValueError, match=r"set variance='learned_range'"):
        D.training_losses(LIN, f, x, t, x, predict="eps", variance="fixed_small", loss="hybrid")
    with pytest.raises(ValueError, match=r"unknown prediction target"):
        D.training_losses(LIN, f, x, t, x, predict="score", variance="fixed_small")

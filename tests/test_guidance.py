"""Classifier-free guidance: limits, one doubled-batch call per step, variance half, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax import diffusion as D

B, C = 3, 4
COND = jnp.array([1.0, -2.0, 0.5])
UNCOND = jnp.zeros(B)


def doubled_model(calls):
    """A conditional model: prediction = 0.5·x + cond·(t/1000); the closure holds [cond; uncond]."""
    labels = jnp.concatenate([COND, UNCOND])

    def model_fn2(x, t):
        calls.append(x.shape)
        pred = 0.5 * x + (labels * t / 1000.0)[:, None]
        var = jnp.tanh(labels)[:, None] * jnp.ones_like(x)
        return jnp.concatenate([pred, var], axis=-1)

    return model_fn2


def single(labels):
    return lambda x, t: 0.5 * x + (labels * t / 1000.0)[:, None]


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_scale_limits_and_linearity(scale):
    x = jax.random.normal(jax.random.key(0), (B, C))
    t = jnp.array([10, 500, 900], jnp.int32)
    guided = D.classifier_free_guidance(doubled_model([]), scale, learned_variance=True)(x, t)
    cond, uncond = single(COND)(x, t), single(UNCOND)(x, t)
    np.testing.assert_allclose(guided[:, :C], uncond + scale * (cond - uncond), atol=1e-6)
    np.testing.assert_allclose(guided[:, C:], jnp.tanh(COND)[:, None] * jnp.ones((B, C)), atol=1e-6)
    if scale == 1.0:
        np.testing.assert_allclose(guided[:, :C], cond, atol=1e-6)
    if scale == 0.0:
        np.testing.assert_allclose(guided[:, :C], uncond, atol=1e-6)


def test_one_doubled_call_per_sampling_step():
    sched = D.respace("cosine", 1000, "ddim7")
    calls = []
    counter = []

    def model_fn2(x, t):
        calls.append(x.shape)
        jax.debug.callback(lambda: counter.append(1))
        return doubled_model([])(x, t)[..., :C]

    guided = D.classifier_free_guidance(model_fn2, 2.0)
    jax.jit(lambda k: D.ddim_sample(guided, sched, (B, C), k, predict="eps"))(jax.random.key(0))
    assert calls == [(2 * B, C)]          # traced once, with the doubled batch
    assert len(counter) == 7              # executed once per step


def test_guided_sampling_equals_conditional_at_scale_one():
    sched = D.respace("cosine", 1000, "ddim5")
    key = jax.random.key(1)
    guided = D.classifier_free_guidance(lambda x, t: doubled_model([])(x, t)[..., :C], 1.0)
    a = D.ddpm_sample(guided, sched, (B, C), key, predict="x0", variance="fixed_small")
    b = D.ddpm_sample(single(COND), sched, (B, C), key, predict="x0", variance="fixed_small")
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_bad_guidance():
    with pytest.raises(ValueError, match=r"guidance scale must be >= 0"):
        D.classifier_free_guidance(doubled_model([]), -1.0)
    with pytest.raises(ValueError, match=r"unknown prediction target"):
        D.classifier_free_guidance(doubled_model([]), 1.0, predict="score")

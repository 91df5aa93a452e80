"""train.object_weight: the diffusion error weighted on the object region of flat-background
scenes (diffusion/object_region.py); 1 is the plain mean and changes nothing."""
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest

from unclip_jax.diffusion.losses import training_losses
from unclip_jax.diffusion.object_region import object_region, object_weights
from unclip_jax.diffusion.schedules import make_schedule
from unclip_jax.errors import UserError
from unclip_jax.train import losses


def _scene():
    """[2, 8, 8, 3] in [−1, 1]: grey backgrounds, a 2×2 red square / one bright pixel."""
    x = np.full((2, 8, 8, 3), -0.2, np.float32)
    x[0, 3:5, 4:6] = (1.0, -1.0, -1.0)
    x[1, 0, 0] = 0.9                               # on the border: the median ignores it
    return x


def test_region_is_the_object_grown_by_one_pixel_on_the_median_background():
    want = np.zeros((2, 8, 8), bool)
    want[0, 2:6, 3:7] = True
    want[1, 0:2, 0:2] = True
    np.testing.assert_array_equal(np.asarray(object_region(_scene(), 0.05)), want)
    # within the threshold of the background is background
    faint = _scene()
    faint[0, 3:5, 4:6] = -0.2 + 0.04
    assert not np.asarray(object_region(faint, 0.05))[0].any()


def test_weights_are_w_on_the_region_and_one_elsewhere():
    w = np.asarray(object_weights(jnp.asarray(_scene()), 4.0))
    assert w.shape == (2, 8, 8, 1)
    region = np.asarray(object_region(_scene(), 8 / 127.5))
    np.testing.assert_array_equal(w[..., 0], np.where(region, 4.0, 1.0))


def test_weighted_mse_is_the_weighted_mean_of_the_squared_error():
    """A model that predicts ε = 0: mse = mean(w·ε²); weight None and weight 1 give the plain
    mean; the weight does not reach the VLB term."""
    sched = make_schedule("linear", 100)
    x0 = jnp.asarray(_scene())
    t = jnp.array([10, 60])
    noise = jax.random.normal(jax.random.key(0), x0.shape)

    def zero(x_t, t_model):
        return jnp.zeros(x_t.shape[:-1] + (6,))

    kw = dict(predict="eps", variance="learned_range", loss="hybrid")
    plain = training_losses(sched, zero, x0, t, noise, **kw)
    ones = training_losses(sched, zero, x0, t, noise, weight=jnp.ones((2, 8, 8, 1)), **kw)
    w = object_weights(x0, 5.0)
    weighted = training_losses(sched, zero, x0, t, noise, weight=w, **kw)
    np.testing.assert_allclose(plain["mse"], np.mean(np.asarray(noise) ** 2, axis=(1, 2, 3)),
                               rtol=1e-6)
    np.testing.assert_allclose(ones["loss"], plain["loss"], rtol=1e-6)
    np.testing.assert_allclose(weighted["mse"],
                               np.mean(np.asarray(w) * np.asarray(noise) ** 2, axis=(1, 2, 3)),
                               rtol=1e-6)
    np.testing.assert_allclose(weighted["vlb"], plain["vlb"], rtol=1e-6)


def _config(w=None):
    train = dict() if w is None else dict(object_weight=w)
    return mlc.ConfigDict(dict(train=train))


def test_pixel_weights_off_by_default_and_for_older_configs():
    x0 = jnp.asarray(_scene())
    assert losses._pixel_weights(x0, _config()) is None          # an older export's config
    assert losses._pixel_weights(x0, _config(1.0)) is None
    np.testing.assert_array_equal(losses._pixel_weights(x0, _config(3.0)),
                                  object_weights(x0, 3.0))


@pytest.mark.parametrize("w", [0.0, -2.0])
def test_bad_object_weight_is_a_clear_error(w):
    with pytest.raises(UserError, match=r"train.object_weight must be > 0 \(1 = off\)"):
        losses._pixel_weights(jnp.asarray(_scene()), _config(w))


class _ZeroUNet:
    """Stands in for the UNet in `unet_loss`: predicts ε = 0 and a zero variance output."""

    def apply(self, variables, x_t, t, *, train, rngs, **cond):
        return jnp.zeros(x_t.shape[:-1] + (6,))


def test_unet_loss_weights_the_object_region():
    """The decoder's training loss with train.object_weight = w is the weighted mean of the
    squared ε error over the object region of its batch; w = 1 and an older config without
    the key give the same loss."""
    from unclip_jax.cli.config_args import load_config
    cfg = load_config("shapes:decoder32f")
    x0 = np.repeat(_scene()[:1], 4, axis=0)
    batch = dict(image=jnp.asarray(x0), z_i=jnp.zeros((4, 64)),
                 text_states=jnp.zeros((4, 40, 64)), text_mask=jnp.ones((4, 40), bool))
    params = {"b": jnp.zeros(())}
    key = jax.random.key(1)

    def loss_with(weight):
        c = cfg.copy_and_resolve_references()
        with c.unlocked():
            if weight is None:
                del c.train["object_weight"]
            else:
                c.train.object_weight = weight
        return float(losses.unet_loss(params, batch, key, _ZeroUNet(), c, {})[1]["mse"])

    w = 3.0
    plain, old, weighted = loss_with(1.0), loss_with(None), loss_with(w)
    assert plain == old
    noise = jax.random.normal(losses._diffusion_draws(key, cfg, 4)[1], x0.shape)
    region = np.asarray(object_region(x0, 8 / 127.5))[..., None]
    want = np.mean(np.where(region, w, 1.0) * np.asarray(noise) ** 2)
    np.testing.assert_allclose(weighted, want, rtol=1e-5)
    np.testing.assert_allclose(plain, np.mean(np.asarray(noise) ** 2), rtol=1e-5)

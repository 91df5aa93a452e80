"""Deepening a trained UNet (models/unet_deepen.py): same function at step 0, and it can learn.

Tiny UNets run eagerly (no jit): each compile costs more here than the few calls it would speed.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax.models import unet_deepen
from unclip_jax.train.checkpoint import path_name
from test_unet import decoder_inputs, perturb, tiny_decoder, tiny_upsampler


def init(model, key, x, t, **kw):
    return nn.meta.unbox(model.init(key, x, t, **kw))


def call(model, params, inp, **kw):
    inp = dict(inp, **kw)
    x, t = inp.pop("x"), inp.pop("t")
    return model.apply(params, x, t, **inp)


def flat_shapes(tree):
    return {path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def flat(params):
    return {n: np.asarray(x) for n, x in flat_shapes(params).items()}


def unflat(like, named):
    leaves, tree = jax.tree_util.tree_flatten_with_path(like)
    return jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(like), [jnp.asarray(named[path_name(p)]) for p, _ in leaves])


def grow(make, inputs, old_blocks, new_blocks, key):
    """(old model, its trained-looking params, deep model, deepened params, fresh deep params)."""
    x, t = inputs["x"], inputs["t"]
    kw = {k: v for k, v in inputs.items() if k not in ("x", "t")}
    old_model, new_model = make(num_res_blocks=old_blocks), make(num_res_blocks=new_blocks)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    old = perturb(init(old_model, k1, x, t, **kw), k2)["params"]
    # a perturbed fresh init: new blocks that are NOT identities unless deepen makes them so
    fresh = perturb(init(new_model, k3, x, t, **kw), k4)["params"]
    grown = unet_deepen.deepen(flat(old), flat(fresh), old_blocks, new_blocks)
    return old_model, old, new_model, unflat(fresh, grown), fresh


@pytest.mark.parametrize("old_blocks,new_blocks", [
    (1, 2), pytest.param(1, 3, marks=pytest.mark.slow), pytest.param(2, 3, marks=pytest.mark.slow)])
def test_deepened_decoder_computes_what_the_old_one_did(old_blocks, new_blocks):
    inp = decoder_inputs(jax.random.key(0))
    old_model, old, new_model, grown, fresh = grow(tiny_decoder, inp, old_blocks, new_blocks,
                                                  jax.random.key(1))
    want = call(old_model, {"params": old}, inp)
    got = call(new_model, {"params": grown}, inp)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-5)
    # the same weights in a fresh deeper net (new blocks not identities) compute something else
    assert float(jnp.abs(call(new_model, {"params": fresh}, inp) - want).max()) > 1e-2
    # guidance drops go through the same blocks
    drop = dict(drop_text=jnp.array([True, False]), drop_image_embed=jnp.array([False, True]))
    np.testing.assert_allclose(np.asarray(call(new_model, {"params": grown}, inp, **drop)),
                               np.asarray(call(old_model, {"params": old}, inp, **drop)),
                               atol=2e-5, rtol=1e-5)


@pytest.mark.slow                   # ~1 min each: eager tiny UNets
@pytest.mark.parametrize("updown", [True, False])
def test_deepened_upsampler_computes_what_the_old_one_did(updown):
    k = jax.random.split(jax.random.key(3), 2)
    inp = dict(x=jax.random.normal(k[0], (2, 16, 16, 3)), t=jnp.array([5, 700]),
               low_res=jax.random.normal(k[1], (2, 8, 8, 3)))
    make = lambda **kw: tiny_upsampler(resblock_updown=updown, **kw)  # noqa: E731
    old_model, old, new_model, grown, _ = grow(make, inp, 1, 2, jax.random.key(4))
    np.testing.assert_allclose(np.asarray(call(new_model, {"params": grown}, inp)),
                               np.asarray(call(old_model, {"params": old}, inp)),
                               atol=2e-5, rtol=1e-5)


@pytest.mark.slow
def test_new_blocks_receive_gradient():
    """Identity at step 0 but trainable: the loss gradient reaches every new block's conv2."""
    inp = decoder_inputs(jax.random.key(5))
    _, _, new_model, grown, _ = grow(tiny_decoder, inp, 1, 2, jax.random.key(6))
    kw = {k: v for k, v in inp.items() if k not in ("x", "t")}
    target = jax.random.normal(jax.random.key(7), (2, 8, 8, 6))
    loss = lambda p: jnp.mean((new_model.apply({"params": p}, inp["x"], inp["t"], **kw)  # noqa: E731
                               - target) ** 2)
    grads = flat(jax.grad(loss)(grown))
    new_conv2 = [n for n in grads if n.endswith("conv2.kernel") and ".resnets_1." in n
                 and n.startswith(("down_blocks", "up_blocks"))]
    assert len(new_conv2) == 4           # 2 levels × (1 encoder + 1 decoder) new blocks
    for n in new_conv2:
        assert np.abs(grads[n]).max() > 0, n


def test_deepen_refuses_what_does_not_line_up():
    inp = decoder_inputs(jax.random.key(8))
    x, t = inp["x"], inp["t"]
    kw = {k: v for k, v in inp.items() if k not in ("x", "t")}
    def shapes_of(model):        # deepen reads arrays; their values do not matter here
        tree = jax.eval_shape(lambda: init(model, jax.random.key(0), x, t, **kw))["params"]
        return {n: np.zeros(a.shape, a.dtype) for n, a in flat_shapes(tree).items()}
    small = shapes_of(tiny_decoder(num_res_blocks=1))
    deep = shapes_of(tiny_decoder(num_res_blocks=2))
    with pytest.raises(ValueError, match="needs more residual blocks: 2 → 1"):
        unet_deepen.deepen(deep, small, 2, 1)
    wide = shapes_of(tiny_decoder(num_res_blocks=2, model_channels=64, num_head_channels=32))
    with pytest.raises(ValueError, match="has shape"):
        unet_deepen.deepen(small, wide, 1, 2)


def test_decoder32e_preset_is_decoder32d_deepened():
    """`--config shapes:decoder32e` with the decoder32d export passes init_from's check only as
    a deepening: its model differs from decoder32d's by num_res_blocks alone (1 → 2)."""
    import json
    from unclip_jax.configs import shapes
    from unclip_jax.train.init_from import _growth
    d = json.loads(json.dumps(shapes.get_config("decoder32d").model.to_dict()))
    e = shapes.get_config("decoder32e").model
    assert (d["num_res_blocks"], e.num_res_blocks) == (1, 2)
    assert _growth(d, e) == {"deeper"}
    assert _growth(json.loads(json.dumps(e.to_dict())),
                   shapes.get_config("decoder32d").model) == set()

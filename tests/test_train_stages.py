"""Every unCLIP stage of configs/shapes.py (shrunk) trains a few steps with its loss falling.

Data: the stage's 'synthetic' pipeline with its first batch repeated, so a falling loss means
the stage's loss, model and trainer fit a fixed batch (random batches would not let CLIP or
the AR prior improve). The decoder also writes a PNG sample grid.
"""
import dataclasses
import json
import os

import pytest

from unclip_jax.configs import shapes
from unclip_jax.errors import UserError
from unclip_jax.train import registry
from unclip_jax.train.loop import train

TINY_TEXT = dict(embed_dim=16, text_width=16, text_len=4)


class RepeatFirst:
    """Yields the first batch of `inner` forever; state protocol delegated."""

    def __init__(self, inner):
        self.inner, self.first = inner, None

    def __iter__(self):
        return self

    def __next__(self):
        if self.first is None:
            self.first = next(self.inner)
        return self.first

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


def tiny_config(name, steps=12):
    cfg = shapes.get_config(name)
    with cfg.unlocked():
        cfg.data.name = "synthetic"
        tc = cfg.train
        tc.batch_size, tc.steps, tc.warmup, tc.lr = 8, steps, 1, 3e-3
        tc.lr_schedule = "constant"
        tc.log_every, tc.ckpt_every, tc.ema_decay = 1, 0, 0.5
        m = cfg.model
        if name == "clip":
            m.embed_dim = 16
            m.text.update(dict(vocab_size=64, context_length=8, width=32, layers=1, heads=2))
            m.vision.update(dict(image_size=16, patch_size=8, width=32, layers=1, heads=2))
            cfg.data.image_size = 16
        elif name in ("prior", "ar_prior"):
            m.update(dict(width=32, layers=1, heads=2, **TINY_TEXT))
            if name == "ar_prior":
                m.update(dict(pca_components=4, num_buckets=8, dot_buckets=4))
        else:
            m.update(dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                          num_head_channels=8, norm_groups=8, dropout=0.0))
            if name == "decoder":
                m.update(dict(image_size=8, attention_resolutions=(4,), context_dim=16,
                              **TINY_TEXT))
                cfg.data.image_size = 8
                tc.sample_every = steps
            else:
                m.update(dict(image_size=16, attention_resolutions=()))
                cfg.data.update(dict(image_size=16, low_res_size=8, crop_size=8))
        if cfg.get("diffusion") and "timesteps" in cfg.diffusion:
            cfg.diffusion.timesteps = 100
    return cfg


@pytest.fixture
def repeat_data(monkeypatch):
    """Wrap every built-in stage's data source in RepeatFirst (restored after the test)."""
    registry.get_stage("clip")          # registers the built-ins
    for name, stage in list(registry.REGISTRY.items()):
        if stage.make_data is registry.default_data:
            monkeypatch.setitem(registry.REGISTRY, name, dataclasses.replace(
                stage, make_data=lambda *a, **k: RepeatFirst(registry.default_data(*a, **k))))


FAST = ["prior", "ar_prior"]
SLOW = ["clip", "decoder", "upsampler1", "upsampler2"]   # conv/ViT compiles: ~30-60 s each


@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_stage_loss_falls(name, tmp_path, repeat_data, devices8):
    cfg = tiny_config(name)
    out = train(cfg, str(tmp_path), devices=devices8[:1], progress=False)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    losses = [r["loss"] for r in rows]
    assert len(losses) == cfg.train.steps
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.9 * first, (name, losses)
    assert out["step"] == cfg.train.steps
    assert out["flops_per_step"] and out["flops_per_step"] > 0
    if name == "decoder":
        assert (tmp_path / "samples" / f"step_{cfg.train.steps:07d}.png").exists()
        assert {"loss_q0", "loss_q3", "vlb", "mse"} <= set(rows[-1])
    if name == "prior":
        assert -1.0 <= rows[-1]["cosine"] <= 1.0
    if name == "ar_prior":
        assert "codec" in out["extras"] and (tmp_path / "extras.json").exists()


def test_registry_is_the_stage_list_and_builds_the_inference_modules():
    """Training builds each stage's module as sampling does (`unclip_jax.stages.build_model`
    on the `model` section), with the compute dtype taken from train.dtype."""
    from unclip_jax import stages
    registry.get_stage("clip")
    assert set(stages.STAGES) <= set(registry.REGISTRY)
    for name in stages.STAGES:
        cfg = tiny_config(name)
        with cfg.unlocked():
            cfg.train.dtype = "bfloat16"
        trained = registry.get_stage(name).build_model(cfg)
        model = cfg.model.copy_and_resolve_references()
        with model.unlocked():
            model.dtype = "bfloat16"
        assert trained == stages.build_model(name, model), name
        assert trained != stages.build_model(name, cfg.model), name    # float32 there
    with pytest.raises(UserError, match="unknown stage 'decodr'; choose one of clip, prior"):
        stages.build_model("decodr", cfg.model)
    assert stages.EMBED_STAGES == ("prior", "ar_prior", "decoder")


@pytest.mark.slow                       # ~25 s: two AR prior runs and an export
def test_init_from_reuses_the_exports_fitted_extras(tmp_path, repeat_data, devices8,
                                                    monkeypatch):
    """A run started from an AR prior's export trains against the export's codec (the PCA
    basis and buckets its weights learned), not a codec fitted again, and records it in
    workdir/extras.json as a fitted run does."""
    from unclip_jax.train.loop import export_from_workdir
    first = tmp_path / "first"
    train(tiny_config("ar_prior", steps=2), str(first), devices=devices8[:1], progress=False)
    export_from_workdir(str(first), str(tmp_path / "export"))
    stage = registry.get_stage("ar_prior")

    def refit(*_):
        raise AssertionError("the codec was fitted again")
    monkeypatch.setitem(registry.REGISTRY, "ar_prior", dataclasses.replace(stage, prepare=refit))
    cfg = tiny_config("ar_prior", steps=2)
    with cfg.unlocked():
        cfg.train.init_from = str(tmp_path / "export")
    out = train(cfg, str(tmp_path / "second"), devices=devices8[:1], max_steps=0,
                progress=False)
    assert out["step"] == 0 and "codec" in out["extras"]
    saved = json.loads((first / "extras.json").read_text())
    assert json.loads((tmp_path / "second" / "extras.json").read_text()) == saved


def grow_tiny_decoder_export(tmp_path, devices, **model_changes):
    """Train the tiny decoder 3 steps, export it, and start a run (0 steps) from that export
    with `model_changes` to config.model. → (the grown run's config, its `train` result, the
    export's params)."""
    from unclip_jax import export
    from unclip_jax.train.loop import export_from_workdir
    train(tiny_config("decoder", steps=3), str(tmp_path / "first"), devices=devices,
          progress=False)
    export_from_workdir(str(tmp_path / "first"), str(tmp_path / "export"))
    cfg = tiny_config("decoder", steps=3)
    with cfg.unlocked():
        cfg.train.init_from = str(tmp_path / "export")
        cfg.model.update(model_changes)
    out = train(cfg, str(tmp_path / "grown"), devices=devices, max_steps=0, progress=False)
    old_params, _, _ = export.load(str(tmp_path / "export"), expect_stage="decoder",
                                   dtype="float32")
    return cfg, out, old_params


def tiny_decoder_inputs():
    """(x_t [2, 8, 8, 3], t [2], conditioning kwargs) for `tiny_config('decoder')` models."""
    import jax
    import jax.numpy as jnp
    k = jax.random.split(jax.random.key(0), 4)
    inputs = dict(z_i=jax.random.normal(k[1], (2, 16)),
                  text_states=jax.random.normal(k[2], (2, 4, 16)),
                  text_mask=jnp.ones((2, 4), bool))
    return jax.random.normal(k[0], (2, 8, 8, 3)), jnp.array([3, 80]), inputs


@pytest.mark.slow                       # ~1 min: two decoder compiles and an export
def test_init_from_deepens_a_unet_export(tmp_path, repeat_data, devices8):
    """A decoder export starts a decoder with more residual blocks per level: step 0 of the
    deeper run computes what the export computes (and one with another width is refused)."""
    import jax
    import numpy as np
    from unclip_jax.errors import CheckpointError
    from unclip_jax.models.unet import UNet
    cfg, out, old_params = grow_tiny_decoder_export(tmp_path, devices8[:1], num_res_blocks=2)
    assert out["step"] == 0
    x, t, inputs = tiny_decoder_inputs()
    want = UNet.from_config(tiny_config("decoder").model).apply(
        {"params": old_params}, x, t, **inputs)
    got = UNet.from_config(cfg.model).apply(
        {"params": jax.device_get(out["state"].ema_params)}, x, t, **inputs)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-5)
    wide = tiny_config("decoder", steps=3)
    with wide.unlocked():
        wide.train.init_from = str(tmp_path / "export")
        wide.model.num_res_blocks, wide.model.model_channels = 2, 32
    with pytest.raises(CheckpointError, match="another model config.*model_channels"):
        train(wide, str(tmp_path / "wide"), devices=devices8[:1], max_steps=0, progress=False)

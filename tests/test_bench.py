"""`unclip-jax bench`: the three parallel modes agree, FSDP shards state, FLOP accounting, and
the diffusers twins match our configurations."""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax.configs import shapes
from unclip_jax.bench import benchmark as run
from unclip_jax.bench import measure
from unclip_jax.bench import modes as modes_lib
from unclip_jax.bench.workload import build_workload, count_params
from unclip_jax.errors import UserError


def tiny_prior():
    cfg = shapes.get_config("prior")
    with cfg.unlocked():
        cfg.model.update(dict(width=16, layers=1, heads=2, embed_dim=16, text_width=16,
                              text_len=4))
    return cfg


def tiny_decoder():
    cfg = shapes.get_config("decoder")
    with cfg.unlocked():
        cfg.model.update(dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                              attention_resolutions=(4,), norm_groups=8, num_head_channels=8,
                              embed_dim=16, text_width=16, text_len=4, context_dim=32))
        cfg.model.image_size = 8
        cfg.data.image_size = 8
    return cfg


def tiny_upsampler():
    cfg = shapes.get_config("upsampler1")
    with cfg.unlocked():
        cfg.model.update(dict(model_channels=8, channel_mult=(1, 2), norm_groups=4,
                              image_size=16))
        cfg.data.update(dict(image_size=16, low_res_size=4, crop_size=8))
    return cfg


@pytest.mark.slow   # ~30 s
def test_modes_same_loss_params_and_samples(devices8):
    w = build_workload(tiny_prior(), batch_size=8)
    placed, check = run.compare_modes(w, devices8, modes_lib.MODES, loop_steps=1)
    assert check["reference"] == "pmap"
    losses = [check[m]["loss"] for m in modes_lib.MODES]
    np.testing.assert_allclose(losses, losses[0], rtol=1e-5)
    for m in ("dp", "fsdp"):
        assert check[m]["param_diff"] < 1e-5 and check[m]["sample_diff"] < 1e-4
    # the step really moved the parameters (a zero update would make agreement trivial)
    moved = run.max_abs_diff(w.params, placed["pmap"].host_params())
    assert moved > 1e-5
    # FSDP: params + AdamW state per device ≈ 1/8 of the replicated copy
    rep, dp, fsdp = (placed[m].state_bytes() for m in ("pmap", "dp", "fsdp"))
    assert rep == dp
    assert rep / 8 <= fsdp < rep / 8 * 1.35, (rep, fsdp)


def test_check_close_reports_a_mismatch():
    with pytest.raises(run.ModeMismatch, match="updated parameters of mode fsdp"):
        run.check_close("fsdp", {"a": np.ones(3)}, {"a": np.ones(3) + 1e-2},
                        "the updated parameters")


def test_flops_of_a_plain_matmul():
    m, k, n = 64, 48, 32
    compiled = jax.jit(jnp.matmul).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
    assert measure.matmul_flops(m, n, k) == 2 * m * n * k
    assert measure.device_flops(compiled) == pytest.approx(2 * m * n * k, rel=0.01)
    assert measure.flops_per_second_per_device(2 * m * n * k, 0.5) == pytest.approx(4 * m * n * k)
    with pytest.raises(ValueError, match="seconds must be > 0"):
        measure.flops_per_second_per_device(1.0, 0.0)


def test_matmul_peak_counts_one_matmul_per_device(devices8):
    out = measure.matmul_peak(devices8[:2], size=64, iters=1)
    assert out["xla_flops"] == pytest.approx(measure.matmul_flops(64, 64, 64), rel=0.01)
    assert out["peak_flops_per_s_per_device"] == pytest.approx(
        out["flops_per_device"] / out["seconds"])


def _our_params(model, inputs):
    return count_params(nn.meta.unbox(jax.eval_shape(
        lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                           **inputs)["params"])))


@pytest.mark.parity        # the benchmark's PyTorch twins need torch and diffusers
@pytest.mark.parametrize("make", [tiny_prior, tiny_decoder, tiny_upsampler])
def test_torch_twins_have_matching_parameter_counts(make):
    from unclip_jax.bench import torch_ref
    from unclip_jax.train.registry import get_stage
    cfg = make()
    stage = get_stage(cfg.stage)
    ours = _our_params(stage.build_model(cfg), stage.init_inputs(cfg))
    modules = {"prior": lambda m: [torch_ref.torch_prior(m)],
               "decoder": lambda m: list(torch_ref.torch_decoder(m)),
               "upsampler1": lambda m: [torch_ref.torch_upsampler(m)]}[cfg.stage](cfg.model)
    theirs = torch_ref.count_torch_params(*modules)
    assert abs(theirs / ours - 1) < 0.05, (ours, theirs)


def test_torch_decoder_blocks_follow_our_attention_levels():
    from unclip_jax.bench import torch_ref
    from unclip_jax.models.unet import UNet
    types = torch_ref.unet_block_types(UNet.from_config(tiny_decoder().model))
    assert types["down_block_types"] == ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D")
    assert types["up_block_types"] == ("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D")


def test_bad_inputs_name_the_fix(devices8):
    with pytest.raises(UserError, match="shapes:prior or shapes:decoder"):
        build_workload(shapes.get_config("clip"), 8)
    w = build_workload(tiny_prior(), batch_size=12)
    with pytest.raises(ValueError, match="multiple of 8"):
        modes_lib.setup(w, devices8, "fsdp")
    with pytest.raises(ValueError, match="choose from"):
        modes_lib.setup(w, devices8, "tp")


@pytest.mark.parity
def test_torch_twin_rejects_a_mismatched_prior():
    from unclip_jax.bench import torch_ref
    cfg = tiny_prior()
    with cfg.unlocked():
        cfg.model.text_width = 8
    with pytest.raises(UserError, match="text_width=16"):
        torch_ref.torch_prior(cfg.model)


def test_torch_comparison_without_torch_names_the_extra(devices8, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)    # as if not installed
    w = build_workload(tiny_prior(), batch_size=8)
    with pytest.raises(UserError, match=r"needs torch and diffusers.*\[parity\].*--no-torch"):
        run.torch_comparison(w, devices8[0], None, warmup=1, iters=1, loop_steps=1)


def test_cli_rejects_unknown_mode(capsys):
    from unclip_jax.cli import main
    assert main(["bench", "--modes", "pmap,zero3", "--no-torch"]) == 2
    assert "choose a comma-separated subset of pmap,dp,fsdp" in capsys.readouterr().err


@pytest.mark.slow       # three SPMD compiles of a UNet: minutes on 2 cores
def test_upsampler_modes_agree_and_sample_the_whole_image(devices8):
    """The upsampler trains on crops and samples the full image from its low-res version;
    pmap, dp and fsdp agree on both."""
    w = build_workload(tiny_upsampler(), batch_size=8)
    assert w.batch["image"].shape == (8, 8, 8, 3) and w.batch["low_res"].shape == (8, 2, 2, 3)
    placed, check = run.compare_modes(w, devices8, ("pmap", "dp", "fsdp"), loop_steps=2)
    for m in ("dp", "fsdp"):
        assert check[m]["param_diff"] < 1e-5 and check[m]["sample_diff"] < 1e-4
    out = modes_lib.sample_output(placed["dp"], placed["dp"].compile_sample(2)(
        placed["dp"].params, placed["dp"].sample_inputs))
    assert out.shape == (8, 16, 16, 3) and np.all(np.isfinite(out))


@pytest.mark.slow       # ~45 s of interleaved timing
@pytest.mark.parity
def test_torch_comparison_interleaves_both_thread_counts(devices8):
    """Every runner (JAX, PyTorch with all cores, PyTorch with one thread) is timed the same
    number of times for every program; ratios are the medians' quotients; the load average
    and the spread are reported and rendered."""
    from unclip_jax.bench import report
    w = build_workload(tiny_upsampler(), batch_size=2)
    t = run.torch_comparison(w, devices8[0], None, warmup=1, iters=2, loop_steps=2,
                             thread_counts=(2, 1))
    assert set(t["torch"]) == {"torch_2t", "torch_1t"}
    for name, parts in t["torch"].items():
        for part, m in parts.items():
            assert m["runs"] == 2 and m["min"] <= m["seconds"] <= m["max"]
            assert t["time_ratio_jax_over_torch"][name][part] == pytest.approx(
                t["jax_1device"][part]["seconds"] / m["seconds"])
    assert set(t["load_average_1min"]) == {"before", "after"}
    table = report.torch_table(t)
    assert "PyTorch 1 thread(s) ms" in table and "JAX / PyTorch 2t" in table
    assert table.count("\n| sample_loop (2 steps) |") == 1


def test_device_count_is_set_before_the_backend_starts_and_checked_after():
    """A fresh process gets the CPU devices asked for; asking again for another count, once
    the backend runs, is a UserError naming the fix."""
    code = ("import jax\nfrom unclip_jax.bench import set_device_count\n"
            "from unclip_jax.errors import UserError\n"
            "set_device_count(3)\nprint(jax.device_count())\n"
            "try:\n    set_device_count(2)\nexcept UserError as e:\n    print(e)\n")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "3"
    assert "JAX already started with 3 CPU devices; run `unclip-jax bench --devices 2`" in lines[1]

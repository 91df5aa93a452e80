"""`unclip-jax train`: config loading, typed `--config.a.b=v` overrides, errors naming the key."""
import os

import pytest

from unclip_jax.configs import shapes
from unclip_jax.cli import main
from unclip_jax.errors import UserError
from unclip_jax.cli.config_args import apply_overrides

TOY_CONFIG = '''
import test_train_toy as train_toy
def get_config(arg=None):
    return train_toy.toy_config(steps=4, batch_size=8, dim=16, hidden=32)
'''


def test_overrides_are_typed_and_applied():
    cfg = apply_overrides(shapes.get_config("decoder"),
                          ["train.batch_size=8", "train.lr=1", "model.channel_mult=(1, 2)",
                           "data.name=synthetic", "diffusion.clip_denoised=False"])
    assert cfg.train.batch_size == 8 and cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert tuple(cfg.model.channel_mult) == (1, 2) and cfg.data.name == "synthetic"
    assert cfg.diffusion.clip_denoised is False


def test_misspelt_key_is_an_error_naming_it():
    with pytest.raises(UserError, match=r"train.batch_sise.*did you mean 'train.batch_size'"):
        apply_overrides(shapes.get_config("decoder"), ["train.batch_sise=8"])
    with pytest.raises(UserError, match=r"'modle' is not in config"):
        apply_overrides(shapes.get_config("decoder"), ["modle.dtype=bfloat16"])
    with pytest.raises(UserError, match=r"train.batch_size=eight: not a valid int"):
        apply_overrides(shapes.get_config("decoder"), ["train.batch_size=eight"])
    with pytest.raises(UserError, match=r"expected int, got float"):
        apply_overrides(shapes.get_config("decoder"), ["train.steps=1.5"])


def test_cli_trains_exports_and_reports_bad_keys(tmp_path, capsys):
    cfg_file = tmp_path / "toycfg.py"
    cfg_file.write_text(TOY_CONFIG)
    wd, exp = str(tmp_path / "run"), str(tmp_path / "exported")
    rc = main(["train", "--config", str(cfg_file), "--workdir", wd, "--config.train.steps=3",
               "--config.train.log_every", "1", "--export", exp])
    assert rc == 0
    assert "step 3:" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(exp, "config.json"))
    assert os.path.isdir(os.path.join(wd, "checkpoints", "3"))
    assert any(f.startswith("events") for f in os.listdir(os.path.join(wd, "tensorboard")))
    rc = main(["train", "--config", str(cfg_file), "--workdir", wd, "--config.trian.steps=3"])
    assert rc == 2
    assert "unknown config key 'trian.steps'" in capsys.readouterr().err


def test_flags_are_dashed_with_the_underscore_spelling_accepted(capsys):
    """One flag style: `--data-dir`; `--data_dir` (older scripts) parses to the same value,
    and `--help` shows each option's default."""
    from unclip_jax.cli import build_parser
    parser = build_parser(load="eval")
    dashed = parser.parse_args(["eval", "--data-dir", "D", "--images-per-prompt=3"])
    under = parser.parse_args(["eval", "--data_dir", "D", "--images_per_prompt=3"])
    assert vars(dashed) == vars(under)
    assert (dashed.data_dir, dashed.images_per_prompt) == ("D", 3)
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--no_such_flag", "1"])
    assert "unrecognized arguments: --no_such_flag" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser(load="embed").parse_args(["embed", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--batch-size BATCH_SIZE (default: 64)" in text
    assert "--data_dir" not in text


def test_config_overrides_are_collected_by_commands_that_take_a_config():
    from unclip_jax.cli import build_parser
    from unclip_jax.cli.config_args import split_overrides
    assert split_overrides(["--config.a.b=1", "x", "--config.c", "2", "--configx"]) == \
        (["a.b=1", "c=2"], ["x", "--configx"])
    args = build_parser(load="train").parse_args(
        ["train", "--config", "shapes:decoder", "--workdir", "w", "--config.train.steps", "7",
         "--config.train.lr=1e-3"])
    assert args.config_overrides == ["train.steps=7", "train.lr=1e-3"]
    args = build_parser(load="bench").parse_args(
        ["bench", "--config", "shapes:prior", "--config", "shapes:decoder",
         "--config.model.width=8"])
    assert args.config == ["shapes:prior", "shapes:decoder"]
    assert args.config_overrides == ["model.width=8"]
    with pytest.raises(SystemExit):        # a command without --config takes no overrides
        build_parser(load="demo").parse_args(["demo", "--config.train.steps=3"])

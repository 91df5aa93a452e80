"""The newcomer's path: `embed --clip MODEL/clip` finds MODEL/tokenizer, `package --base`
completes a model from the bundled one, a model directory missing its CLIP says how to fix it,
`data build shapes` builds what the presets train on."""
import json
import os
import shutil

import pytest

from unclip_jax.cli import main
from unclip_jax.configs import shapes as shapes_cfg
from unclip_jax.errors import CheckpointError, UserError
from unclip_jax.sample.loading import BUNDLED_MODEL


def test_embed_finds_the_tokenizer_beside_the_clip():
    from unclip_jax import export
    from unclip_jax.data.embed import tokenizer_for

    clip_dir = os.path.join(BUNDLED_MODEL, "clip")
    assert not os.path.exists(os.path.join(clip_dir, "tokenizer"))   # only beside it
    cfg = export.load_config(clip_dir)
    cfg.model.tokenizer = ""                 # only the model directory's own tokenizer/
    tok = tokenizer_for(clip_dir, cfg.model)
    ids, mask = tok(["a red circle"])
    assert ids.shape == (1, cfg.model.text.context_length) and mask[0].sum() > 2


def test_embed_without_any_tokenizer_names_the_places(tmp_path):
    from unclip_jax import export
    from unclip_jax.data.embed import tokenizer_for

    clip_dir = tmp_path / "model" / "clip"
    shutil.copytree(os.path.join(BUNDLED_MODEL, "clip"), clip_dir)
    cfg = export.load_config(str(clip_dir))
    cfg.model.tokenizer = ""
    with pytest.raises(UserError, match=r"no tokenizer found .*beside CKPT"):
        tokenizer_for(str(clip_dir), cfg.model)


def test_package_base_bundled_completes_a_model(tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["package", "--out", str(out), "--base", "bundled", "--dtype", "float16"]) == 0
    assert "from bundled: clip, prior, ar_prior, decoder, upsampler1, upsampler2" in \
        capsys.readouterr().out
    bundled = json.load(open(os.path.join(BUNDLED_MODEL, "MANIFEST.json")))
    manifest = json.load(open(out / "MANIFEST.json"))
    for name, entry in bundled["stages"].items():
        got = manifest["stages"][name]
        assert got["base"] == "bundled" and got["params_sha256"] == entry["params_sha256"]
        assert sorted(os.listdir(out / name)) == sorted(os.listdir(os.path.join(BUNDLED_MODEL,
                                                                              name)))
    assert os.path.isfile(out / "tokenizer" / "tokenizer.json")
    from unclip_jax.sample.unclip import UnCLIP
    pipe = UnCLIP.from_directory(str(out), progress=False)        # checksums verified
    assert set(pipe.stages) == {"clip", "prior", "decoder", "upsampler1", "upsampler2"}
    assert main(["package", "--out", str(tmp_path / "x"), "--base", str(tmp_path / "nope")]) == 2
    assert "--base" in capsys.readouterr().err


def test_model_with_tokenizer_but_no_clip_names_the_fix(tmp_path):
    from unclip_jax.sample.unclip import UnCLIP

    for name in ("tokenizer", "decoder"):
        shutil.copytree(os.path.join(BUNDLED_MODEL, name), tmp_path / name)
    with pytest.raises(CheckpointError, match=r"tokenizer/ but no clip/.*--base bundled"):
        UnCLIP.from_directory(str(tmp_path), progress=False)


def test_data_build_default_is_the_presets_dataset():
    from unclip_jax.cli import build_parser

    args = build_parser(load="data").parse_args(["data", "build", "shapes", "--data-dir", "d"])
    assert f"unclip_shapes/{args.config}" == shapes_cfg.get_config("decoder").data.name


def test_sidecar_records_the_defaults_used():
    """Steps, guidance and best-of left to the model's configs are recorded with the config
    values the pipeline falls back to (the bundled model's stage configs)."""
    from types import SimpleNamespace

    from unclip_jax.export import load_config
    from unclip_jax.sample.records import settings_used

    stages = {n: SimpleNamespace(config=load_config(os.path.join(BUNDLED_MODEL, n)))
              for n in ("prior", "decoder", "upsampler1", "upsampler2")}
    pipe = SimpleNamespace(stages=stages)
    asked = dict(decoder_steps=None, decoder_guidance=None, upsampler_steps=None,
                 prior_steps="7", prior_guidance=None, prior_best_of=None, eta=0.0)
    used = settings_used(pipe, asked)
    dec, pri = stages["decoder"].config, stages["prior"].config
    assert used["decoder_steps"] == dec.diffusion.sample_steps
    assert used["decoder_guidance"] == dec.diffusion.guidance_scale != 1.0
    assert used["prior_steps"] == "7" and used["eta"] == 0.0          # given: kept
    assert used["prior_guidance"] == pri.diffusion.guidance_scale
    assert used["prior_best_of"] == pri.model.sample_candidates
    assert used["upsampler_steps"] == [stages[n].config.diffusion.sample_steps
                                       for n in ("upsampler1", "upsampler2")]
    assert asked["decoder_steps"] is None                       # the request is not changed
    del stages["prior"]
    assert settings_used(pipe, asked)["prior_guidance"] is None  # --prior text: no prior

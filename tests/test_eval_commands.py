"""The research commands `unclip-jax eval-prompts`, `eval-clip`, `eval-ceilings`,
`eval-editing`: their flags (dashed, underscore alias), bad input as one line with nothing
written, the prompt files `eval-prompts --rebuild` writes, and the stages `eval-editing`
loads."""
import os

import pytest

from pipeline_fixtures import dirs  # noqa: F401 (fixture)
from unclip_jax import cli
from unclip_jax.eval import editing, geneval_prompts


def parse(argv):
    return cli.build_parser(load=argv[0]).parse_args(argv)


def test_flags_are_dashed_with_the_underscore_alias_and_sizes_parse():
    a = parse(["eval-ceilings", "--data_dir", "D", "--out", "O", "--sizes", "16, 32,48"])
    assert (a.data_dir, a.out, a.sizes, a.steps) == ("D", "O", [16, 32, 48], 1500)
    assert parse(["eval-ceilings", "--data-dir", "D", "--out", "O"]).sizes == [16, 24, 32, 48, 64]
    a = parse(["eval-clip", "--clip", "C", "--data-dir", "D", "--limit", "5"])
    assert (a.clip, a.data_dir, a.limit, a.split, a.out) == ("C", "D", 5, "validation", None)
    a = parse(["eval-editing", "--classifier", "K", "--out", "r.json", "--parts", "add", "mix"])
    assert (a.checkpoint, a.final, a.parts, a.scenes) == (None, "upsampler1", ["add", "mix"], 16)
    assert parse(["eval-prompts"]).sets == "geneval"


def test_help_shows_defaults_including_zero(capsys):
    with pytest.raises(SystemExit):
        parse(["eval-editing", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--seed SEED (default: 0)" in text and "(default: upsampler1)" in text
    assert "--parts PART [PART ...] measure only these" in text and "--data_dir" not in text


@pytest.mark.parametrize("sizes", ["16,a", "0,16", "", "16;32"])
def test_bad_sizes_are_one_argparse_line(sizes, capsys):
    with pytest.raises(SystemExit) as e:
        parse(["eval-ceilings", "--data-dir", "D", "--out", "O", "--sizes", sizes])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("unclip-jax eval-ceilings: error: argument --sizes:")
    assert "comma list of whole numbers" in err


@pytest.mark.parametrize("argv, msg", [
    (["eval-editing", "--classifier", "K", "--parts", "add", "paint"],
     "unclip-jax: error: --parts paint: choose from add, negative, remove, img2img, mix"),
    (["eval-prompts", "nope"], "unclip-jax: error: unknown prompt set 'nope'"),
])
def test_bad_input_is_one_line_and_writes_nothing(argv, msg, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert cli.main(argv + (["--out", str(out)] if argv[0] == "eval-editing" else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(msg) and len([e for e in err if "error" in e]) == 1
    assert not out.exists()


def test_out_that_is_a_directory_fails_before_any_work(tmp_path, capsys):
    assert cli.main(["eval-clip", "--clip", str(tmp_path / "no_clip"), "--data-dir",
                     str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err      # not the missing CLIP


def test_eval_prompts_lists_every_prompt_and_rebuild_writes_the_bundled_files(tmp_path, capsys):
    assert cli.main(["eval-prompts", "single_heldout,two_object"]) == 0
    lines = capsys.readouterr().out.splitlines()
    sets = geneval_prompts.load_prompt_sets("single_heldout,two_object")
    assert lines == [x for name, entries in sets.items()
                     for x in [f"{name} ({len(entries)} prompts)"]
                     + [f"  {e['prompt']}" for e in entries]]
    assert cli.main(["eval-prompts", "--rebuild", str(tmp_path / "p")]) == 0
    for name in geneval_prompts.SET_NAMES + geneval_prompts.DEV_SET_NAMES:
        with open(tmp_path / "p" / f"{name}.json", "rb") as a, \
                open(os.path.join(geneval_prompts.PROMPT_DIR, f"{name}.json"), "rb") as b:
            assert a.read() == b.read(), name


def test_eval_editing_loads_stages_up_to_final_never_the_ar_prior(dirs, tmp_path):  # noqa: F811
    root = tmp_path / "model"
    root.mkdir()
    for name in ("clip", "tokenizer", "prior", "ar_prior", "decoder", "upsampler1",
                 "upsampler2"):
        os.symlink(dirs[name] if name != "tokenizer" else os.path.join(dirs["root"], name),
                   root / name)
    pipe = editing.load_model(str(root), "decoder")
    assert set(pipe.stages) == {"clip", "prior", "decoder"} and pipe.tokenizer is not None
    assert set(editing.load_model(str(root), "upsampler1").stages) == \
        {"clip", "prior", "decoder", "upsampler1"}
    with pytest.raises(ValueError, match="final='upsampler3': choose one of decoder"):
        editing.load_model(str(root), "upsampler3")

"""README.md "Training a stage": its bash block, read from README.md (not copied here), is
what a newcomer types. The default test checks every command against the CLI's own parser; the
slow test runs the block as it is with HOME in a scratch directory (so `~/unclip-quickstart`
lands there) and checks what it made: a trained decoder packaged with the bundled model's other
stages, and a 256 px sample from it."""
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "## Training a stage"


def quickstart_block(readme: str = os.path.join(REPO, "README.md")) -> str:
    """The first ```bash block under SECTION, as written."""
    text = open(readme, encoding="utf-8").read()
    start = text.index(SECTION)
    body = text[text.index("```bash\n", start) + len("```bash\n"):]
    block = body[:body.index("```")]
    assert text.index("```bash\n", start) < text.index("\n## ", start + 1), \
        "the quickstart block must sit in its own section"
    return block


def commands(block: str) -> list[list[str]]:
    """Shell words of each command (continuation lines joined, comments dropped)."""
    joined = block.replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_every_quickstart_command_parses():
    from unclip_jax.cli import build_parser
    from unclip_jax.cli.config_args import apply_overrides
    from unclip_jax.cli.config_args import load_config

    cmds = commands(quickstart_block())
    assert [c[:2] for c in cmds] == [["unclip-jax", "data"], ["unclip-jax", "embed"],
                                     ["unclip-jax", "train"], ["unclip-jax", "package"],
                                     ["unclip-jax", "sample"]]
    for words in cmds:
        args = build_parser(load=words[1]).parse_args(words[1:])
        if words[1] == "train":        # the preset and every override exist, typed right
            apply_overrides(load_config(args.config), args.config_overrides)


@pytest.mark.slow
def test_quickstart_runs_verbatim(tmp_path):
    block = quickstart_block()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNCLIP_JAX_CACHE")}
    env.update(HOME=str(tmp_path), PATH=os.path.dirname(sys.executable) + os.pathsep
               + env["PATH"])
    start = time.time()
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1500)
    took = time.time() - start
    print(f"README quickstart: {took:.0f} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "unclip-quickstart"
    manifest = json.load(open(root / "model" / "MANIFEST.json"))
    assert manifest["stages"]["decoder"]["steps"] == 100
    assert "base" not in manifest["stages"]["decoder"]
    assert {n for n, e in manifest["stages"].items() if e.get("base") == "bundled"} == \
        {"clip", "prior", "ar_prior", "upsampler1", "upsampler2"}
    from PIL import Image
    sidecar = json.load(open(root / "sample.json"))
    assert sidecar["inputs"]["prompts"] == ["a small red circle on the left"]
    assert sidecar["image_shape"] == [1, 256, 256, 3]
    img = np.asarray(Image.open(root / "sample.png"))        # one tile in a 2 px frame
    assert img.shape == (260, 260, 3) and img[2:-2, 2:-2].std() > 1.0

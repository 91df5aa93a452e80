"""Workdirs, exports, TFDS data and embeddings on gs://, against a local Cloud Storage emulator.

`tests/gcs_emulator.py` (gcp-storage-emulator behind a TLS proxy, see there) runs on
localhost; every client library reaches it by its own documented settings, so TensorFlow's
GCS file system (epath, TFDS, tf.data, TensorBoard), tensorstore (Orbax arrays) and
google-cloud-storage (Orbax's bucket check) all talk to it over HTTP — nothing of ours is
replaced. The commands run as subprocesses with that environment.
"""
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gcp_storage_emulator")
pytest.importorskip("cryptography")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "unclip-test"
CLIP = os.path.join(REPO, "unclip_jax", "assets", "shapes", "clip")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    def __init__(self, root):
        self.port = _free_port()
        self.root = str(root)
        self.log = open(os.path.join(self.root, "emulator.log"), "w")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "tests", "gcs_emulator.py"), "--port",
             str(self.port), "--root", self.root, "--bucket", BUCKET],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("ready"), f"emulator did not start: {line!r}"
        url = f"http://127.0.0.1:{self.port}"
        self.env = {
            # TensorFlow's GCS file system (libcurl): proxy + our CA for its fixed endpoints
            "https_proxy": url, "http_proxy": url, "HTTPS_PROXY": url, "HTTP_PROXY": url,
            "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
            "CURL_CA_BUNDLE": os.path.join(self.root, "ca.pem"),
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token", "NO_GCE_CHECK": "true",
            "TENSORSTORE_GCS_HTTP_URL": url,          # tensorstore
            "STORAGE_EMULATOR_HOST": url,             # google-cloud-storage
        }

    def objects(self, prefix):
        """Object names under `prefix`, straight from the emulator's JSON API."""
        q = urllib.parse.urlencode({"prefix": prefix})
        with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/storage/v1/b/{BUCKET}/o?{q}", timeout=30) as r:
            return sorted(item["name"] for item in json.load(r).get("items", []))

    def read(self, name):
        quoted = urllib.parse.quote(name, safe="")
        with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/storage/v1/b/{BUCKET}/o/{quoted}?alt=media",
                timeout=30) as r:
            return r.read()

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    emu = Emulator(tmp_path_factory.mktemp("gcs"))
    yield emu
    emu.close()


def run_py(gcs, code_or_args, cwd, timeout=600, check=True):
    """Run `python -c CODE` (str) or `python -m unclip_jax.cli ARGS` (list) with the
    emulator environment."""
    env = dict(os.environ, **gcs.env, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               UNCLIP_JAX_CACHE_DIR="off", XLA_FLAGS="")
    argv = ([sys.executable, "-c", code_or_args] if isinstance(code_or_args, str)
            else [sys.executable, "-m", "unclip_jax.cli", *code_or_args])
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    with open(os.path.join(cwd, "stderr.log"), "a") as f:
        f.write(f"$ {shlex.join(argv)}\n{proc.stderr}\n")
    if check:
        errors = [line[:600] for line in proc.stderr.splitlines() if "rror" in line]
        assert proc.returncode == 0, (argv, proc.stdout[-2000:], errors[:8])
    return proc


@pytest.mark.slow   # ~50 s with the storage emulator
def test_path_layer_and_checkpointer_on_gcs(gcs, tmp_path):
    """paths.* on gs:// (write, read, list, copy trees both ways, remove), then the training
    Checkpointer: it saves and restores steps on gs://, and a step without Orbax's
    commit_success.txt (a save killed before it finished) is not restored, and is removed."""
    code = f"""
import json, os
import jax.numpy as jnp, ml_collections as mlc
from unclip_jax import paths
from unclip_jax.train.checkpoint import Checkpointer
root = "gs://{BUCKET}/layer"
paths.makedirs(root)
paths.write_text(paths.join(root, "a", "x.txt"), "hello")
with paths.open(paths.join(root, "a", "y.bin"), "wb") as f:
    f.write(bytes(range(256)) * 100)
assert paths.read_text(paths.join(root, "a", "x.txt")) == "hello"
assert paths.isdir(paths.join(root, "a")) and paths.isfile(paths.join(root, "a", "x.txt"))
assert not paths.isfile(paths.join(root, "a")) and not paths.exists(paths.join(root, "nope"))
assert paths.listdir(paths.join(root, "a")) == ["x.txt", "y.bin"], paths.listdir(root + "/a")
local = os.path.join({str(tmp_path)!r}, "down")
paths.copy_tree(root, local)
assert open(os.path.join(local, "a", "y.bin"), "rb").read() == bytes(range(256)) * 100
paths.copy_tree(local, paths.join(root, "up"), last=("a/x.txt",))
assert sorted(paths.walk_files(paths.join(root, "up"))) == ["a/x.txt", "a/y.bin"]
with paths.local_copy(paths.join(root, "up")) as d:
    assert open(os.path.join(d, "a", "x.txt")).read() == "hello"
paths.rmtree(paths.join(root, "up"))
assert not paths.exists(paths.join(root, "up", "a", "x.txt"))
ck = Checkpointer("gs://{BUCKET}/ckpt-run", mlc.ConfigDict(dict(keep=5)))
for step in (1, 2):
    ck.save(step, {{"w": jnp.full((4,), float(step))}}, mlc.ConfigDict(dict(a=step)),
            {{"pos": step}}, {{}})
ck.close()
print("ok")
"""
    out = run_py(gcs, code, cwd=tmp_path)
    assert out.stdout.strip().endswith("ok")
    # the objects are really in the emulator's bucket, not in a local ./gs:/ directory
    assert "layer/a/x.txt" in gcs.objects("layer/")
    assert gcs.read("layer/a/x.txt") == b"hello"
    assert gcs.objects("layer/up/") == []       # (TF caches directory stats for 5 s: ask GCS)
    assert not (tmp_path / "gs:").exists()
    names = gcs.objects("ckpt-run/checkpoints/")
    assert {"ckpt-run/checkpoints/1/commit_success.txt",
            "ckpt-run/checkpoints/2/commit_success.txt"} <= set(names)
    # make step 2 look like a save that was killed before Orbax marked it finished
    quoted = urllib.parse.quote("ckpt-run/checkpoints/2/commit_success.txt", safe="")
    urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{gcs.port}/storage/v1/b/{BUCKET}/o/{quoted}", method="DELETE"),
        timeout=30).close()
    restore = f"""
import json, jax, jax.numpy as jnp, ml_collections as mlc
from jax.sharding import SingleDeviceSharding
from unclip_jax.train.checkpoint import Checkpointer
ck = Checkpointer("gs://{BUCKET}/ckpt-run", mlc.ConfigDict(dict(keep=5)), async_save=False)
abstract = {{"w": jax.ShapeDtypeStruct((4,), jnp.float32,
                                      sharding=SingleDeviceSharding(jax.devices()[0]))}}
step, state, config, data, extras = ck.restore_latest(abstract)
ck.close()
print(json.dumps({{"step": step, "w": state["w"].tolist(), "data": data}}))
"""
    out = json.loads(run_py(gcs, restore, cwd=tmp_path).stdout.strip().splitlines()[-1])
    assert out == {"step": 1, "w": [1.0] * 4, "data": {"pos": 1}}
    # removed (by Orbax's own clean-up of unfinished steps, or ours), so it can be re-saved
    assert gcs.objects("ckpt-run/checkpoints/2/") == []


def _prior_args(data, emb, steps):
    return ["--config", os.path.join(REPO, "configs", "shapes.py") + ":prior",
            f"--config.data.name=unclip_shapes/small", f"--config.data.data_dir={data}",
            f"--config.data.embeddings_dir={emb}", "--config.model.width=32",
            "--config.model.layers=1", "--config.model.heads=2", "--config.train.batch_size=8",
            f"--config.train.steps={steps}", "--config.train.ckpt_every=2",
            "--config.train.log_every=1", "--config.train.warmup=1",
            "--config.diffusion.timesteps=100"]


def _committed_steps(gcs, prefix):
    """Steps with Orbax's step-level commit mark (STEP/commit_success.txt; items get their
    own STEP/ITEM/commit_success.txt earlier, which does not make the step finished)."""
    rel = [n[len(prefix):].split("/") for n in gcs.objects(prefix)]
    return sorted(int(p[0]) for p in rel if len(p) == 2 and p[1] == "commit_success.txt")


@pytest.mark.slow
def test_data_embeddings_train_kill_resume_export_on_gcs(gcs, tmp_path):
    """The issue's scenario on a (local) bucket: build TFDS data into gs://, embed it into
    gs://, train the prior from both with its workdir on gs://, SIGKILL it after a
    checkpoint, resume, export to gs://, and load the export back."""
    data, emb = f"gs://{BUCKET}/data", f"gs://{BUCKET}/emb"
    wd, exp = f"gs://{BUCKET}/runs/prior", f"gs://{BUCKET}/exports/prior"
    t0 = time.monotonic()
    run_py(gcs, ["data", "build", "shapes", "--data_dir", data, "--config", "small"],
           cwd=tmp_path)
    assert any(n.endswith(".tfrecord-00000-of-00001") or ".tfrecord" in n
               for n in gcs.objects("data/unclip_shapes/small/"))
    t_data = time.monotonic()
    run_py(gcs, ["embed", "--clip", CLIP, "--data_dir", data, "--dataset",
                 "unclip_shapes/small", "--split", "train", "--out", emb, "--chunk_size", "256"],
           cwd=tmp_path)
    manifest = json.loads(gcs.read("emb/manifest.json"))
    assert manifest["complete"] and manifest["num_examples"] == 384
    assert manifest["data_dir"] == data and manifest["num_chunks"] == 2
    assert "emb/chunk_00001/index.npy" in gcs.objects("emb/chunk_00001/")
    t_emb = time.monotonic()

    # 1. train until the step-2 checkpoint is committed, then SIGKILL (no clean shutdown)
    env = dict(os.environ, **gcs.env, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               UNCLIP_JAX_CACHE_DIR="off", XLA_FLAGS="")
    log = open(tmp_path / "run1.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "unclip_jax.cli", "train", "--workdir", wd,
                             *_prior_args(data, emb, steps=400)],
                            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 900
        while not _committed_steps(gcs, "runs/prior/checkpoints/"):
            assert proc.poll() is None, open(tmp_path / "run1.log").read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 900 s"
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)            # also when the wait above fails
        proc.wait(timeout=30)
        log.close()
    first = _committed_steps(gcs, "runs/prior/checkpoints/")
    with open(tmp_path / "objects-after-kill.txt", "w") as f:
        f.write("\n".join(gcs.objects("runs/prior/")))
    assert first and first[-1] < 400, first
    assert not (tmp_path / "gs:").exists()       # nothing went to a local ./gs:/ directory
    t_run1 = time.monotonic()

    # 2. resume: the same command continues from the newest committed step and exports
    out = run_py(gcs, ["train", "--workdir", wd, "--max-steps", "4", "--export", exp,
                       *_prior_args(data, emb, steps=400)], cwd=tmp_path)
    resumed = first[-1]
    assert f"step {resumed + 4}:" in out.stdout, out.stdout[-2000:]
    steps = _committed_steps(gcs, "runs/prior/checkpoints/")
    assert steps[-1] == resumed + 4, steps
    rows = [json.loads(l) for l in gcs.read("runs/prior/metrics.jsonl").decode().splitlines()]
    logged = [r["step"] for r in rows]
    assert logged == sorted(set(logged)) and logged[-1] == resumed + 4, logged
    assert any(n.startswith("runs/prior/tensorboard/events") for n in gcs.objects("runs/prior/"))
    t_run2 = time.monotonic()

    # 3. the export on gs:// loads (downloaded and checksum-verified) and names its source
    code = f"""
import json
from unclip_jax import export
params, cfg, extra = export.load({exp!r}, expect_stage="prior")
print(json.dumps({{"stage": cfg.stage, "step": extra["step"], "source": extra["source"],
                  "n": len(__import__("jax").tree.leaves(params))}}))
"""
    loaded = json.loads(run_py(gcs, code, cwd=tmp_path).stdout.strip().splitlines()[-1])
    assert loaded["stage"] == "prior" and loaded["step"] == resumed + 4
    assert loaded["source"] == wd and loaded["n"] > 0
    assert {"exports/prior/config.json", "exports/prior/params.sha256.json"} <= set(
        gcs.objects("exports/prior/"))
    print(f"\ntimes: data {t_data - t0:.1f} s, embed {t_emb - t_data:.1f} s, run1 "
          f"{t_run1 - t_emb:.1f} s, resume+export {t_run2 - t_run1:.1f} s, load "
          f"{time.monotonic() - t_run2:.1f} s")


@pytest.mark.slow   # ~1 min with the storage emulator
def test_sample_and_regenerate_from_a_model_directory_on_gcs(gcs, tmp_path):
    """`sample --checkpoint gs://...` loads every stage and the tokenizer through a local
    mirror, records the stages by their URLs, regenerates from its sidecar bit for bit without
    downloading again, re-downloads a file changed on the bucket (and then refuses to
    regenerate: the identity changed), and names a missing model directory."""
    model = f"gs://{BUCKET}/models/shapes"
    bundled = os.path.join(REPO, "unclip_jax", "assets", "shapes")
    upload = f"""
from unclip_jax import paths
for sub in ("clip", "tokenizer", "prior", "decoder"):
    paths.copy_tree({bundled!r} + "/" + sub, {model!r} + "/" + sub)
print("ok")
"""
    assert run_py(gcs, upload, cwd=tmp_path).stdout.strip().endswith("ok")
    downloads = tmp_path / "downloads"
    common = ["--decoder-steps", "2", "--prior-steps", "2", "--no-progress"]
    out, regen = str(tmp_path / "a.png"), str(tmp_path / "a-again.png")

    def run_cli(*argv):
        env = dict(os.environ, **gcs.env, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
                   UNCLIP_JAX_CACHE_DIR="off", XLA_FLAGS="",
                   UNCLIP_JAX_DOWNLOAD_DIR=str(downloads))
        return subprocess.run([sys.executable, "-m", "unclip_jax.cli", *argv], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)

    p = run_cli("sample", "a red circle", "--checkpoint", model, "--out", out, *common)
    assert p.returncode == 0, p.stderr[-3000:]
    rec = json.load(open(tmp_path / "a.json"))
    assert rec["checkpoint"] == model
    assert {s: c["dir"] for s, c in rec["checkpoints"].items()} == {
        s: f"{model}/{s}" for s in ("clip", "tokenizer", "prior", "decoder")}
    mirrored = sorted(downloads.rglob("*"))
    assert any(f.name == "config.json" and f.parent.name == "decoder" for f in mirrored)
    stamps = {f: f.stat().st_mtime_ns for f in mirrored if f.is_file()}

    p = run_cli("sample", "--from-sidecar", str(tmp_path / "a.json"), "--out", regen,
                "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    np.testing.assert_array_equal(np.asarray(Image.open(regen)), np.asarray(Image.open(out)))
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps     # nothing downloaded again

    # a tokenizer file changed on the bucket: the mirror takes it, the identity changes
    tok_json = os.path.join(bundled, "tokenizer", "tokenizer_config.json")
    changed = json.loads(open(tok_json).read())
    changed["model_max_length"] = 77 + 1
    change = f"""
import json
from unclip_jax import paths
paths.write_text({model!r} + "/tokenizer/tokenizer_config.json", {json.dumps(changed)!r})
print("ok")
"""
    assert run_py(gcs, change, cwd=tmp_path).stdout.strip().endswith("ok")
    p = run_cli("sample", "--from-sidecar", str(tmp_path / "a.json"), "--out",
                str(tmp_path / "b.png"), "--no-progress")
    assert p.returncode != 0
    assert "the tokenizer checkpoint differs from the one recorded" in p.stderr
    assert f"{model}/tokenizer" in p.stderr
    mirror_tok = [f for f in downloads.rglob("tokenizer_config.json")]
    assert len(mirror_tok) == 1 and json.load(open(mirror_tok[0])) == changed

    p = run_cli("sample", "a red circle", "--checkpoint", f"gs://{BUCKET}/models/none",
                "--out", str(tmp_path / "c.png"), *common)
    assert p.returncode != 0
    assert f"checkpoint directory gs://{BUCKET}/models/none does not exist" in p.stderr
    assert not (tmp_path / "c.png").exists() and not (tmp_path / "gs:").exists()

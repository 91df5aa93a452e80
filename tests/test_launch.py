"""launch/*.sh: dry-run output, input checks, and runs against stand-in gcloud/SLURM tools.

gcloud, sbatch, scontrol and srun are replaced by small scripts on PATH that record their
arguments and do locally what the real tool would make happen remotely (the TPU workers' ssh
commands run in a scratch HOME, srun starts each task), so the commands the launchers build
are executed for real. local.sh runs two real JAX processes that all-reduce over gloo.
"""
import json
import os
import shlex
import socket
import subprocess
import sys
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")
CONFIG = "configs/shapes.py:decoder"                 # as the workers see it (repo-relative)
CONFIG_ABS = os.path.join(REPO, CONFIG)                # given from any directory


def clean_env(extra=None):
    """This environment without UNCLIP_* and CUDA_VISIBLE_DEVICES, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("UNCLIP_") and k != "CUDA_VISIBLE_DEVICES"}
    env.update(extra or {})
    return env


def launch(script, *args, env=None, cwd=None, timeout=60):
    return subprocess.run(["bash", os.path.join(LAUNCH, script), *args], env=clean_env(env),
                          cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout)


def commands(stdout):
    """The `+ ` lines of a dry run, each split back into its argv."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def write_exe(path, text):
    with open(path, "w") as f:
        f.write(textwrap.dedent(text).lstrip())
    os.chmod(path, 0o755)
    return str(path)


# A stand-in Python interpreter: records argv, cwd and UNCLIP_*/CUDA env as one JSON file.
FAKE_PY = f"""
#!{sys.executable}
import json, os, sys
out = os.environ["FAKE_OUT"]
rec = {{"argv": sys.argv[1:], "cwd": os.getcwd(),
        "env": {{k: v for k, v in os.environ.items()
                if k.startswith("UNCLIP_") or k == "CUDA_VISIBLE_DEVICES"}}}}
tag = "pip" if sys.argv[1:3] == ["-m", "pip"] else os.environ.get("UNCLIP_PROCESS_ID", "run")
with open(os.path.join(out, "py-" + tag + ".json"), "w") as f:
    json.dump(rec, f)
print("training output from", tag)
"""


@pytest.fixture
def fake_bin(tmp_path):
    d = tmp_path / "bin"
    d.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    write_exe(d / "fakepy", FAKE_PY)
    env = {"PATH": f"{d}:{os.environ['PATH']}", "FAKE_OUT": str(out)}
    return d, out, env


# --------------------------------------------------------------------------- tpu_pod.sh

def _without(args, option):
    i = args.index(option)
    return args[:i] + args[i + 2:]


def _replace(args, option, value):
    i = args.index(option)
    return args[:i + 1] + [value] + args[i + 2:]


TPU_ARGS = ["--name", "my-pod", "--zone", "us-central2-b", "--accelerator", "v4-32",
            "--project", "my-proj", "--config", CONFIG_ABS, "--workdir", "gs://bucket/run1",
            "--repo", "https://example.com/unclip-jax.git", "--ref", "dev", "--run-id", "r1",
            "--config.train.steps=10", "--config.data.caption=it's a b"]


def test_tpu_dry_run_commands():
    proc = launch("tpu_pod.sh", "--dry-run", *TPU_ARGS)
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc.stdout)
    gcloud = [c for c in cmds if c[0] == "gcloud"]
    assert all(c[1:4] == ["compute", "tpus", "tpu-vm"] for c in gcloud)
    assert [c[4] for c in gcloud] == ["describe", "create", "ssh", "ssh", "scp"]
    for c in gcloud:
        assert "--zone=us-central2-b" in c and "--project=my-proj" in c
    describe, create, install, train, fetch = gcloud
    assert describe[5] == "my-pod" and create[5] == "my-pod"
    assert "--accelerator-type=v4-32" in create and "--version=tpu-ubuntu2204-base" in create
    for c in (install, train, fetch):
        assert "--worker=all" in c
    install_cmd = next(a for a in install if a.startswith("--command="))
    assert "git clone --quiet https://example.com/unclip-jax.git" in install_cmd
    assert "git fetch --quiet origin dev" in install_cmd
    # the images' Python 3.10 is not used: uv makes a 3.11 venv and installs into it
    assert "python3 -m pip install --quiet --user uv" in install_cmd
    assert 'uv venv --quiet --allow-existing --python 3.11 "$HOME/unclip-venv"' in install_cmd
    assert 'uv pip install --quiet --python "$HOME/unclip-venv/bin/python" -e .\\[tpu\\]' \
        in install_cmd
    train_cmd = next(a for a in train if a.startswith("--command="))[len("--command="):]
    assert "UNCLIP_AUTO_DISTRIBUTED=1" in train_cmd
    words = shlex.split(train_cmd)
    assert words[words.index("UNCLIP_AUTO_DISTRIBUTED=1") + 1] == "$HOME/unclip-venv/bin/python"
    i = words.index("train")
    assert words[i + 1:i + 9] == ["--config", CONFIG, "--workdir", "gs://bucket/run1",
                                  "--config.train.steps=10", "--config.data.caption=it's a b",
                                  "2>&1", "<"]
    assert fetch[-2:] == ["my-pod:unclip-logs/r1-worker*.log", "tpu-logs/my-pod/"]
    assert proc.stderr == ""


@pytest.mark.parametrize("accel, runtime", [
    ("v2-8", "tpu-ubuntu2204-base"), ("v3-32", "tpu-ubuntu2204-base"),
    ("v4-32", "tpu-ubuntu2204-base"), ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5e-16", "v2-alpha-tpuv5-lite"), ("v5p-32", "v2-alpha-tpuv5"), ("v6e-16", "v2-alpha-tpuv6e"),
])
def test_tpu_runtime_follows_accelerator(accel, runtime):
    proc = launch("tpu_pod.sh", "--dry-run", *_replace(TPU_ARGS, "--accelerator", accel))
    assert proc.returncode == 0, proc.stderr
    [create] = [c for c in commands(proc.stdout) if c[:5] == ["gcloud", "compute", "tpus",
                                                              "tpu-vm", "create"]]
    assert f"--version={runtime}" in create and f"--accelerator-type={accel}" in create
    proc = launch("tpu_pod.sh", "--dry-run", *_replace(TPU_ARGS, "--accelerator", accel),
                  "--version", "my-runtime")
    assert "--version=my-runtime" in proc.stdout and runtime not in proc.stdout


def test_tpu_queued_resource_dry_run():
    args = _replace(TPU_ARGS, "--accelerator", "v5litepod-16") + ["--queued", "--spot"]
    proc = launch("tpu_pod.sh", "--dry-run", *args)
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc.stdout)
    assert [c[3:5] for c in cmds if c[0] == "gcloud"] == [
        ["tpu-vm", "describe"], ["queued-resources", "create"], ["queued-resources", "describe"],
        ["tpu-vm", "ssh"], ["tpu-vm", "ssh"], ["tpu-vm", "scp"]]
    create = cmds[1]
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "my-pod"]
    for flag in ["--node-id=my-pod", "--accelerator-type=v5litepod-16",
                 "--runtime-version=v2-alpha-tpuv5-lite", "--spot", "--zone=us-central2-b",
                 "--project=my-proj"]:
        assert flag in create
    assert cmds[2][-1] == "--format=value(state.state)"
    assert "every 30 s until it prints ACTIVE" in proc.stdout


FAKE_GCLOUD = f"""
#!{sys.executable}
# Stand-in gcloud: records argv; `ssh --command=C` runs C with bash in $FAKE_HOME (one worker);
# `scp NAME:path dest` copies from $FAKE_HOME; `describe` prints $FAKE_EXISTING or fails.
import glob, json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.path.join(os.environ["FAKE_OUT"], "gcloud.jsonl"), "a") as f:
    f.write(json.dumps(args) + "\\n")
verb = args[3]
if args[2] == "queued-resources":
    if verb == "describe":      # ACTIVE on the second poll
        n = len(glob.glob(os.path.join(os.environ["FAKE_OUT"], "qr-poll-*")))
        open(os.path.join(os.environ["FAKE_OUT"], f"qr-poll-{{n}}"), "w").close()
        print("ACTIVE" if n else "WAITING_FOR_RESOURCES")
    sys.exit(0)
if verb == "describe":
    if not os.environ.get("FAKE_EXISTING"):
        sys.exit(1)
    print("projects/p/locations/z/acceleratorTypes/" + os.environ["FAKE_EXISTING"])
elif verb == "ssh":
    cmd = next(a for a in args if a.startswith("--command="))[len("--command="):]
    env = dict(os.environ, HOME=os.environ["FAKE_HOME"], TPU_WORKER_ID="0")
    sys.exit(subprocess.run(["bash", "-c", cmd], env=env).returncode)
elif verb == "scp":
    src, dest = [a for a in args[4:] if not a.startswith("--")]
    for p in glob.glob(os.path.join(os.environ["FAKE_HOME"], src.split(":", 1)[1])):
        shutil.copy(p, dest)
"""


def fake_gcloud(fake_bin, tmp_path, existing=""):
    d, out, env = fake_bin
    write_exe(d / "gcloud", FAKE_GCLOUD)
    home = tmp_path / "home"
    home.mkdir()
    env.update(FAKE_HOME=str(home), FAKE_EXISTING=existing)
    return out, home, env


def gcloud_calls(out):
    with open(out / "gcloud.jsonl") as f:
        return [json.loads(line) for line in f]


def test_tpu_run_creates_installs_trains_fetches(fake_bin, tmp_path):
    out, home, env = fake_gcloud(fake_bin, tmp_path)
    args = _replace(_replace(TPU_ARGS, "--repo", REPO), "--ref", "main")
    logs = tmp_path / "logs"
    proc = launch("tpu_pod.sh", *args, "--python", str(fake_bin[0] / "fakepy"),
                  "--log-dir", str(logs), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verbs = [c[3] for c in gcloud_calls(out)]
    assert verbs == ["describe", "create", "ssh", "ssh", "scp"]
    # the install ran on the "worker": a clone of this repository plus an editable install
    assert (home / "unclip-jax" / "launch" / "tpu_pod.sh").exists()
    head = subprocess.run(["git", "-C", str(home / "unclip-jax"), "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout
    main = subprocess.run(["git", "-C", REPO, "rev-parse", "main"], capture_output=True,
                          text=True).stdout
    assert head == main
    pip = json.load(open(out / "py-pip.json"))
    assert pip["argv"] == ["-m", "pip", "install", "--quiet", "-e", ".[tpu]"]
    assert pip["cwd"] == str(home / "unclip-jax")
    # training got exactly our arguments and the auto-detect switch
    run = json.load(open(out / "py-run.json"))
    assert run["argv"] == ["-m", "unclip_jax.cli", "train", "--config", CONFIG, "--workdir",
                           "gs://bucket/run1", "--config.train.steps=10",
                           "--config.data.caption=it's a b"]
    assert run["env"] == {"UNCLIP_AUTO_DISTRIBUTED": "1"}
    # the worker's log was written remotely and fetched
    assert "training output from run" in (logs / "r1-worker0.log").read_text()
    assert "training output from run" in proc.stdout  # streamed through tee


FAKE_UV = f"""
#!{sys.executable}
# Stand-in uv: records argv; `uv venv --python V DIR` makes DIR/bin/python (the fake Python).
import json, os, sys
args = sys.argv[1:]
with open(os.path.join(os.environ["FAKE_OUT"], "uv.jsonl"), "a") as f:
    f.write(json.dumps({{"argv": args, "cwd": os.getcwd()}}) + "\\n")
if args[0] == "venv":
    os.makedirs(os.path.join(args[-1], "bin"), exist_ok=True)
    os.symlink(os.path.join(os.path.dirname(sys.argv[0]), "fakepy"),
               os.path.join(args[-1], "bin", "python"))
"""


def test_tpu_queued_uv_install_and_train(fake_bin, tmp_path):
    """--queued waits for ACTIVE; without --python the workers get a uv venv of 3.11 and
    train with its interpreter."""
    out, home, env = fake_gcloud(fake_bin, tmp_path)
    write_exe(fake_bin[0] / "uv", FAKE_UV)
    args = _replace(_replace(_replace(TPU_ARGS, "--repo", REPO), "--ref", "main"),
                    "--accelerator", "v6e-16")
    proc = launch("tpu_pod.sh", *args, "--queued", "--log-dir", str(tmp_path / "logs"),
                  env=dict(env, UNCLIP_QUEUED_POLL_S="0"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = gcloud_calls(out)
    assert [c[2:4] for c in calls] == [
        ["tpu-vm", "describe"], ["queued-resources", "create"], ["queued-resources", "describe"],
        ["queued-resources", "describe"], ["tpu-vm", "ssh"], ["tpu-vm", "ssh"], ["tpu-vm", "scp"]]
    assert "--runtime-version=v2-alpha-tpuv6e" in calls[1]
    assert "queued resource my-pod is ACTIVE" in proc.stderr
    uv = [json.loads(l)["argv"] for l in open(out / "uv.jsonl")]
    venv = str(home / "unclip-venv")
    assert uv == [["venv", "--quiet", "--allow-existing", "--python", "3.11", venv],
                  ["pip", "install", "--quiet", "--python", f"{venv}/bin/python", "-e", ".[tpu]"]]
    run = json.load(open(out / "py-run.json"))
    assert run["argv"][:3] == ["-m", "unclip_jax.cli", "train"]


def test_tpu_python_version_matches_setup():
    """The Python the workers get satisfies setup.py's python_requires (3.10 does not)."""
    import re
    req = re.search(r'python_requires=">=(3\.\d+)"', open(os.path.join(REPO, "setup.py")).read())
    script = open(os.path.join(LAUNCH, "tpu_pod.sh")).read()
    default = re.search(r"PY_VERSION=(3\.\d+)", script).group(1)
    version = lambda v: tuple(map(int, v.split(".")))
    assert version(default) >= version(req.group(1)) > version("3.10")


def test_tpu_reuses_matching_slice_and_rejects_other_type(fake_bin, tmp_path):
    out, home, env = fake_gcloud(fake_bin, tmp_path, existing="v4-32")
    (home / "unclip-jax").mkdir()
    proc = launch("tpu_pod.sh", *TPU_ARGS, "--skip-install", "--detach",
                  "--python", str(fake_bin[0] / "fakepy"), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [c[3] for c in gcloud_calls(out)] == ["describe", "ssh"]
    assert "reusing TPU my-pod (v4-32)" in proc.stderr
    assert "fetch the logs with" in proc.stderr
    for _ in range(100):  # detached training finishes in the background
        if (out / "py-run.json").exists():
            break
        time.sleep(0.05)
    assert json.load(open(out / "py-run.json"))["env"] == {"UNCLIP_AUTO_DISTRIBUTED": "1"}

    env["FAKE_EXISTING"] = "v4-8"
    proc = launch("tpu_pod.sh", *TPU_ARGS, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert "TPU my-pod exists with accelerator v4-8, not v4-32" in proc.stderr
    assert gcloud_calls(out)[-1][3] == "describe"  # nothing after the check


@pytest.mark.parametrize("args, message", [
    (_replace(TPU_ARGS, "--workdir", "/local/run"), "--workdir must be a gs:// path"),
    (_without(TPU_ARGS, "--name"), "missing required option --name"),
    (_without(TPU_ARGS, "--zone"), "missing required option --zone"),
    (_replace(TPU_ARGS, "--accelerator", "tpu32"), "--accelerator must look like v4-32"),
    (_replace(TPU_ARGS, "--config", "configs/nope.py"), "--config file not found: configs/nope.py"),
    (_without(TPU_ARGS, "--repo"), "missing required option --repo"),
    (TPU_ARGS + ["--config.train.steps"], "override --config.train.steps needs a value"),
    (TPU_ARGS + ["--bogus"], "unknown option --bogus"),
    (TPU_ARGS + ["--ref"], "option --ref needs a value"),
    (_replace(TPU_ARGS, "--accelerator", "v9x-8"),
     "no known TPU runtime for --accelerator v9x-8; pass --version RUNTIME"),
    (_replace(TPU_ARGS, "--config", "/etc/passwd"), "--config must be a preset name or a file inside this repository"),
    (TPU_ARGS + ["--python-version", "3"], "--python-version must look like 3.11"),
])
def test_tpu_bad_input(args, message, tmp_path):
    # A checkout with an `origin` remote supplies --repo by itself; point git at an empty
    # repository so that "no --repo and no origin" is what the script sees, wherever the
    # tests run (CI's clone has an origin).
    empty = tmp_path / "no-remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(empty)], check=True)
    proc = launch("tpu_pod.sh", "--dry-run", *args, env={"GIT_DIR": str(empty)})
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("tpu_pod.sh: error: ") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- gpu_slurm.sh

SLURM_ARGS = ["--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu", "--time",
              "12:00:00", "--config", CONFIG, "--workdir", "/shared/run1",
              "--config.train.steps=10", "--config.data.caption=a b"]


def sbatch_script(stdout):
    lines = stdout.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("# sbatch script "))
    end = lines.index("# end of sbatch script")
    return "\n".join(lines[start + 1:end]) + "\n", lines[start][len("# sbatch script "):-1]


def test_slurm_dry_run_script():
    proc = launch("gpu_slurm.sh", "--dry-run", *SLURM_ARGS, "--log-dir", "/shared/logs")
    assert proc.returncode == 0, proc.stderr
    script, path = sbatch_script(proc.stdout)
    assert commands(proc.stdout) == [["sbatch", path]]
    assert path.startswith("/shared/logs/unclip-jax-") and path.endswith(".sbatch")
    for line in ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --partition=gpu", "#SBATCH --time=12:00:00",
                 'export UNCLIP_COORDINATOR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" '
                 '| head -n 1):$((20000 + SLURM_JOB_ID % 20000))"']:
        assert line in script.splitlines()
    assert "export UNCLIP_NUM_PROCESSES=" in script
    srun = next(l for l in script.splitlines() if l.startswith("srun "))
    words = shlex.split(srun)
    assert "UNCLIP_PROCESS_ID=\"$SLURM_PROCID\"" in words[words.index("-c") + 1]
    assert words[words.index("-c") + 2:] == [
        "bash", "python3", "-m", "unclip_jax.cli", "train", "--config", CONFIG_ABS, "--workdir",
        "/shared/run1", "--config.train.steps=10", "--config.data.caption=a b"]
    assert "--output=/shared/logs/%x-%j-proc%t.log" in words
    assert "--gpus-per-task=1" not in words and "CUDA_VISIBLE_DEVICES" not in script
    assert f"cd {REPO}" in script.splitlines()          # the directory it was run from


def test_slurm_per_gpu_auto_cpus_mem_exclusive():
    proc = launch("gpu_slurm.sh", "--dry-run", *SLURM_ARGS, "--per-gpu", "--auto",
                  "--cpus-per-task", "12", "--mem", "0", "--exclusive", "--port", "5555")
    assert proc.returncode == 0, proc.stderr
    script, _ = sbatch_script(proc.stdout)
    lines = script.splitlines()
    for line in ["#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=12", "#SBATCH --mem=0", "#SBATCH --exclusive",
                 "export JAX_COORDINATOR_PORT=5555"]:
        assert line in lines
    words = shlex.split(next(l for l in lines if l.startswith("srun ")))
    # srun gets cpus-per-task itself (not inherited since SLURM 22.05) and binds one GPU per
    # task; nobody sets CUDA_VISIBLE_DEVICES by hand
    assert "--cpus-per-task=12" in words and "--gpus-per-task=1" in words
    assert words[words.index("-c") + 1] == 'export UNCLIP_AUTO_DISTRIBUTED=1; exec "$@"'
    assert "UNCLIP_COORDINATOR" not in script and "CUDA_VISIBLE_DEVICES" not in script


FAKE_SCONTROL = """
#!/usr/bin/env bash
[ "$1 $2" = "show hostnames" ] || exit 1
printf 'gpu07\\ngpu08\\n'
"""

FAKE_SRUN = f"""
#!{sys.executable}
# Stand-in srun: drops its options, starts SLURM_NTASKS tasks with PROCID/LOCALID set.
import os, subprocess, sys
args = sys.argv[1:]
opts = []
while args[0].startswith("--"):
    opts.append(args.pop(0))
n, per_node = int(os.environ["SLURM_NTASKS"]), int(os.environ["FAKE_TASKS_PER_NODE"])
def task_env(t):
    env = dict(os.environ, SLURM_PROCID=str(t), SLURM_LOCALID=str(t % per_node))
    if "--gpus-per-task=1" in opts:     # SLURM binds task t to its own GPU
        env["CUDA_VISIBLE_DEVICES"] = str(t % per_node)
    return env
procs = [subprocess.Popen(args, env=task_env(t)) for t in range(n)]
sys.exit(max(p.wait() for p in procs))
"""


@pytest.mark.parametrize("per_gpu", [False, True])
def test_slurm_script_runs_with_fake_slurm(fake_bin, tmp_path, per_gpu):
    d, out, env = fake_bin
    write_exe(d / "scontrol", FAKE_SCONTROL)
    write_exe(d / "srun", FAKE_SRUN)
    extra = ["--per-gpu"] if per_gpu else []
    proc = launch("gpu_slurm.sh", "--dry-run", *SLURM_ARGS, *extra,
                  "--python", str(d / "fakepy"), "--setup", "export SETUP_RAN=1")
    assert proc.returncode == 0, proc.stderr
    script, _ = sbatch_script(proc.stdout)
    ntasks = 8 if per_gpu else 2
    assert f"#SBATCH --ntasks-per-node={4 if per_gpu else 1}" in script
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    env.update(SLURM_JOB_NODELIST="gpu[07-08]", SLURM_NTASKS=str(ntasks), SLURM_JOB_ID="54321",
               SLURM_JOB_NUM_NODES="2", FAKE_TASKS_PER_NODE=str(ntasks // 2))
    run = subprocess.run(["bash", str(path)], env=clean_env(env), capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert f"coordinator gpu07:34321, {ntasks} processes" in run.stdout  # 20000 + 54321 % 20000
    for t in range(ntasks):
        rec = json.load(open(out / f"py-{t}.json"))
        want = {"UNCLIP_COORDINATOR": "gpu07:34321", "UNCLIP_NUM_PROCESSES": str(ntasks),
                "UNCLIP_PROCESS_ID": str(t)}
        if per_gpu:
            want["CUDA_VISIBLE_DEVICES"] = str(t % 4)
        assert rec["env"] == want
        assert rec["cwd"] == REPO
        assert rec["argv"] == ["-m", "unclip_jax.cli", "train", "--config", CONFIG_ABS, "--workdir",
                               "/shared/run1", "--config.train.steps=10",
                               "--config.data.caption=a b"]


def test_slurm_submits_written_script(fake_bin, tmp_path):
    d, out, env = fake_bin
    write_exe(d / "sbatch", f"""
        #!/usr/bin/env bash
        cp "$1" {out}/submitted.sbatch
        echo "Submitted batch job 7"
        """)
    proc = launch("gpu_slurm.sh", *_replace(SLURM_ARGS, "--config", CONFIG_ABS), "--port",
                  "4567", "--log-dir", "logs", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Submitted batch job 7" in proc.stdout
    [written] = list((tmp_path / "logs").glob("unclip-jax-*.sbatch"))
    assert (out / "submitted.sbatch").read_text() == written.read_text()
    assert ':4567"' in written.read_text()
    assert f"+ sbatch {written}" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (_replace(SLURM_ARGS, "--nodes", "0"), "--nodes must be a positive integer, got '0'"),
    (_replace(SLURM_ARGS, "--gpus-per-node", "x"), "--gpus-per-node must be a positive integer"),
    (_without(SLURM_ARGS, "--workdir"), "missing required option --workdir"),
    (_without(SLURM_ARGS, "--config"), "missing required option --config"),
    (_replace(SLURM_ARGS, "--config", "nope.py:x"), "--config file not found: nope.py"),
    (_replace(SLURM_ARGS, "--time", "soon"), "--time must look like"),
    (SLURM_ARGS + ["--port", "70000"], "--port must be a port number"),
])
def test_slurm_bad_input(args, message):
    proc = launch("gpu_slurm.sh", "--dry-run", *args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("gpu_slurm.sh: error: ") and message in proc.stderr


# --------------------------------------------------------------------------- local.sh

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_dry_run_commands(tmp_path):
    proc = launch("local.sh", "--dry-run", "-n", "3", "--devices-per-process", "2", "--port",
                  "4242", "--workdir", "wd", "--config", CONFIG_ABS, "--config.train.steps=5",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stdout.splitlines() if l.startswith("+ ")]
    procs = [l for l in lines if "UNCLIP_PROCESS_ID=" in l]
    assert len(procs) == 3 and not any(l.startswith("+ cd ") for l in lines)
    workdir = str(tmp_path / "wd")
    for i, line in enumerate(procs):
        words = shlex.split(line[2:])
        assert words[-4:] == [">", f"{workdir}/logs/process-{i}.log", "2>&1", "&"]
        assert words[:2] == ["setsid", "env"]
        assert f"UNCLIP_PROCESS_ID={i}" in words
        assert "UNCLIP_COORDINATOR=127.0.0.1:4242" in words
        assert "UNCLIP_NUM_PROCESSES=3" in words and "UNCLIP_CPU_COLLECTIVES=gloo" in words
        assert "XLA_FLAGS=--xla_force_host_platform_device_count=2" in words
        assert words[words.index("train") + 1:-4] == ["--config", CONFIG_ABS, "--workdir", workdir,
                                                      "--config.train.steps=5"]
    assert not (tmp_path / "wd").exists()  # a dry run creates nothing


@pytest.mark.parametrize("script", ["tpu_pod.sh", "gpu_slurm.sh", "local.sh"])
def test_preset_name_reaches_train_unchanged(script, tmp_path):
    """`--config shapes:decoder` (a preset, resolved by name where train runs) is accepted
    from any directory and passed to train as is; an unknown name is train's error."""
    args = dict(
        [("tpu_pod.sh", _replace(TPU_ARGS, "--config", "shapes:decoder")),
         ("gpu_slurm.sh", _replace(SLURM_ARGS, "--config", "shapes:decoder")),
         ("local.sh", ["-n", "2", "--workdir", "wd", "--config", "shapes:decoder"])])[script]
    proc = launch(script, "--dry-run", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "--config shapes:decoder" in proc.stdout
    assert str(tmp_path / "shapes:decoder") not in proc.stdout      # not made a path


def test_local_two_processes_all_reduce(tmp_path):
    proc = launch("local.sh", "-n", "2", "--devices-per-process", "2", "--port",
                  str(free_port()), "--workdir", str(tmp_path),
                  "--cmd", f"{shlex.quote(sys.executable)} -m unclip_jax.distributed",
                  timeout=120)
    assert proc.returncode == 0, proc.stderr
    for i in range(2):
        last = (tmp_path / "logs" / f"process-{i}.log").read_text().strip().splitlines()[-1]
        result = json.loads(last)
        assert result["process_index"] == i and result["process_count"] == 2
        assert result["global_devices"] == 4 and result["psum"] == result["expected"] == 10.0


def test_local_processes_run_where_the_script_is_run(tmp_path):
    """One rule for relative paths: the processes run in the launching directory, so
    `--config.data.data_dir=data` means ./data there, like --workdir (issue: it used to
    mean REPO/data)."""
    (tmp_path / "data").mkdir()
    proc = launch("local.sh", "-n", "2", "--workdir", "wd", "--cmd",
                  "pwd; test -d data && echo found-data", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for i in range(2):
        log = (tmp_path / "wd" / "logs" / f"process-{i}.log").read_text().split()
        assert log == [str(tmp_path), "found-data"]


def test_local_failure_stops_the_others(tmp_path):
    pidfile = tmp_path / "pid0"
    cmd = (f'if [ "$UNCLIP_PROCESS_ID" = 1 ]; then sleep 0.5; echo boom; exit 3; fi; '
           f'echo $$ > {pidfile}; exec sleep 30')
    start = time.monotonic()
    proc = launch("local.sh", "-n", "2", "--workdir", str(tmp_path), "--cmd", cmd)
    assert time.monotonic() - start < 20
    assert proc.returncode == 1
    assert "process 1 failed (exit 3); stopping the others" in proc.stderr
    assert "    boom" in proc.stderr
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)


@pytest.mark.parametrize("args, message", [
    (["-n", "two", "--workdir", "w", "--cmd", "true"], "-n/--num-processes must be a positive integer, got 'two'"),
    (["--workdir", "w", "--cmd", "true"], "missing required option -n/--num-processes"),
    (["-n", "2", "--cmd", "true"], "missing required option --workdir"),
    (["-n", "2", "--workdir", "w"], "missing required option --config (or --cmd)"),
    (["-n", "2", "--workdir", "w", "--config", "missing.py"], "--config file not found: missing.py"),
    (["-n", "2", "--workdir", "w", "--cmd", "true", "--devices-per-process", "0"],
     "--devices-per-process must be a positive integer"),
    (["-n", "2", "--workdir", "gs://b/w", "--cmd", "true"], "--workdir must be a local directory"),
])
def test_local_bad_input(args, message):
    proc = launch("local.sh", *args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("local.sh: error: ") and message in proc.stderr


@pytest.mark.parametrize("script", ["tpu_pod.sh", "gpu_slurm.sh", "local.sh"])
def test_help(script):
    proc = launch(script, "--help")
    assert proc.returncode == 0 and proc.stdout.startswith(f"Usage: launch/{script}")
    assert "--dry-run" in proc.stdout


def _python310():
    import shutil
    for cand in ["python3.10", os.path.expanduser("~/.pyenv/versions/3.10.13/bin/python3.10")]:
        path = shutil.which(cand) or (cand if os.path.isfile(cand) else None)
        if path and subprocess.run([path, "-c", "import sys; assert sys.version_info[:2] == "
                                    "(3, 10)"], capture_output=True).returncode == 0:
            return path
    return None


@pytest.mark.slow
def test_tpu_worker_install_runs_on_a_python_310_image(tmp_path):
    """The workers' install command, run here as on a TPU VM image whose python3 is 3.10 and
    which has no uv: pip installs uv, uv makes a 3.11 venv and installs the project into it
    (dependencies skipped through uv's own config: they are jax[tpu] and friends, gigabytes).
    A 3.10 venv is refused by setup.py, which is why the script does not use the image's
    Python. Needs PyPI (uv, setuptools) and a local python3.10 and 3.11."""
    py310 = _python310()
    if py310 is None:
        pytest.skip("no python3.10 here")
    proc = launch("tpu_pod.sh", "--dry-run", *_replace(_replace(TPU_ARGS, "--repo", REPO),
                                                       "--ref", "main"))
    install = next(c for c in commands(proc.stdout) if c[4] == "ssh")
    cmd = next(a for a in install if a.startswith("--command="))[len("--command="):]
    home, shim = tmp_path / "home", tmp_path / "image-bin"
    home.mkdir()
    shim.mkdir()
    os.symlink(py310, shim / "python3")             # the image's python3
    (tmp_path / "uv.toml").write_text("[pip]\nno-deps = true\n")
    path = ":".join(p for p in os.environ["PATH"].split(":")
                    if not os.path.exists(os.path.join(p, "uv")))
    env = dict(clean_env(), HOME=str(home), PATH=f"{shim}:{path}",
               UV_CONFIG_FILE=str(tmp_path / "uv.toml"), PIP_DISABLE_PIP_VERSION_CHECK="1")
    run = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert (home / ".local" / "bin" / "uv").exists()          # installed by the image's pip
    venv_py = home / "unclip-venv" / "bin" / "python"
    out = subprocess.run([str(venv_py), "-c", "import sys, unclip_jax; "
                          "print(sys.version_info[:2], unclip_jax.__file__)"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.stdout.startswith("(3, 11)"), out.stdout + out.stderr
    assert str(home / "unclip-jax") in out.stdout              # the worker's clone, editable
    uv = str(home / ".local" / "bin" / "uv")
    subprocess.run([uv, "venv", "--quiet", "--python", py310, str(tmp_path / "v310")],
                   env=env, check=True, capture_output=True)
    refused = subprocess.run([uv, "pip", "install", "--python", str(tmp_path / "v310/bin/python"),
                              "-e", str(home / "unclip-jax")], env=env, capture_output=True,
                             text=True)
    assert refused.returncode != 0 and "3.11" in refused.stderr, refused.stderr[-2000:]

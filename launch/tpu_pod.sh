#!/usr/bin/env bash
# Training on a Cloud TPU VM slice: create or reuse it, install on every worker, train on all.
set -euo pipefail
PROG=tpu_pod.sh
. "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_pod.sh --name NAME --zone ZONE --accelerator TYPE --config NAME|FILE[:ARG]
                         --workdir gs://BUCKET/PATH [--version RUNTIME] [--project PROJECT]
                         [--queued] [--repo GIT_URL] [--ref REF] [--python-version V]
                         [--python PY] [--spot] [--skip-install] [--detach] [--run-id ID]
                         [--log-dir DIR] [--config.KEY=VALUE ...] [--dry-run]

1. `gcloud compute tpus tpu-vm describe NAME`; if the slice does not exist,
   `gcloud compute tpus tpu-vm create NAME --accelerator-type TYPE --version RUNTIME`, or
   with --queued `gcloud compute tpus queued-resources create NAME --node-id NAME ...` and
   wait until it is ACTIVE (an existing slice must have the same accelerator type).
   RUNTIME follows TYPE: v2/v3/v4 tpu-ubuntu2204-base, v5litepod/v5e v2-alpha-tpuv5-lite,
   v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e (--version overrides).
2. Install on every worker (`ssh --worker=all`): clone GIT_URL into ~/unclip-jax (or fetch
   into the existing clone), check out REF; the TPU images ship Python 3.10, which the
   project does not support, so install uv (`python3 -m pip install --user uv`), make
   ~/unclip-venv with Python V (default 3.11) and `uv pip install -e '.[tpu]'` into it.
   With --python PY, `PY -m pip install -e '.[tpu]'` instead. The code comes from git, so
   push REF first; --skip-install reuses what the workers have.
3. Train on every worker (`ssh --worker=all`) with UNCLIP_AUTO_DISTRIBUTED=1: each process
   calls jax.distributed.initialize() without arguments and JAX finds the pod by itself.
   Worker W logs to ~/unclip-logs/RUN_ID-workerW.log (also streamed to this terminal).
   Checkpoints go to the gs:// workdir, which all workers share; give data_dir and
   embeddings_dir as gs:// URLs too (--config.data.data_dir=gs://...). Training runs in
   ~/unclip-jax on the workers; --config is passed as its path inside the repository.
4. Copy every worker's log to LOG_DIR (`scp --worker=all`) and exit with training's status.
   With --detach, step 3 starts training in the background (nohup) and returns at once;
   fetch the logs later with the scp command that the script prints.
The remote commands are bash (the TPU VM images' login shell).

  --name NAME          TPU VM name                  --zone ZONE    e.g. us-central2-b
  --accelerator TYPE   e.g. v4-32, v5litepod-16     --project P    GCP project (default: gcloud's)
  --version RUNTIME    TPU software version (default: chosen from TYPE, see step 1)
  --queued             obtain the slice through a queued resource (most v5e/v5p/v6e
                       capacity); waits until it is ACTIVE
  --config NAME|FILE[:ARG]  preset (shapes:decoder), or a config file inside this repository
  --workdir gs://...   training workdir on GCS (required to be gs://)
  --repo GIT_URL       repository the workers clone (default: this checkout's `origin`)
  --ref REF            branch, tag or commit to check out (default main)
  --python-version V   Python that uv installs on the workers (default 3.11)
  --python PY          use this interpreter on the workers instead of a uv venv
  --spot               create the slice as Spot VMs
  --skip-install       do not clone/install (workers already have the code)
  --detach             start training in the background and return
  --run-id ID          names the worker logs (default: UTC time, e.g. 20250101T120000Z)
  --log-dir DIR        local folder for fetched logs (default ./tpu-logs/NAME)
  --config.KEY=VALUE   config override, passed through to train
  --dry-run            print the commands (one per line, prefixed `+ `), run nothing
  -h, --help           this help
USAGE
}

NAME="" ZONE="" ACCEL="" VERSION="" PROJECT="" CONFIG="" WORKDIR="" REPO="" REF=main
PYTHON="" PY_VERSION=3.11 QUEUED=0 SPOT=0 SKIP_INSTALL=0 DETACH=0 RUN_ID="" LOG_DIR=""
VENV='$HOME/unclip-venv'
OVERRIDES=()
while (( $# )); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --spot) SPOT=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --python-version|--python-version=*) take PY_VERSION "$@"; shift "$TAKEN" ;;
    --skip-install) SKIP_INSTALL=1; shift ;;
    --detach) DETACH=1; shift ;;
    --name|--name=*) take NAME "$@"; shift "$TAKEN" ;;
    --zone|--zone=*) take ZONE "$@"; shift "$TAKEN" ;;
    --accelerator|--accelerator=*) take ACCEL "$@"; shift "$TAKEN" ;;
    --version|--version=*) take VERSION "$@"; shift "$TAKEN" ;;
    --project|--project=*) take PROJECT "$@"; shift "$TAKEN" ;;
    --config|--config=*) take CONFIG "$@"; shift "$TAKEN" ;;
    --workdir|--workdir=*) take WORKDIR "$@"; shift "$TAKEN" ;;
    --repo|--repo=*) take REPO "$@"; shift "$TAKEN" ;;
    --ref|--ref=*) take REF "$@"; shift "$TAKEN" ;;
    --python|--python=*) take PYTHON "$@"; shift "$TAKEN" ;;
    --run-id|--run-id=*) take RUN_ID "$@"; shift "$TAKEN" ;;
    --log-dir|--log-dir=*) take LOG_DIR "$@"; shift "$TAKEN" ;;
    --config.*) check_override "$1"; OVERRIDES+=("$1"); shift ;;
    --) shift; OVERRIDES+=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

require "$NAME" --name
[[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name must be lowercase letters, digits and -, got '$NAME'"
require "$ZONE" --zone
require "$ACCEL" --accelerator
[[ $ACCEL =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] || die "--accelerator must look like v4-32 or v5litepod-16, got '$ACCEL'"
require "$CONFIG" --config
check_config "$CONFIG"
if ! is_preset "$CONFIG"; then   # a file: the workers find it in their clone, repo-relative
  CONFIG_FILE=$(cd "$(dirname "${CONFIG%%:*}")" && pwd -P)/$(basename "${CONFIG%%:*}")
  ROOT_REAL=$(cd "$REPO_ROOT" && pwd -P)
  [[ $CONFIG_FILE == "$ROOT_REAL"/* ]] \
    || die "--config must be a preset name or a file inside this repository (the workers use their clone of it), got '${CONFIG%%:*}'"
  CONFIG=${CONFIG_FILE#"$ROOT_REAL"/}${CONFIG#"${CONFIG%%:*}"}
fi
[[ $PY_VERSION =~ ^3\.[0-9]+$ ]] || die "--python-version must look like 3.11, got '$PY_VERSION'"
if [[ -z $VERSION ]]; then
  case "$ACCEL" in
    v2-*|v3-*|v4-*) VERSION=tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    *) die "no known TPU runtime for --accelerator $ACCEL; pass --version RUNTIME" ;;
  esac
fi
require "$WORKDIR" --workdir
[[ $WORKDIR == gs://?* ]] || die "--workdir must be a gs:// path (every worker writes checkpoints there), got '$WORKDIR'"
if [[ -z $REPO ]]; then
  REPO=$(git -C "$REPO_ROOT" remote get-url origin 2> /dev/null) \
    || die "missing required option --repo (this checkout has no 'origin' remote)"
fi
[[ -n $RUN_ID ]] || RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)
[[ $RUN_ID =~ ^[A-Za-z0-9._-]+$ ]] || die "--run-id may use letters, digits, . _ - only, got '$RUN_ID'"
[[ -n $LOG_DIR ]] || LOG_DIR="tpu-logs/$NAME"

SCOPE=("--zone=$ZONE")
[[ -z $PROJECT ]] || SCOPE+=("--project=$PROJECT")
TPU=(gcloud compute tpus tpu-vm)

# 1. create or reuse the slice
DESCRIBE=("${TPU[@]}" describe "$NAME" "${SCOPE[@]}" "--format=value(acceleratorType)")
if (( QUEUED )); then
  QR=(gcloud compute tpus queued-resources)
  CREATE=("${QR[@]}" create "$NAME" "${SCOPE[@]}" "--node-id=$NAME" "--accelerator-type=$ACCEL"
          "--runtime-version=$VERSION")
  (( SPOT )) && CREATE+=(--spot)
  QSTATE=("${QR[@]}" describe "$NAME" "${SCOPE[@]}" "--format=value(state.state)")
else
  CREATE=("${TPU[@]}" create "$NAME" "${SCOPE[@]}" "--accelerator-type=$ACCEL" "--version=$VERSION")
  (( SPOT )) && CREATE+=(--spot)
fi

wait_active() {  # poll the queued resource until ACTIVE; stop on a state it cannot leave
  local state="" polls=0
  while :; do
    state=$("${QSTATE[@]}") || die "could not describe queued resource $NAME"
    case "$state" in
      ACTIVE) echo "${PROG}: queued resource $NAME is ACTIVE" >&2; return 0 ;;
      FAILED|SUSPENDED|SUSPENDING|DELETING)
        die "queued resource $NAME is $state; see \`$(qcmd "${QR[@]}" describe "$NAME" "${SCOPE[@]}")\`" ;;
    esac
    (( polls++ % 10 )) || echo "${PROG}: queued resource $NAME is ${state:-not listed yet}; waiting" >&2
    sleep "${UNCLIP_QUEUED_POLL_S:-30}"
  done
}

if (( DRY_RUN )); then
  run "${DESCRIBE[@]}"
  echo "# only when the describe above finds no TPU named $NAME:"
  run "${CREATE[@]}"
  if (( QUEUED )); then
    echo "# then, every 30 s until it prints ACTIVE:"
    run "${QSTATE[@]}"
  fi
else
  show "$(qcmd "${DESCRIBE[@]}")"
  if EXISTING=$("${DESCRIBE[@]}" 2> /dev/null) && [[ -n $EXISTING ]]; then
    EXISTING=${EXISTING##*/}
    [[ $EXISTING == "$ACCEL" ]] \
      || die "TPU $NAME exists with accelerator $EXISTING, not $ACCEL; pass --accelerator $EXISTING or another --name"
    echo "${PROG}: reusing TPU $NAME ($EXISTING)" >&2
  else
    run "${CREATE[@]}"
    (( ! QUEUED )) || wait_active
  fi
fi

# 2. install on every worker
CHECKOUT='"$HOME/unclip-jax"'
if (( ! SKIP_INSTALL )); then
  INSTALL="set -euo pipefail; [ -d $CHECKOUT/.git ] || git clone --quiet $(q "$REPO") $CHECKOUT; "
  INSTALL+="cd $CHECKOUT; git fetch --quiet origin $(q "$REF"); git checkout --quiet --force FETCH_HEAD; "
  if [[ -n $PYTHON ]]; then
    INSTALL+="$(q "$PYTHON") -m pip install --quiet -e .\\[tpu\\]"
  else
    INSTALL+='export PATH="$HOME/.local/bin:$PATH"; '
    INSTALL+='command -v uv > /dev/null || python3 -m pip install --quiet --user uv; '
    INSTALL+="uv venv --quiet --allow-existing --python $(q "$PY_VERSION") \"$VENV\"; "
    INSTALL+="uv pip install --quiet --python \"$VENV/bin/python\" -e .\\[tpu\\]"
  fi
  run "${TPU[@]}" ssh "$NAME" "${SCOPE[@]}" --worker=all "--command=$INSTALL"
fi

# 3. train on every worker
TRAIN=(env UNCLIP_AUTO_DISTRIBUTED=1 "${PYTHON:-__VENV_PYTHON__}" -m unclip_jax.cli train --config "$CONFIG" --workdir "$WORKDIR" "${OVERRIDES[@]}")
WORKER='W=${TPU_WORKER_ID:-$(curl -sf --max-time 5 -H Metadata-Flavor:Google '
WORKER+='http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)}'
REMOTE="set -uo pipefail; mkdir -p \"\$HOME/unclip-logs\"; cd $CHECKOUT; $WORKER; "
REMOTE+="LOG=\"\$HOME/unclip-logs/$RUN_ID-worker\$W.log\"; "
TRAIN_CMD=$(qcmd "${TRAIN[@]}")
TRAIN_CMD=${TRAIN_CMD/__VENV_PYTHON__/\"$VENV/bin/python\"}   # expanded on the worker
if (( DETACH )); then
  REMOTE+="nohup $TRAIN_CMD > \"\$LOG\" 2>&1 < /dev/null & echo \"worker \$W: started, log \$LOG\""
else
  REMOTE+="$TRAIN_CMD 2>&1 < /dev/null | tee \"\$LOG\""
fi
FETCH=("${TPU[@]}" scp "${SCOPE[@]}" --worker=all "$NAME:unclip-logs/$RUN_ID-worker*.log" "$LOG_DIR/")
if (( DETACH )); then
  run "${TPU[@]}" ssh "$NAME" "${SCOPE[@]}" --worker=all "--command=$REMOTE"
  echo "${PROG}: training started in the background; fetch the logs with:" >&2
  echo "  mkdir -p $(q "$LOG_DIR") && $(qcmd "${FETCH[@]}")" >&2
  exit 0
fi
STATUS=0
run "${TPU[@]}" ssh "$NAME" "${SCOPE[@]}" --worker=all "--command=$REMOTE" || STATUS=$?

# 4. fetch every worker's log
run mkdir -p "$LOG_DIR"
run "${FETCH[@]}" || echo "${PROG}: could not fetch all worker logs" >&2
(( STATUS == 0 )) || echo "${PROG}: training failed (exit $STATUS); worker logs in $LOG_DIR" >&2
exit "$STATUS"

#!/usr/bin/env bash
# Training on a Cloud TPU VM slice: create or reuse it, install on every worker, train on all.
set -euo pipefail
PROG=tpu_pod.sh
. "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_pod.sh --name NAME --zone ZONE --accelerator TYPE --config FILE[:ARG]
                         --workdir gs://BUCKET/PATH [--version RUNTIME] [--project PROJECT]
                         [--repo GIT_URL] [--ref REF] [--python PY] [--spot]
                         [--skip-install] [--detach] [--run-id ID] [--log-dir DIR]
                         [--config.KEY=VALUE ...] [--dry-run]

1. `gcloud compute tpus tpu-vm describe NAME`; if the slice does not exist,
   `gcloud compute tpus tpu-vm create NAME --accelerator-type TYPE --version RUNTIME`
   (an existing slice must have the same accelerator type).
2. Install on every worker (`ssh --worker=all`): clone GIT_URL into ~/unclip-jax (or fetch
   into the existing clone), check out REF, `pip install -e '.[tpu]'`. The code comes from git,
   so push REF first; --skip-install reuses what the workers have.
3. Train on every worker (`ssh --worker=all`) with UNCLIP_AUTO_DISTRIBUTED=1: each process
   calls jax.distributed.initialize() without arguments and JAX finds the pod by itself.
   Worker W logs to ~/unclip-logs/RUN_ID-workerW.log (also streamed to this terminal).
   Checkpoints go to the gs:// workdir, which all workers share.
4. Copy every worker's log to LOG_DIR (`scp --worker=all`) and exit with training's status.
   With --detach, step 3 starts training in the background (nohup) and returns at once;
   fetch the logs later with the scp command that the script prints.
The remote commands are bash (the TPU VM images' login shell).

  --name NAME          TPU VM name                  --zone ZONE    e.g. us-central2-b
  --accelerator TYPE   e.g. v4-32, v5litepod-16     --project P    GCP project (default: gcloud's)
  --version RUNTIME    TPU software version (default tpu-ubuntu2204-base)
  --config FILE[:ARG]  config for `unclip-jax train` (relative to the repository root)
  --workdir gs://...   training workdir on GCS (required to be gs://)
  --repo GIT_URL       repository the workers clone (default: this checkout's `origin`)
  --ref REF            branch, tag or commit to check out (default main)
  --python PY          Python on the workers (default python3)
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

NAME="" ZONE="" ACCEL="" VERSION=tpu-ubuntu2204-base PROJECT="" CONFIG="" WORKDIR="" REPO="" REF=main
PYTHON=python3 SPOT=0 SKIP_INSTALL=0 DETACH=0 RUN_ID="" LOG_DIR=""
OVERRIDES=()
while (( $# )); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --spot) SPOT=1; shift ;;
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
CREATE=("${TPU[@]}" create "$NAME" "${SCOPE[@]}" "--accelerator-type=$ACCEL" "--version=$VERSION")
(( SPOT )) && CREATE+=(--spot)
if (( DRY_RUN )); then
  run "${DESCRIBE[@]}"
  echo "# only when the describe above finds no TPU named $NAME:"
  run "${CREATE[@]}"
else
  show "$(qcmd "${DESCRIBE[@]}")"
  if EXISTING=$("${DESCRIBE[@]}" 2> /dev/null) && [[ -n $EXISTING ]]; then
    EXISTING=${EXISTING##*/}
    [[ $EXISTING == "$ACCEL" ]] \
      || die "TPU $NAME exists with accelerator $EXISTING, not $ACCEL; pass --accelerator $EXISTING or another --name"
    echo "${PROG}: reusing TPU $NAME ($EXISTING)" >&2
  else
    run "${CREATE[@]}"
  fi
fi

# 2. install on every worker
CHECKOUT='"$HOME/unclip-jax"'
if (( ! SKIP_INSTALL )); then
  INSTALL="set -euo pipefail; [ -d $CHECKOUT/.git ] || git clone --quiet $(q "$REPO") $CHECKOUT; "
  INSTALL+="cd $CHECKOUT; git fetch --quiet origin $(q "$REF"); git checkout --quiet --force FETCH_HEAD; "
  INSTALL+="$(q "$PYTHON") -m pip install --quiet -e .\\[tpu\\]"
  run "${TPU[@]}" ssh "$NAME" "${SCOPE[@]}" --worker=all "--command=$INSTALL"
fi

# 3. train on every worker
TRAIN=(env UNCLIP_AUTO_DISTRIBUTED=1 "$PYTHON" -m unclip_jax.cli train --config "$CONFIG" --workdir "$WORKDIR" "${OVERRIDES[@]}")
WORKER='W=${TPU_WORKER_ID:-$(curl -sf --max-time 5 -H Metadata-Flavor:Google '
WORKER+='http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)}'
REMOTE="set -uo pipefail; mkdir -p \"\$HOME/unclip-logs\"; cd $CHECKOUT; $WORKER; "
REMOTE+="LOG=\"\$HOME/unclip-logs/$RUN_ID-worker\$W.log\"; "
if (( DETACH )); then
  REMOTE+="nohup $(qcmd "${TRAIN[@]}") > \"\$LOG\" 2>&1 < /dev/null & echo \"worker \$W: started, log \$LOG\""
else
  REMOTE+="$(qcmd "${TRAIN[@]}") 2>&1 < /dev/null | tee \"\$LOG\""
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

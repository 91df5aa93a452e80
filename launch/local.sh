#!/usr/bin/env bash
# Multi-process training on one machine: N processes on localhost, CPU devices, gloo collectives.
set -euo pipefail
PROG=local.sh
. "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

usage() {
  cat <<'USAGE'
Usage: launch/local.sh -n N --workdir DIR (--config NAME|FILE[:ARG] | --cmd 'COMMAND')
                       [--devices-per-process D] [--port PORT] [--python PY]
                       [--config.KEY=VALUE ...] [--dry-run] [-- EXTRA TRAIN ARGS]

Starts N processes on this machine (each in its own session via setsid, so a failure
can stop a whole process tree) that form one JAX job, the way a pod's hosts do:
process i gets UNCLIP_COORDINATOR=127.0.0.1:PORT, UNCLIP_NUM_PROCESSES=N,
UNCLIP_PROCESS_ID=i, UNCLIP_CPU_COLLECTIVES=gloo, JAX_PLATFORMS=cpu and
XLA_FLAGS=--xla_force_host_platform_device_count=D (so the job has N*D CPU devices).
Each runs `PY -m unclip_jax.cli train --config FILE --workdir DIR [overrides]`, or with
--cmd, `bash -c COMMAND` (e.g. --cmd 'python3 -m unclip_jax.distributed', a collective check).
Commands run in the current directory, so relative paths (--config, --workdir,
--config.data.data_dir=..., ...) mean the same to the processes as to this script.
Process i logs to DIR/logs/process-i.log. The script waits for all; when one fails it
stops the others, shows the failed log's tail and exits 1.

  -n, --num-processes N   number of processes (positive integer)
  --workdir DIR           training workdir (made absolute); logs go to DIR/logs
  --config NAME|FILE[:ARG] preset (shapes:decoder) or config file for `unclip-jax train`
  --cmd COMMAND           run COMMAND (bash -c) in each process instead of training
  --devices-per-process D simulated CPU devices per process (default 1)
  --port PORT             coordinator port on 127.0.0.1 (default 23456)
  --python PY             Python interpreter (default python3)
  --config.KEY=VALUE      config override, passed through to train
  --dry-run               print the commands (one per line, prefixed `+ `), run nothing
  -h, --help              this help
USAGE
}

NUM="" WORKDIR="" CONFIG="" CMD="" DEVICES=1 PORT=23456 PYTHON=python3
OVERRIDES=()
while (( $# )); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -n|--num-processes|--num-processes=*) take NUM "$@"; shift "$TAKEN" ;;
    --workdir|--workdir=*) take WORKDIR "$@"; shift "$TAKEN" ;;
    --config|--config=*) take CONFIG "$@"; shift "$TAKEN" ;;
    --cmd|--cmd=*) take CMD "$@"; shift "$TAKEN" ;;
    --devices-per-process|--devices-per-process=*) take DEVICES "$@"; shift "$TAKEN" ;;
    --port|--port=*) take PORT "$@"; shift "$TAKEN" ;;
    --python|--python=*) take PYTHON "$@"; shift "$TAKEN" ;;
    --config.*) check_override "$1"; OVERRIDES+=("$1"); shift ;;
    --) shift; OVERRIDES+=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

require "$NUM" "-n/--num-processes"
check_positive_int "$NUM" "-n/--num-processes"
check_positive_int "$DEVICES" "--devices-per-process"
check_port "$PORT" "--port"
require "$WORKDIR" "--workdir"
[[ $WORKDIR != gs://* ]] || die "--workdir must be a local directory for local.sh, got $WORKDIR"
if [[ -n $CMD ]]; then
  [[ -z $CONFIG && ${#OVERRIDES[@]} -eq 0 ]] || die "--cmd replaces training: drop --config and overrides"
else
  require "$CONFIG" "--config (or --cmd)"
  check_config "$CONFIG"
fi

if (( ! DRY_RUN )); then
  (( BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] >= 501 )) || die "needs bash >= 5.1 (wait -n -p), this is $BASH_VERSION"
  command -v setsid > /dev/null || die "setsid (util-linux) not found; install util-linux"
fi

WORKDIR=$(absolute "$WORKDIR")
[[ -z $CONFIG ]] || CONFIG=$(config_for_workers "$CONFIG")
LOGDIR="$WORKDIR/logs"
if [[ -n $CMD ]]; then
  PROGRAM=(bash -c "$CMD")
else
  PROGRAM=("$PYTHON" -m unclip_jax.cli train --config "$CONFIG" --workdir "$WORKDIR" "${OVERRIDES[@]}")
fi

run mkdir -p "$LOGDIR"

PIDS=()
stop_all() {  # terminate the process groups this script started (setsid: group id = pid)
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
}
trap 'stop_all; exit 130' INT TERM

for (( i = 0; i < NUM; i++ )); do
  ENV=(setsid env "UNCLIP_COORDINATOR=127.0.0.1:$PORT" "UNCLIP_NUM_PROCESSES=$NUM" "UNCLIP_PROCESS_ID=$i"
       "UNCLIP_CPU_COLLECTIVES=gloo" "JAX_PLATFORMS=cpu"
       "XLA_FLAGS=--xla_force_host_platform_device_count=$DEVICES")
  LOG="$LOGDIR/process-$i.log"
  show "$(qcmd "${ENV[@]}" "${PROGRAM[@]}") > $(q "$LOG") 2>&1 &"
  if (( ! DRY_RUN )); then
    "${ENV[@]}" "${PROGRAM[@]}" > "$LOG" 2>&1 < /dev/null &
    PIDS+=("$!")
  fi
done
(( DRY_RUN )) && exit 0

declare -A LIVE  # pid -> process index
for i in "${!PIDS[@]}"; do LIVE[${PIDS[$i]}]=$i; done
while (( ${#LIVE[@]} )); do
  FINISHED=""
  if wait -n -p FINISHED "${!LIVE[@]}"; then rc=0; else rc=$?; fi
  i=${LIVE[$FINISHED]}
  unset "LIVE[$FINISHED]"
  if (( rc != 0 )); then
    echo "${PROG}: process $i failed (exit $rc); stopping the others. Log: $LOGDIR/process-$i.log" >&2
    tail -n 20 "$LOGDIR/process-$i.log" | sed 's/^/    /' >&2
    stop_all
    wait 2>/dev/null || true
    exit 1
  fi
done
echo "${PROG}: all $NUM processes finished; logs in $LOGDIR" >&2

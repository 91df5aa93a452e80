#!/usr/bin/env bash
# Multi-node GPU training under SLURM: write an sbatch script and submit it.
set -euo pipefail
PROG=gpu_slurm.sh
. "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

usage() {
  cat <<'USAGE'
Usage: launch/gpu_slurm.sh --nodes N --gpus-per-node G --config NAME|FILE[:ARG] --workdir DIR
                           [--partition P] [--time T] [--account A] [--job-name NAME]
                           [--cpus-per-task C] [--mem M] [--exclusive] [--per-gpu] [--auto]
                           [--port PORT] [--python PY] [--setup 'COMMAND']
                           [--log-dir DIR] [--config.KEY=VALUE ...] [--dry-run]

Writes an sbatch script to LOG_DIR and submits it with `sbatch`. In the job, srun starts
one process per node (default; each process drives all G GPUs of its node) or, with
--per-gpu, one per GPU (`srun --gpus-per-task=1`: SLURM binds each task to its own GPU).
Every process gets
  UNCLIP_COORDINATOR   = first host of `scontrol show hostnames $SLURM_JOB_NODELIST`:PORT
  UNCLIP_NUM_PROCESSES = $SLURM_NTASKS
  UNCLIP_PROCESS_ID    = $SLURM_PROCID
which unclip_jax.distributed.initialize_from_env() hands to jax.distributed.initialize,
together with the GPUs the process drives (every GPU SLURM gives it). With --auto the job
exports UNCLIP_AUTO_DISTRIBUTED=1 instead and JAX reads SLURM's variables itself.
The job runs `PY -m unclip_jax.cli train --config FILE --workdir DIR [overrides]` in the
directory this script is run from, which must be on a filesystem the nodes share; relative
paths (--config, --workdir, --config.data.data_dir=..., ...) are relative to it.
Logs: LOG_DIR/NAME-JOBID.out (the batch script) and LOG_DIR/NAME-JOBID-procK.log (process K).

  --nodes N            nodes (positive integer)
  --gpus-per-node G    GPUs per node (positive integer)
  --config NAME|FILE[:ARG]  preset (shapes:decoder) or config file (relative to the repository root)
  --workdir DIR        training workdir (shared filesystem path or gs://)
  --partition P        SLURM partition          --time T       time limit, e.g. 24:00:00
  --account A          SLURM account            --job-name N   job name (default unclip-jax)
  --cpus-per-task C     CPU cores per process, for the input pipeline (sbatch and srun:
                       since SLURM 22.05 srun does not inherit it); e.g. 96 per node
  --mem M              memory per node, e.g. 0 (all of it) or 512G
  --exclusive          whole nodes only (no other jobs on them)
  --per-gpu            one process per GPU instead of one per node
  --auto               let JAX detect SLURM (UNCLIP_AUTO_DISTRIBUTED=1) instead of
                       exporting the coordinator, process count and id
  --port PORT          coordinator port (default 20000 + SLURM_JOB_ID % 20000)
  --python PY          Python on the nodes, e.g. /shared/venv/bin/python (default python3)
  --setup COMMAND      a line run in the job before srun, e.g. 'module load cuda/12'
  --log-dir DIR        where the sbatch script and logs go (default ./slurm-logs)
  --config.KEY=VALUE   config override, passed through to train
  --dry-run            print the sbatch script and the sbatch command; submit nothing
  -h, --help           this help
USAGE
}

NODES="" GPUS="" CONFIG="" WORKDIR="" PARTITION="" TIME="" ACCOUNT="" JOB_NAME=unclip-jax
PER_GPU=0 AUTO=0 CPUS="" MEM="" EXCLUSIVE=0 PORT="" PYTHON=python3 SETUP="" LOG_DIR=slurm-logs
OVERRIDES=()
while (( $# )); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --per-gpu) PER_GPU=1; shift ;;
    --auto) AUTO=1; shift ;;
    --exclusive) EXCLUSIVE=1; shift ;;
    --cpus-per-task|--cpus-per-task=*) take CPUS "$@"; shift "$TAKEN" ;;
    --mem|--mem=*) take MEM "$@"; shift "$TAKEN" ;;
    --nodes|--nodes=*) take NODES "$@"; shift "$TAKEN" ;;
    --gpus-per-node|--gpus-per-node=*) take GPUS "$@"; shift "$TAKEN" ;;
    --config|--config=*) take CONFIG "$@"; shift "$TAKEN" ;;
    --workdir|--workdir=*) take WORKDIR "$@"; shift "$TAKEN" ;;
    --partition|--partition=*) take PARTITION "$@"; shift "$TAKEN" ;;
    --time|--time=*) take TIME "$@"; shift "$TAKEN" ;;
    --account|--account=*) take ACCOUNT "$@"; shift "$TAKEN" ;;
    --job-name|--job-name=*) take JOB_NAME "$@"; shift "$TAKEN" ;;
    --port|--port=*) take PORT "$@"; shift "$TAKEN" ;;
    --python|--python=*) take PYTHON "$@"; shift "$TAKEN" ;;
    --setup|--setup=*) take SETUP "$@"; shift "$TAKEN" ;;
    --log-dir|--log-dir=*) take LOG_DIR "$@"; shift "$TAKEN" ;;
    --config.*) check_override "$1"; OVERRIDES+=("$1"); shift ;;
    --) shift; OVERRIDES+=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

require "$NODES" --nodes
check_positive_int "$NODES" --nodes
require "$GPUS" --gpus-per-node
check_positive_int "$GPUS" --gpus-per-node
require "$CONFIG" --config
check_config "$CONFIG"
require "$WORKDIR" --workdir
[[ -z $TIME || $TIME =~ ^([0-9]+-)?[0-9]+(:[0-9]{1,2}){0,2}$ ]] \
  || die "--time must look like MINUTES, HH:MM:SS or D-HH:MM:SS, got '$TIME'"
[[ -z $PORT ]] || check_port "$PORT" --port
[[ -z $CPUS ]] || check_positive_int "$CPUS" --cpus-per-task
[[ -z $MEM || $MEM =~ ^[0-9]+[KMGT]?$ ]] || die "--mem must look like 0, 512G or 64000M, got '$MEM'"
[[ $JOB_NAME =~ ^[A-Za-z0-9._-]+$ ]] || die "--job-name may use letters, digits, . _ - only, got '$JOB_NAME'"
[[ $LOG_DIR == /* ]] || LOG_DIR="$PWD/$LOG_DIR"
[[ $LOG_DIR != *[[:space:]]* ]] || die "--log-dir must not contain spaces (#SBATCH lines cannot quote them)"
WORKDIR=$(absolute "$WORKDIR")
CONFIG=$(config_for_workers "$CONFIG")
RUN_DIR=$PWD

TASKS_PER_NODE=1
(( PER_GPU )) && TASKS_PER_NODE=$GPUS
PORT_EXPR=${PORT:-'$((20000 + SLURM_JOB_ID % 20000))'}
if (( AUTO )); then
  TASK_SETUP='export UNCLIP_AUTO_DISTRIBUTED=1'
else
  TASK_SETUP='export UNCLIP_PROCESS_ID="$SLURM_PROCID"'
fi
SRUN=(srun --kill-on-bad-exit=1)
(( PER_GPU )) && SRUN+=(--gpus-per-task=1)
[[ -z $CPUS ]] || SRUN+=("--cpus-per-task=$CPUS")
SRUN+=("--output=$LOG_DIR/%x-%j-proc%t.log")
TRAIN=("$PYTHON" -m unclip_jax.cli train --config "$CONFIG" --workdir "$WORKDIR" "${OVERRIDES[@]}")

sbatch_script() {  # the batch script, on stdout
  echo '#!/usr/bin/env bash'
  echo "#SBATCH --job-name=$JOB_NAME"
  echo "#SBATCH --nodes=$NODES"
  echo "#SBATCH --ntasks-per-node=$TASKS_PER_NODE"
  echo "#SBATCH --gpus-per-node=$GPUS"
  [[ -z $PARTITION ]] || echo "#SBATCH --partition=$PARTITION"
  [[ -z $TIME ]] || echo "#SBATCH --time=$TIME"
  [[ -z $ACCOUNT ]] || echo "#SBATCH --account=$ACCOUNT"
  [[ -z $CPUS ]] || echo "#SBATCH --cpus-per-task=$CPUS"
  [[ -z $MEM ]] || echo "#SBATCH --mem=$MEM"
  (( ! EXCLUSIVE )) || echo "#SBATCH --exclusive"
  echo "#SBATCH --output=$LOG_DIR/%x-%j.out"
  echo 'set -euo pipefail'
  echo "cd $(q "$RUN_DIR")"
  [[ -z $SETUP ]] || echo "$SETUP"
  if (( AUTO )); then
    [[ -z $PORT ]] || echo "export JAX_COORDINATOR_PORT=$PORT"
    echo 'echo "JAX detects the SLURM job: ${SLURM_NTASKS:-?} processes"'
  else
    echo "export UNCLIP_COORDINATOR=\"\$(scontrol show hostnames \"\$SLURM_JOB_NODELIST\" | head -n 1):$PORT_EXPR\""
    echo "export UNCLIP_NUM_PROCESSES=\"\${SLURM_NTASKS:-\$((SLURM_JOB_NUM_NODES * $TASKS_PER_NODE))}\""
    echo 'echo "coordinator $UNCLIP_COORDINATOR, $UNCLIP_NUM_PROCESSES processes"'
  fi
  echo "$(qcmd "${SRUN[@]}") bash -c $(q "$TASK_SETUP; exec \"\$@\"") bash $(qcmd "${TRAIN[@]}")"
}

SCRIPT="$LOG_DIR/$JOB_NAME-$(date +%Y%m%d-%H%M%S).sbatch"
if (( DRY_RUN )); then
  echo "# sbatch script $SCRIPT:"
  sbatch_script
  echo "# end of sbatch script"
else
  command -v sbatch > /dev/null || die "sbatch not found; run this on a SLURM login node"
  mkdir -p "$LOG_DIR"
  sbatch_script > "$SCRIPT"
  echo "${PROG}: wrote $SCRIPT" >&2
fi
run sbatch "$SCRIPT"

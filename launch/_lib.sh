# Shared helpers for the launch scripts (sourced, not run).
#
# Every command a script runs goes through `run`: it is printed as `+ <shell-quoted argv>`
# (on stdout with --dry-run, where nothing runs; on stderr otherwise, then run).

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN=0

die() {  # die MESSAGE: one-line error, exit status 2
  echo "${PROG}: error: $*" >&2
  exit 2
}

q() {  # q ARG: ARG quoted for a POSIX shell (bare when safe, else single quotes)
  if [[ -n $1 && $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    local s=${1//\'/\'\"\'\"\'}
    printf "'%s'" "$s"
  fi
}

qcmd() {  # qcmd ARG...: the quoted command line
  local out="" a
  for a in "$@"; do out+="${out:+ }$(q "$a")"; done
  printf '%s' "$out"
}

show() {  # show LINE: print a planned command line
  if (( DRY_RUN )); then echo "+ $*"; else echo "+ $*" >&2; fi
}

run() {  # run ARG...: print the command; run it unless --dry-run
  show "$(qcmd "$@")"
  (( DRY_RUN )) || "$@"
}

take() {  # take VAR "$@": value of option $2 (`--opt=v` or `--opt v`) into VAR; sets TAKEN
  local var=$1 opt=$2
  if [[ $opt == *=* ]]; then
    printf -v "$var" '%s' "${opt#*=}"
    TAKEN=1
  else
    [[ $# -ge 3 && -n $3 ]] || die "option $opt needs a value"
    printf -v "$var" '%s' "$3"
    TAKEN=2
  fi
}

require() {  # require VALUE OPTION: error when a required option is missing
  [[ -n $1 ]] || die "missing required option $2 (see --help)"
}

check_positive_int() {  # check_positive_int VALUE OPTION
  [[ $1 =~ ^[1-9][0-9]*$ ]] || die "$2 must be a positive integer, got '$1'"
}

check_port() {  # check_port VALUE OPTION
  [[ $1 =~ ^[1-9][0-9]*$ ]] && (( $1 < 65536 )) || die "$2 must be a port number 1..65535, got '$1'"
}

check_override() {  # check_override ARG: --config.KEY=VALUE
  [[ $1 == --config.?*=* ]] || die "override $1 needs a value: write ${1%%=*}=VALUE"
}

is_preset() {  # is_preset SPEC: NAME[:ARG] names a preset (shapes, paper, karlo), not a file
  local name=${1%%:*}
  [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ && ! -f $name ]]
}

check_config() {  # check_config SPEC: a preset NAME[:ARG], or FILE[:ARG] that exists (relative: $PWD)
  is_preset "$1" && return 0  # by name wherever train runs (unclip_jax.cli.config_args)
  local file=${1%%:*}
  [[ $file == /* ]] || file="$PWD/$file"
  [[ -f $file ]] || die "--config file not found: ${1%%:*} (relative paths are relative to $PWD)"
}

config_for_workers() {  # config_for_workers SPEC: a preset unchanged, a file path made absolute
  if is_preset "$1"; then printf '%s' "$1"; else absolute "$1"; fi
}

absolute() {  # absolute PATH: PATH made absolute against the current directory (URLs kept)
  if [[ $1 == /* || $1 == *://* ]]; then printf '%s' "$1"; else printf '%s' "$PWD/$1"; fi
}

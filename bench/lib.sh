# shellcheck shell=bash disable=SC2034  # TOKEND_PID etc. are for the caller
# Shared by bench/token_bench.sh and bench/cli_bench.sh; sourced, not run.
# Expects: set -euo pipefail in the caller, $bench_dir set to this folder.
# shellcheck disable=SC2154  # bench_dir comes from the caller

log() { printf '%s\n' "$*" >&2; }
die() { printf '%s: error: %s\n' "${0##*/}" "$*" >&2; exit 1; }

_apt_updated=0
# apt_install PKG... — installs with apt-get (root, or sudo if available).
apt_install() {
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "need root (or sudo) to install: $*"
    sudo=(sudo)
  fi
  if [[ $_apt_updated -eq 0 ]]; then
    log "apt-get update"
    "${sudo[@]}" apt-get update -qq >&2 || die "apt-get update failed"
    _apt_updated=1
  fi
  log "installing: $*"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@" >&2
}

# need_cmd COMMAND PACKAGE... — installs the first package that installs, if
# COMMAND is not found (on PATH or in /usr/sbin, where nginx lives).
need_cmd() {
  local cmd=$1; shift
  have_cmd "$cmd" && return 0
  local pkg
  for pkg in "$@"; do
    apt_install "$pkg" && have_cmd "$cmd" && return 0
  done
  die "$cmd not found and could not install any of: $*"
}

have_cmd() { command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 ]]; }
cmd_path() { command -v "$1" 2>/dev/null || echo "/usr/sbin/$1"; }

# need_bin PATH WHAT HOWTO — dies unless PATH is an executable file.
need_bin() {
  [[ -x $1 && -f $1 ]] || die "$2 not found at $1 ($3)"
}

# Random hex string of 2*N characters (no SIGPIPE-prone pipelines).
random_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

# kill_wait PID [SECONDS] — SIGTERM, wait up to SECONDS (default 5) polling,
# then SIGKILL. Only for processes this script started.
kill_wait() {
  local pid=$1 limit=${2:-5} i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < limit * 100; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.01
  done
  kill -KILL "$pid" 2>/dev/null || true
}

# tokend_env DIR — prints `env -i ...` arguments for a private XDG tree in DIR.
# Nothing from the caller's environment (TOKEND_*, CREDENTIALS_DIRECTORY,
# NOTIFY_SOCKET, LISTEN_FDS) leaks into the daemon.
tokend_env() {
  local dir=$1
  printf '%s\n' env -i "PATH=$PATH" "HOME=$dir/home" "XDG_RUNTIME_DIR=$dir/run" \
    "XDG_DATA_HOME=$dir/home/.local/share" "XDG_CONFIG_HOME=$dir/home/.config" "NO_COLOR=1"
}

# make_xdg DIR — creates the private XDG tree (0700).
make_xdg() {
  local dir=$1
  (umask 077 && mkdir -p "$dir/home" "$dir/run" "$dir/home/.local/share" "$dir/home/.config")
}

# start_tokend BIN DIR SOCKET DEADLINE [ARGS...] — launches tokend and waits
# (1 ms polling, monotonic clock) until SOCKET answers GET /v1/health.
# Sets TOKEND_PID and TOKEND_READY_MS. Dies with the log tail otherwise.
start_tokend() {
  local bin=$1 dir=$2 sock=$3 deadline=$4; shift 4
  local envargs out
  mapfile -t envargs < <(tokend_env "$dir")
  out=$(python3 "$bench_dir/benchutil.py" start-tokend --log "$dir/tokend.log" \
          --deadline "$deadline" -- "${envargs[@]}" "$bin" --socket "$sock" "$@") \
    || die "tokend did not become ready (see above; binary $bin; --keep keeps its log)"
  read -r TOKEND_PID TOKEND_READY_MS <<<"$out"
}

# put_profile SOCKET NAME TOKEN — creates a PAT profile; dies with the answer
# if the daemon does not accept it.
put_profile() {
  local sock=$1 name=$2 token=$3 code body
  body=$(mktemp)
  code=$(curl -sS --max-time 10 --unix-socket "$sock" -o "$body" -w '%{http_code}' \
           -X PUT "http://tokend/v1/profiles/$name" -H 'Content-Type: application/json' \
           -d "{\"kind\":\"pat\",\"site\":\"https://jira.example.com\",\"token\":\"$token\"}") \
    || { rm -f "$body"; die "PUT /v1/profiles/$name on $sock failed (curl)"; }
  if [[ $code != 2?? ]]; then
    local text; text=$(head -c 500 "$body"); rm -f "$body"
    die "PUT /v1/profiles/$name answered $code: $text"
  fi
  rm -f "$body"
}

# rss_kb PID — VmRSS of PID in kB.
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

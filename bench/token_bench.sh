#!/usr/bin/env bash
# Token endpoint throughput and latency: tokend's GET /v1/profiles/bench/token
# versus nginx returning a fixed ~300-byte JSON body, both on Unix sockets,
# measured with h2load and with our loadgen, at 1, 10 and 64 connections, in
# one run. See bench/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bench/token_bench.sh [options]

  --tokend PATH        tokend binary (default build/daemon/tokend)
  --loadgen PATH       loadgen binary (default build/bench/loadgen)
  --duration S         measured seconds per run (default 10)
  --warmup S           warm-up seconds before each measurement (default 1)
  --quick              smoke run: --duration 2 --warmup 0.5
  --target T           both (default) | nginx | tokend  (nginx-only / tokend-only also accepted)
  --connections "L"    connection counts (default "1 10 64")
  --tools "L"          h2load and/or loadgen (default "h2load loadgen")
  --rounds N           repeat every run N times, tokend and nginx alternating,
                       and report each ratio's median over the rounds with its
                       range (default 1; single runs move by 10-20% here)
  --pin                servers on CPU 0, the client on CPU 1 (taskset): on a
                       2-core machine this stops the scheduler from putting the
                       client on the server's core now and then, which moves
                       single runs by tens of percent (see bench/README.md)
  --h2load-latency     also take h2load's p50/p99 from its --log-file (costs h2load
                       ~15% throughput: one write() per request)
  --ready-timeout S    how long tokend may take to answer /v1/health (default 10)
  --tokend-arg ARG     extra argument for tokend (repeatable)
  --json FILE          also write all results as JSON to FILE
  --keep               keep the temp dir (logs, configs) instead of removing it
  -h, --help           this help

Installs h2load (nghttp2-client), nginx (nginx-light or nginx), curl and
python3 with apt-get when missing. Only Unix sockets in a private temp dir
are used; every run stops by itself after warmup + duration.
EOF
}

bench_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$bench_dir/.." && pwd)
# shellcheck source=bench/lib.sh
source "$bench_dir/lib.sh"

tokend=$repo/build/daemon/tokend
loadgen=$repo/build/bench/loadgen
duration=10
warmup=1
target=both
conns_list="1 10 64"
tools="h2load loadgen"
h2load_latency=0
pin=0
rounds=1
ready_timeout=10
json_out=""
keep=0
tokend_args=()

while [[ $# -gt 0 ]]; do
  case $1 in
    --tokend) tokend=$2; shift 2 ;;
    --loadgen) loadgen=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --quick) duration=2; warmup=0.5; shift ;;
    --target) target=$2; shift 2 ;;
    --connections) conns_list=$2; shift 2 ;;
    --tools) tools=$2; shift 2 ;;
    --h2load-latency) h2load_latency=1; shift ;;
    --pin) pin=1; shift ;;
    --rounds) rounds=$2; shift 2 ;;
    --ready-timeout) ready_timeout=$2; shift 2 ;;
    --tokend-arg) tokend_args+=("$2"); shift 2 ;;
    --json) json_out=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done

is_number() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }
is_number "$duration" || die "--duration must be a number of seconds: $duration"
is_number "$warmup" || die "--warmup must be a number of seconds: $warmup"
is_number "$ready_timeout" || die "--ready-timeout must be a number of seconds: $ready_timeout"
awk -v d="$duration" 'BEGIN { exit !(d > 0 && d <= 3600) }' || die "--duration must be in (0, 3600]"
[[ $rounds =~ ^[0-9]+$ && $rounds -ge 1 && $rounds -le 100 ]] || die "--rounds: 1 to 100"
for c in $conns_list; do
  [[ $c =~ ^[0-9]+$ && $c -ge 1 && $c -le 1000 ]] || die "--connections: bad count $c"
done
case $target in
  both) targets="tokend nginx" ;;
  nginx|nginx-only) targets="nginx" ;;
  tokend|tokend-only) targets="tokend" ;;
  *) die "--target must be both, nginx or tokend" ;;
esac
for t in $tools; do
  [[ $t == h2load || $t == loadgen ]] || die "--tools: unknown tool $t"
done
[[ -z $json_out ]] || json_out=$(realpath -m "$json_out")

ms() { awk -v s="$1" 'BEGIN { printf "%d", s * 1000 + 0.5 }'; }

# --- what we need --------------------------------------------------------
need_cmd curl curl
need_cmd python3 python3
[[ " $tools " == *" h2load "* ]] && need_cmd h2load nghttp2-client
[[ " $targets " == *" nginx "* ]] && need_cmd nginx nginx-light nginx
if [[ " $tools " == *" loadgen "* ]]; then
  need_bin "$loadgen" loadgen "build it with: cmake --build build --target loadgen, or pass --loadgen PATH"
fi
if [[ " $targets " == *" tokend "* ]]; then
  need_bin "$tokend" tokend "build it with: cmake --build build --target tokend, or pass --tokend PATH"
fi

client_pin=()
if [[ $pin -eq 1 ]]; then
  need_cmd taskset util-linux
  [[ $(nproc) -ge 2 ]] || die "--pin needs at least 2 CPUs"
  client_pin=(taskset -c 1)
fi
# pin_server PID: the process, its threads and its children (nginx's worker) on CPU 0.
pin_server() {
  [[ $pin -eq 1 ]] || return 0
  local p
  for p in "$1" $(pgrep -P "$1" || true); do taskset -a -pc 0 "$p" >/dev/null; done
}

# --- temp dir and cleanup ------------------------------------------------
tmp=$(mktemp -d /tmp/tokend-bench.XXXXXX)
chmod 0700 "$tmp"
NGINX_PID=""
TOKEND_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -n $NGINX_PID ]] && kill_wait "$NGINX_PID"
  [[ -n $TOKEND_PID ]] && kill_wait "$TOKEND_PID"
  if [[ $keep -eq 1 ]]; then
    log "kept $tmp"
  else
    rm -rf "$tmp"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

token_path=/v1/profiles/bench/token

# --- nginx ---------------------------------------------------------------
start_nginx() {
  local d=$tmp/nginx nginx_bin body opt dirs=""
  nginx_bin=$(cmd_path nginx)
  (umask 077 && mkdir -p "$d/tmp")
  # A token-shaped answer of 300 bytes (no single quotes: it sits in '...').
  body='{"access_token":"'$(random_hex 20)'","token_type":"Bearer","expires_at":"2030-01-01T00:00:00Z","expires_in":3600,"profile":"bench","kind":"pat","scope":"read:jira-work write:jira-work read:confluence-content.all offline_access","state":"valid","site":"https://jira.example.com"}'
  # Temp paths go to the temp dir, for the modules this nginx was built with
  # (the compiled-in /var/lib/nginx may not be writable).
  for opt in client_body proxy fastcgi uwsgi scgi; do
    if [[ $opt == client_body ]] || ! "$nginx_bin" -V 2>&1 | grep -q -- "--without-http_${opt}_module"; then
      dirs+="  ${opt}_temp_path $d/tmp/$opt;"$'\n'
    fi
  done
  cat >"$d/nginx.conf" <<EOF
# Private config for bench/token_bench.sh: one process, no system files.
daemon off;
master_process off;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
$dirs
  keepalive_requests 1000000000;
  keepalive_timeout 300s;
  server {
    listen unix:$d/nginx.sock;
    location / {
      default_type application/json;
      return 200 '$body';
    }
  }
}
EOF
  NGINX_SOCK=$d/nginx.sock
  NGINX_BODY_BYTES=${#body}
  "$nginx_bin" -p "$d/" -e "$d/error.log" -c "$d/nginx.conf" >"$d/stdout.log" 2>&1 &
  NGINX_PID=$!
  if ! python3 "$bench_dir/benchutil.py" wait-http "$NGINX_SOCK" "$token_path" --deadline 10; then
    cat "$d/stdout.log" "$d/error.log" >&2 2>/dev/null || true
    die "nginx did not start (config $d/nginx.conf)"
  fi
  pin_server "$NGINX_PID"
  NGINX_VERSION=$("$nginx_bin" -v 2>&1 | sed 's/^nginx version: //')
}

# --- tokend --------------------------------------------------------------
start_bench_tokend() {
  local d=$tmp/tokend token code
  make_xdg "$d"
  TOKEND_SOCK=$d/run/tokend/tokend.sock
  log "starting tokend ($tokend), waiting up to ${ready_timeout}s for GET /v1/health on $TOKEND_SOCK"
  start_tokend "$tokend" "$d" "$TOKEND_SOCK" "$ready_timeout" "${tokend_args[@]}"
  log "tokend ready after ${TOKEND_READY_MS} ms (pid $TOKEND_PID)"
  pin_server "$TOKEND_PID"
  token=$(random_hex 20)
  put_profile "$TOKEND_SOCK" bench "$token"
  # The endpoint under test must answer 200 with our token before we load it.
  code=$(curl -sS --max-time 10 --unix-socket "$TOKEND_SOCK" -o "$d/token.out" -w '%{http_code}' \
           "http://tokend$token_path") || die "GET $token_path on tokend failed (curl)"
  [[ $code == 200 ]] || die "GET $token_path on tokend answered $code: $(head -c 500 "$d/token.out")"
  grep -q "$token" "$d/token.out" || die "GET $token_path on tokend did not return the token it was given"
  TOKEND_RESPONSE_BYTES=$(wc -c <"$d/token.out")
}

NGINX_VERSION=""
NGINX_BODY_BYTES=0
TOKEND_RESPONSE_BYTES=0
TOKEND_READY_MS=""
[[ " $targets " == *" nginx "* ]] && start_nginx
[[ " $targets " == *" tokend "* ]] && start_bench_tokend

sock_of() { if [[ $1 == tokend ]]; then echo "$TOKEND_SOCK"; else echo "$NGINX_SOCK"; fi; }

# --- runs ----------------------------------------------------------------
results=$tmp/results.jsonl
: >"$results"
dur_ms=$(ms "$duration")
warm_ms=$(ms "$warmup")
log "each run: ${warmup}s warm-up + ${duration}s measured; targets: $targets; tools: $tools; connections: $conns_list"

run_h2load() {  # TARGET CONNS
  local t=$1 c=$2 sock out lf=() logf=()
  sock=$(sock_of "$t")
  out=$tmp/h2load-$t-$c.txt
  if [[ $h2load_latency -eq 1 ]]; then
    logf=("$tmp/h2load-$t-$c.log")
    lf=(--log-file="${logf[0]}")
  fi
  # -t 1: one client thread, like loadgen; the server has the other core.
  "${client_pin[@]}" h2load --h1 -t 1 -B "unix:$sock" -c "$c" -D "${dur_ms}ms" --warm-up-time="${warm_ms}ms" \
    "${lf[@]}" "http://localhost$token_path" >"$out" 2>&1 \
    || { cat "$out" >&2; die "h2load against $t (c=$c) failed"; }
  python3 "$bench_dir/benchutil.py" row --tool h2load --target "$t" --connections "$c" \
    --round "$round" "$out" "${logf[@]}" >>"$results"
}

run_loadgen() {  # TARGET CONNS
  local t=$1 c=$2 sock out
  sock=$(sock_of "$t")
  out=$tmp/loadgen-$t-$c.json
  "${client_pin[@]}" "$loadgen" --socket "$sock" --path "$token_path" --connections "$c" \
    --duration "$duration" --warmup "$warmup" --json >"$out" \
    || die "loadgen against $t (c=$c) failed (no response at all?)"
  python3 "$bench_dir/benchutil.py" row --tool loadgen --target "$t" --connections "$c" \
    --round "$round" "$out" >>"$results"
}

for round in $(seq "$rounds"); do
  for c in $conns_list; do
    for tool in $tools; do
      for t in $targets; do
        log "  $t  $tool  c=$c  (round $round of $rounds)"
        "run_$tool" "$t" "$c"
      done
    done
  done
done

# --- report --------------------------------------------------------------
meta=$(python3 - "$duration" "$warmup" "$NGINX_VERSION" "$NGINX_BODY_BYTES" \
         "$TOKEND_RESPONSE_BYTES" "$TOKEND_READY_MS" "$targets" <<'EOF'
import json, os, platform, subprocess, sys, time
def cpu():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
def h2v():
    try:
        return subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return None
d, w, nv, nb, tb, ready, targets = sys.argv[1:]
print(json.dumps({
    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "kernel": platform.release(),
    "cpus": os.cpu_count(), "cpu": cpu(), "duration_s": float(d), "warmup_s": float(w),
    "targets": targets.split(), "nginx": nv or None, "nginx_body_bytes": int(nb),
    "tokend_response_body_bytes": int(tb), "tokend_ready_ms": float(ready) if ready else None,
    "h2load": h2v(),
}))
EOF
)
echo
python3 "$bench_dir/benchutil.py" report "$results" --meta "$meta" ${json_out:+--json "$json_out"}

#!/usr/bin/env bash
# Instructions per token request, tokend against nginx answering the same
# ~300-byte JSON, counted by callgrind (user space only) over a fixed load
# from loadgen. Unlike req/s, the count does not move with what else the
# machine is doing, so it can guide work on the hot path while a build or a
# fuzzer runs; the req/s ratio still needs token_bench.sh on a quiet machine.
# See bench/README.md.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: bench/token_instructions.sh [options]

  --tokend PATH        tokend binary (default build/daemon/tokend)
  --loadgen PATH       loadgen binary (default build/bench/loadgen)
  --connections N      loadgen connections (default 10)
  --duration S         seconds counted, after 2 s uncounted warm-up (default 4)
  --keep DIR           keep the callgrind files in DIR (callgrind_annotate them)
  -h, --help           this help

Installs valgrind and nginx with apt-get when missing.
USAGE
}

bench_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$bench_dir/.." && pwd)
# shellcheck source=bench/lib.sh
source "$bench_dir/lib.sh"

tokend=$repo/build/daemon/tokend
loadgen=$repo/build/bench/loadgen
conns=10
duration=4
keep=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --tokend) tokend=$2; shift 2 ;;
    --loadgen) loadgen=$2; shift 2 ;;
    --connections) conns=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done
[[ $conns =~ ^[0-9]+$ && $conns -ge 1 && $conns -le 1000 ]] || die "--connections: 1 to 1000"
[[ $duration =~ ^[0-9]+$ && $duration -ge 1 ]] || die "--duration: whole seconds, at least 1"
need_cmd valgrind valgrind
need_cmd callgrind_control valgrind
need_cmd nginx nginx-light nginx
need_bin "$tokend" tokend "build it with: cmake --build build --target tokend, or pass --tokend PATH"
need_bin "$loadgen" loadgen "build it with: cmake --build build --target loadgen, or pass --loadgen PATH"

tmp=$(mktemp -d /tmp/tokend-instr.XXXXXX)
chmod 0700 "$tmp"
TOKEND_PID=""
NGINX_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -n $TOKEND_PID ]] && kill_wait "$TOKEND_PID"
  [[ -n $NGINX_PID ]] && kill_wait "$NGINX_PID"
  if [[ -n $keep ]]; then
    mkdir -p "$keep" && cp "$tmp"/callgrind.* "$keep"/ 2>/dev/null || true
    log "callgrind files in $keep"
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

path=/v1/profiles/bench/token
valgrind=(valgrind --tool=callgrind --instr-atstart=no --dump-instr=no)

# count NAME PID SOCKET: warm up uncounted, then count `duration` seconds of
# load; prints "NAME REQUESTS INSTRUCTIONS".
count() {
  local name=$1 pid=$2 sock=$3 requests total
  "$loadgen" --socket "$sock" --path "$path" --connections "$conns" --duration 2 --warmup 0 \
    --json >/dev/null || die "loadgen against $name failed"
  callgrind_control -z "$pid" >/dev/null && callgrind_control -i on "$pid" >/dev/null
  requests=$("$loadgen" --socket "$sock" --path "$path" --connections "$conns" \
               --duration "$duration" --warmup 0 --json |
             python3 -c 'import json, sys; print(json.load(sys.stdin)["requests"])')
  callgrind_control -i off "$pid" >/dev/null && callgrind_control -d "$pid" >/dev/null
  # The dump is written by the target; wait for its totals line.
  local deadline=$((SECONDS + 30))
  until total=$(awk '/^totals:/ {print $2; exit}' "$tmp"/callgrind."$name".*.1 2>/dev/null) &&
        [[ -n $total ]]; do
    [[ $SECONDS -lt $deadline ]] || die "no callgrind dump from $name"
    sleep 0.1
  done
  echo "$name $requests $total"
}

# tokend, under callgrind
make_xdg "$tmp/tokend"
sock=$tmp/tokend/run/tokend/tokend.sock
cat >"$tmp/tokend.sh" <<WRAP
#!/bin/sh
exec ${valgrind[*]} --callgrind-out-file=$tmp/callgrind.tokend.%p "$tokend" "\$@"
WRAP
chmod +x "$tmp/tokend.sh"
log "starting tokend under callgrind"
start_tokend "$tmp/tokend.sh" "$tmp/tokend" "$sock" 60
put_profile "$sock" bench "$(random_hex 20)"
tokend_row=$(count tokend "$TOKEND_PID" "$sock")
kill_wait "$TOKEND_PID"; TOKEND_PID=""

# nginx, one process, under callgrind
d=$tmp/nginx
(umask 077 && mkdir -p "$d/tmp")
body='{"access_token":"'$(random_hex 20)'","token_type":"Bearer","expires_at":"2030-01-01T00:00:00Z","expires_in":3600,"profile":"bench","kind":"pat","scope":"read:jira-work write:jira-work read:confluence-content.all offline_access","state":"valid","site":"https://jira.example.com"}'
cat >"$d/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1;
pid $d/nginx.pid; error_log $d/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $d/tmp/body; proxy_temp_path $d/tmp/proxy;
  fastcgi_temp_path $d/tmp/fastcgi; uwsgi_temp_path $d/tmp/uwsgi; scgi_temp_path $d/tmp/scgi;
  keepalive_requests 1000000000; keepalive_timeout 300s;
  server {
    listen unix:$d/nginx.sock;
    location / { default_type application/json; return 200 '$body'; }
  }
}
CONF
log "starting nginx under callgrind"
"${valgrind[@]}" --callgrind-out-file="$tmp/callgrind.nginx.%p" "$(cmd_path nginx)" -p "$d/" \
  -e "$d/error.log" -c "$d/nginx.conf" >"$d/stdout.log" 2>&1 &
NGINX_PID=$!
python3 "$bench_dir/benchutil.py" wait-http "$d/nginx.sock" "$path" --deadline 60 ||
  die "nginx did not start under callgrind (see $d/error.log)"
nginx_row=$(count nginx "$NGINX_PID" "$d/nginx.sock")

printf '%s\n%s\n' "$tokend_row" "$nginx_row" | python3 -c '
import sys
rows = [l.split() for l in sys.stdin if l.strip()]
print("target  requests  instructions/request")
per = {}
for name, n, total in rows:
    per[name] = int(total) / int(n)
    print(f"{name:<7} {int(n):>9,}  {per[name]:>20,.0f}")
ratio = per["tokend"] / per["nginx"]
print(f"tokend / nginx instructions: {ratio:.2f}")
'

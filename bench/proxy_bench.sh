#!/usr/bin/env bash
# Proxy overhead: the same small JSON GET against the same nginx upstream over
# HTTPS with keep-alive, once direct (h2load -> nginx, TLS) and once through
# tokend (h2load -> tokend's Unix socket -> tokend's pooled TLS connections ->
# nginx), side by side in one run, at 1 and 10 connections. Reports req/s,
# the proxied/direct ratio and the added p50 latency. See bench/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bench/proxy_bench.sh [options]

  --tokend PATH        tokend binary (default build/daemon/tokend)
  --tokenctl PATH      tokenctl binary (default build/ctl/tokenctl)
  --duration S         measured seconds per run (default 10)
  --warmup S           warm-up seconds before each measurement (default 1)
  --quick              smoke run: --duration 2 --warmup 0.5
  --connections "L"    connection counts (default "1 10")
  --upstream-proto P   h1 (default): nginx offers only HTTP/1.1 on its TLS port,
                       so the direct client and tokend both talk HTTP/1.1 to it;
                       h2: nginx also offers h2 (ALPN), the direct client uses h2
                       (one stream per connection) and tokend whatever its curl
                       negotiates (shown in the output)
  --no-latency-log     no h2load --log-file: req/s without the log's cost, but no
                       p50/p99 (only h2load's mean)
  --ready-timeout S    how long tokend may take to answer /v1/health (default 10)
  --tokend-arg ARG     extra argument for tokend (repeatable), e.g. --log-level=warn
  --tmpdir DIR         where the temp tree goes (default /tmp); tokend's database
                       is in it, so /dev/shm takes the disk's fsync out of the figures
  --json FILE          also write all results as JSON to FILE
  --keep               keep the temp dir (logs, configs, certificates)
  -h, --help           this help

Installs h2load (nghttp2-client), nginx (nginx-light or nginx), curl, openssl
and python3 with apt-get when missing. nginx listens on 127.0.0.1 (a free
port) with a certificate from a test CA made for the run; tokend on a Unix
socket in a private temp dir. Every run stops by itself after warmup + duration.
EOF
}

bench_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$bench_dir/.." && pwd)
# shellcheck source=bench/lib.sh
source "$bench_dir/lib.sh"

tokend=$repo/build/daemon/tokend
tokenctl=$repo/build/ctl/tokenctl
duration=10
warmup=1
conns_list="1 10"
upstream_proto=h1
latency_log=1
ready_timeout=10
json_out=""
keep=0
tmp_parent=/tmp
tokend_args=()

while [[ $# -gt 0 ]]; do
  case $1 in
    --tokend) tokend=$2; shift 2 ;;
    --tokenctl) tokenctl=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --quick) duration=2; warmup=0.5; shift ;;
    --connections) conns_list=$2; shift 2 ;;
    --upstream-proto) upstream_proto=$2; shift 2 ;;
    --no-latency-log) latency_log=0; shift ;;
    --ready-timeout) ready_timeout=$2; shift 2 ;;
    --tokend-arg) tokend_args+=("$2"); shift 2 ;;
    --json) json_out=$2; shift 2 ;;
    --tmpdir) tmp_parent=$2; shift 2 ;;
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
for c in $conns_list; do
  [[ $c =~ ^[0-9]+$ && $c -ge 1 && $c -le 1000 ]] || die "--connections: bad count $c"
done
[[ $upstream_proto == h1 || $upstream_proto == h2 ]] || die "--upstream-proto must be h1 or h2"
[[ -z $json_out ]] || json_out=$(realpath -m "$json_out")
[[ -d $tmp_parent && -w $tmp_parent ]] || die "--tmpdir: $tmp_parent is not a writable directory"

ms() { awk -v s="$1" 'BEGIN { printf "%d", s * 1000 + 0.5 }'; }

# --- what we need --------------------------------------------------------
need_cmd curl curl
need_cmd python3 python3
need_cmd openssl openssl
need_cmd h2load nghttp2-client
need_cmd nginx nginx-light nginx
need_bin "$tokend" tokend "build it with: cmake --build build --target tokend, or pass --tokend PATH"
need_bin "$tokenctl" tokenctl "build it with: cmake --build build --target tokenctl, or pass --tokenctl PATH"

# --- temp dir and cleanup ------------------------------------------------
tmp=$(mktemp -d "$tmp_parent/tokend-proxy-bench.XXXXXX")
chmod 0700 "$tmp"
NGINX_PID=""
TOKEND_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -n $TOKEND_PID ]] && kill_wait "$TOKEND_PID"
  [[ -n $NGINX_PID ]] && kill_wait "$NGINX_PID"
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

api_path=/rest/api/3/myself
probe_path=/rest/api/3/probe
TOKEN=$(random_hex 20)

# --- test CA -------------------------------------------------------------
ca_dir=$tmp/ca
python3 "$repo/tests/fake_upstream/make_ca.py" "$ca_dir" >"$tmp/make_ca.log" 2>&1 \
  || { cat "$tmp/make_ca.log" >&2; die "could not make the test CA (tests/fake_upstream/make_ca.py)"; }
CA=$ca_dir/ca.pem

# --- nginx (the upstream) ------------------------------------------------
start_nginx() {
  local d=$tmp/nginx nginx_bin body pad opt dirs="" h2=""
  nginx_bin=$(cmd_path nginx)
  (umask 077 && mkdir -p "$d/tmp")
  # A /myself-shaped answer padded to exactly 300 bytes (no ' or $ in it: it
  # sits in '...' in the config, where nginx expands variables).
  body='{"accountId":"5b10ac8d82e05b22cc7d4ef5","accountType":"atlassian","emailAddress":"bench@example.com","displayName":"Bench User","active":true,"timeZone":"Europe/Berlin","locale":"en_US","self":"https://jira.example.com/rest/api/3/user?accountId=5b10ac8d82e05b22cc7d4ef5","pad":"'
  pad=$((300 - ${#body} - 2))
  ((pad >= 0)) || die "internal: body prefix longer than 300 bytes"
  body+=$(printf '%*s' "$pad" '' | tr ' ' x)'"}'
  # Temp paths go to the temp dir, for the modules this nginx was built with.
  for opt in client_body proxy fastcgi uwsgi scgi; do
    if [[ $opt == client_body ]] || ! "$nginx_bin" -V 2>&1 | grep -q -- "--without-http_${opt}_module"; then
      dirs+="  ${opt}_temp_path $d/tmp/$opt;"$'\n'
    fi
  done
  [[ $upstream_proto == h2 ]] && h2=" http2"
  NGINX_PORT=$(python3 "$bench_dir/proxybench.py" free-port)
  cat >"$d/nginx.conf" <<EOF
# Private config for bench/proxy_bench.sh: one process, no system files.
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
  # The token must arrive, direct (sent by the client) or proxied (added by
  # tokend); anything else is a 401 and shows up as non-2xx.
  map_hash_bucket_size 128;
  map \$http_authorization \$bench_auth_ok {
    "Bearer $TOKEN" true;
    default false;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT ssl$h2;
    ssl_certificate $ca_dir/server.pem;
    ssl_certificate_key $ca_dir/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location = $api_path {
      if (\$bench_auth_ok = false) { return 401 '{"error":"bad or missing token"}'; }
      default_type application/json;
      return 200 '$body';
    }
    # What a client negotiated (for the record; not measured).
    location = $probe_path {
      default_type application/json;
      return 200 '{"protocol":"\$server_protocol","tls":"\$ssl_protocol","cipher":"\$ssl_cipher","authorization_ok":\$bench_auth_ok}';
    }
    # tokend should never need it (the token lives 24 h), but a refresh finds an answer.
    location = /token {
      default_type application/json;
      return 200 '{"access_token":"$TOKEN","token_type":"Bearer","expires_in":86400}';
    }
    location / { return 404; }
  }
  server {
    listen unix:$d/status.sock;
    location / { stub_status; }
  }
}
EOF
  NGINX_STATUS_SOCK=$d/status.sock
  NGINX_BODY_BYTES=${#body}
  "$nginx_bin" -p "$d/" -e "$d/error.log" -c "$d/nginx.conf" >"$d/stdout.log" 2>&1 &
  NGINX_PID=$!
  if ! python3 "$bench_dir/benchutil.py" wait-http "$NGINX_STATUS_SOCK" / --deadline 10; then
    cat "$d/stdout.log" "$d/error.log" >&2 2>/dev/null || true
    die "nginx did not start (config $d/nginx.conf)"
  fi
  NGINX_VERSION=$("$nginx_bin" -v 2>&1 | sed 's/^nginx version: //')
  UPSTREAM=https://127.0.0.1:$NGINX_PORT
  # The direct request must work with certificate verification against the test CA.
  local code
  code=$(curl -sS --max-time 10 --cacert "$CA" -H "Authorization: Bearer $TOKEN" \
           -o "$d/direct.out" -w '%{http_code}' "$UPSTREAM$api_path") \
    || die "GET $UPSTREAM$api_path failed (curl with --cacert $CA)"
  [[ $code == 200 ]] || die "GET $UPSTREAM$api_path answered $code: $(head -c 300 "$d/direct.out")"
  cmp -s "$d/direct.out" <(printf '%s' "$body") || die "nginx did not answer the expected body"
}

nginx_accepts() {  # connections nginx has accepted so far (stub_status)
  curl -sS --max-time 5 --unix-socket "$NGINX_STATUS_SOCK" http://nginx/ \
    | awk 'NR == 3 { print $1 }'
}

# --- tokend --------------------------------------------------------------
start_bench_tokend() {
  local d=$tmp/tokend code envargs
  make_xdg "$d"
  TOKEND_SOCK=$d/run/tokend/tokend.sock
  log "starting tokend ($tokend --ca-bundle $CA), waiting up to ${ready_timeout}s for GET /v1/health"
  start_tokend "$tokend" "$d" "$TOKEND_SOCK" "$ready_timeout" --ca-bundle "$CA" "${tokend_args[@]}"
  log "tokend ready after ${TOKEND_READY_MS} ms (pid $TOKEND_PID)"
  (umask 077 && printf '%s\n' "$TOKEN" >"$d/token")
  mapfile -t envargs < <(tokend_env "$d")
  "${envargs[@]}" "$tokenctl" --socket "$TOKEND_SOCK" add bench --kind oauth2 --provider generic \
    --api-base "$UPSTREAM" --token-url "$UPSTREAM/token" --client-id x \
    --token-file "$d/token" --expires-in 86400 >"$d/tokenctl-add.log" 2>&1 \
    || { cat "$d/tokenctl-add.log" >&2; die "tokenctl add bench failed"; }
  # The proxied request must answer 200 with exactly nginx's body before we load it.
  code=$(curl -sS --max-time 10 --unix-socket "$TOKEND_SOCK" -o "$d/proxied.out" -w '%{http_code}' \
           "http://localhost/v1/proxy/bench$api_path") \
    || die "GET /v1/proxy/bench$api_path on tokend failed (curl)"
  [[ $code == 200 ]] || die "GET /v1/proxy/bench$api_path answered $code: $(head -c 500 "$d/proxied.out") (tokend log: $d/tokend.log, --keep keeps it)"
  cmp -s "$d/proxied.out" "$tmp/nginx/direct.out" || die "the proxied answer differs from the direct one"
  TOKEND_UPSTREAM=$(curl -sS --max-time 10 --unix-socket "$TOKEND_SOCK" \
                      "http://localhost/v1/proxy/bench$probe_path") || TOKEND_UPSTREAM=""
  log "tokend's upstream leg: $TOKEND_UPSTREAM"
  [[ $TOKEND_UPSTREAM == *'"authorization_ok":true'* ]] || die "tokend did not send the token upstream: $TOKEND_UPSTREAM"
}

NGINX_VERSION=""
NGINX_BODY_BYTES=0
TOKEND_READY_MS=""
TOKEND_UPSTREAM=""
start_nginx
start_bench_tokend

# --- runs ----------------------------------------------------------------
results=$tmp/results.jsonl
: >"$results"
dur_ms=$(ms "$duration")
warm_ms=$(ms "$warmup")
proto_args=(--h1)
[[ $upstream_proto == h2 ]] && proto_args=(-m 1)
log "each run: ${warmup}s warm-up + ${duration}s measured; connections: $conns_list; upstream $UPSTREAM ($upstream_proto)"

run_one() {  # MODE CONNS
  local mode=$1 c=$2 out lf=() logf=() before after row
  out=$tmp/h2load-$mode-$c.txt
  if [[ $latency_log -eq 1 ]]; then
    logf=(--log "$tmp/h2load-$mode-$c.log")
    lf=(--log-file="$tmp/h2load-$mode-$c.log")
  fi
  # -t 1: one client thread; the servers share the other core (direct: nginx;
  # proxied: tokend and nginx).
  local cmd=(h2load -t 1 -c "$c" -D "${dur_ms}ms" --warm-up-time="${warm_ms}ms" "${lf[@]}")
  if [[ $mode == direct ]]; then
    cmd+=("${proto_args[@]}" -H "Authorization: Bearer $TOKEN" "$UPSTREAM$api_path")
  else
    cmd+=(--h1 -B "unix:$TOKEND_SOCK" "http://localhost/v1/proxy/bench$api_path")
  fi
  before=$(nginx_accepts)
  row=$(python3 "$bench_dir/proxybench.py" run --mode "$mode" --connections "$c" \
          --warmup "$warmup" --duration "$duration" --output "$out" "${logf[@]}" \
          --pid "tokend=$TOKEND_PID" --pid "nginx=$NGINX_PID" -- "${cmd[@]}") \
    || die "h2load $mode (c=$c) failed"
  after=$(nginx_accepts)
  # Upstream TLS connections opened during the run (h2load's own in direct
  # mode; tokend's in proxied mode: more than c means it reconnected). The
  # status request itself is one accepted connection: hence the - 1.
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["upstream_connections_opened"]=int(sys.argv[2]); print(json.dumps(r))' \
    "$row" "$((after - before - 1))" >>"$results"
}

for c in $conns_list; do
  for mode in direct proxied; do
    log "  $mode  c=$c"
    run_one "$mode" "$c"
  done
done

# --- report --------------------------------------------------------------
meta=$(python3 - "$duration" "$warmup" "$NGINX_VERSION" "$NGINX_BODY_BYTES" "$TOKEND_READY_MS" \
         "$upstream_proto" "$latency_log" "$TOKEND_UPSTREAM" "$tokend" \
         "$(stat -f -c %T "$tmp")" <<'EOF'
import json, os, platform, subprocess, sys, time
def cpu():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
def run(*argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True).stdout.strip() or None
    except OSError:
        return None
d, w, nv, nb, ready, proto, latlog, upstream, tokend, fs = sys.argv[1:]
try:
    upstream = json.loads(upstream)
except ValueError:
    upstream = upstream or None
print(json.dumps({
    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "kernel": platform.release(),
    "cpus": os.cpu_count(), "cpu": cpu(), "duration_s": float(d), "warmup_s": float(w),
    "upstream_proto": proto, "latency_log": latlog == "1", "nginx": nv or None,
    "body_bytes": int(nb), "tokend_ready_ms": float(ready) if ready else None,
    "tokend_version": run(tokend, "--version"), "tokend_upstream_leg": upstream,
    "h2load": run("h2load", "--version"), "tmp_filesystem": fs,
}))
EOF
)
echo
echo "upstream: nginx $NGINX_VERSION, $UPSTREAM, ${NGINX_BODY_BYTES}-byte body, upstream proto $upstream_proto"
echo "tokend's upstream leg: $TOKEND_UPSTREAM"
echo "temp tree (tokend's database): $tmp ($(stat -f -c %T "$tmp"))"
python3 - "$results" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"  {r['mode']:<8} c={r['connections']:<3} client protocol "
          f"{r.get('application_protocol') or 'http/1.1 (unix)'}"
          f"{'/' + r['tls_protocol'] if r.get('tls_protocol') else ''}"
          f"{' ' + r['cipher'] if r.get('cipher') else ''}; "
          f"{r.get('h2load_bytes_per_response', '-')} bytes per response (h2load); "
          f"nginx accepted {r['upstream_connections_opened']} connection(s)")
EOF
echo
python3 "$bench_dir/proxybench.py" report "$results" --meta "$meta" ${json_out:+--json "$json_out"}

#!/usr/bin/env bash
# Whole-process cost of `tokenctl token bench` (hyperfine, against a real
# tokend), with an empty C++ program and /bin/true for reference; tokend's
# start-to-READY time and its idle RSS with 10 profiles. See bench/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bench/cli_bench.sh [options]

  --tokend PATH        tokend binary (default build/daemon/tokend)
  --tokenctl PATH      tokenctl binary (default build/ctl/tokenctl)
  --runs N             hyperfine runs per command (default 200)
  --warmup N           hyperfine warm-up runs (default 20)
  --restarts N         timed tokend restarts with 10 profiles (default 5)
  --quick              smoke run: --runs 30 --warmup 5 --restarts 2
  --ready-timeout S    how long tokend may take to answer /v1/health (default 10)
  --tokend-arg ARG     extra argument for tokend (repeatable)
  --json FILE          also write the figures as JSON to FILE
  --keep               keep the temp dir instead of removing it
  -h, --help           this help

Installs hyperfine, curl, python3 and g++ with apt-get when missing.
EOF
}

bench_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$bench_dir/.." && pwd)
# shellcheck source=bench/lib.sh
source "$bench_dir/lib.sh"

tokend=$repo/build/daemon/tokend
tokenctl=$repo/build/ctl/tokenctl
runs=200
hf_warmup=20
restarts=5
profiles=10
ready_timeout=10
json_out=""
keep=0
tokend_args=()

while [[ $# -gt 0 ]]; do
  case $1 in
    --tokend) tokend=$2; shift 2 ;;
    --tokenctl) tokenctl=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --warmup) hf_warmup=$2; shift 2 ;;
    --restarts) restarts=$2; shift 2 ;;
    --quick) runs=30; hf_warmup=5; restarts=2; shift ;;
    --ready-timeout) ready_timeout=$2; shift 2 ;;
    --tokend-arg) tokend_args+=("$2"); shift 2 ;;
    --json) json_out=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done
for v in runs hf_warmup restarts; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "--${v#hf_} must be a whole number: ${!v}"
done
[[ $runs -ge 2 && $runs -le 100000 ]] || die "--runs must be 2..100000"
[[ $restarts -le 100 ]] || die "--restarts must be at most 100"
[[ $ready_timeout =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--ready-timeout must be a number of seconds"
[[ -z $json_out ]] || json_out=$(realpath -m "$json_out")

need_cmd curl curl
need_cmd python3 python3
need_cmd hyperfine hyperfine
need_cmd g++ g++
need_bin "$tokend" tokend "build it with: cmake --build build --target tokend, or pass --tokend PATH"
need_bin "$tokenctl" tokenctl "build it with: cmake --build build --target tokenctl, or pass --tokenctl PATH"

tmp=$(mktemp -d /tmp/tokend-clibench.XXXXXX)
chmod 0700 "$tmp"
TOKEND_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -n $TOKEND_PID ]] && kill_wait "$TOKEND_PID"
  if [[ $keep -eq 1 ]]; then log "kept $tmp"; else rm -rf "$tmp"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

d=$tmp/tokend
make_xdg "$d"
sock=$d/run/tokend/tokend.sock
mapfile -t envargs < <(tokend_env "$d")
envargs+=("TOKEND_SOCKET=$sock")

# --- first start: key and database are created ----------------------------
log "starting tokend ($tokend), waiting up to ${ready_timeout}s for GET /v1/health"
start_tokend "$tokend" "$d" "$sock" "$ready_timeout" "${tokend_args[@]}"
ready_first_ms=$TOKEND_READY_MS
log "first start (new key and database): ready after ${ready_first_ms} ms"

token=$(random_hex 20)
put_profile "$sock" bench "$token"
for ((i = 2; i <= profiles; i++)); do
  put_profile "$sock" "bench-$i" "$(random_hex 20)"
done

# tokenctl must print exactly our token before we time it.
got=$("${envargs[@]}" "$tokenctl" token bench 2>"$tmp/tokenctl.err") \
  || die "tokenctl token bench failed (exit $?): $(head -c 500 "$tmp/tokenctl.err")"
[[ $got == "$token" ]] || die "tokenctl token bench printed something other than the token: ${got:0:80}"

rss_idle_kb=$(rss_kb "$TOKEND_PID")
log "tokend RSS idle with $profiles profiles: ${rss_idle_kb} kB"

# --- whole-process times --------------------------------------------------
printf 'int main() {}\n' >"$tmp/empty.cpp"
g++ -O2 -o "$tmp/empty" "$tmp/empty.cpp" || die "cannot compile the empty reference program"
log "hyperfine: --warmup $hf_warmup --runs $runs -N"
# The environment hyperfine passes on is the daemon's private one, so
# tokenctl finds the socket the same way a user's shell would.
"${envargs[@]}" hyperfine -N --style basic --warmup "$hf_warmup" --runs "$runs" \
  --export-json "$tmp/hyperfine.json" \
  -n "tokenctl token bench" "$tokenctl token bench" \
  -n "empty C++ program (g++ -O2)" "$tmp/empty" \
  -n "/bin/true" "/bin/true" >&2 \
  || die "hyperfine failed (did tokenctl exit non-zero?)"
rss_after_kb=$(rss_kb "$TOKEND_PID")

# --- restarts with 10 profiles -------------------------------------------
restart_ms=()
for ((i = 1; i <= restarts; i++)); do
  kill -TERM "$TOKEND_PID"
  for ((w = 0; w < 1000; w++)); do kill -0 "$TOKEND_PID" 2>/dev/null || break; sleep 0.01; done
  kill -0 "$TOKEND_PID" 2>/dev/null && die "tokend (pid $TOKEND_PID) did not exit within 10 s of SIGTERM"
  TOKEND_PID=""
  start_tokend "$tokend" "$d" "$sock" "$ready_timeout" "${tokend_args[@]}"
  restart_ms+=("$TOKEND_READY_MS")
done
rss_restart_kb=""
if [[ $restarts -gt 0 ]]; then
  got=$("${envargs[@]}" "$tokenctl" token bench 2>"$tmp/tokenctl.err") \
    || die "after a restart, tokenctl token bench failed: $(head -c 500 "$tmp/tokenctl.err")"
  [[ $got == "$token" ]] || die "after a restart, tokenctl token bench printed another token"
  rss_restart_kb=$(rss_kb "$TOKEND_PID")
fi

# --- report --------------------------------------------------------------
python3 - "$tmp/hyperfine.json" "$ready_first_ms" "$rss_idle_kb" "$rss_after_kb" \
  "$rss_restart_kb" "$profiles" "$runs" "$hf_warmup" "${json_out:-}" "${restart_ms[@]}" <<'EOF'
import json, statistics, sys
hf, first, rss_idle, rss_after, rss_restart, profiles, runs, warm, out, *restarts = sys.argv[1:]
res = json.load(open(hf))["results"]
ms = lambda s: s * 1000.0
cmds = [{"name": r["command"], "median_ms": ms(r["median"]), "mean_ms": ms(r["mean"]),
         "stddev_ms": ms(r["stddev"] or 0), "min_ms": ms(r["min"]), "max_ms": ms(r["max"])}
        for r in res]
restarts = [float(x) for x in restarts]
doc = {
    "hyperfine": {"runs": int(runs), "warmup": int(warm), "shell": "none", "commands": cmds},
    "ready_ms": {"first_start": float(first),
                 "restart_median": statistics.median(restarts) if restarts else None,
                 "restart_min": min(restarts) if restarts else None,
                 "restart_max": max(restarts) if restarts else None,
                 "restarts": restarts},
    "rss_kb": {"idle_after_creating_profiles": int(rss_idle),
               "after_hyperfine": int(rss_after),
               "idle_after_restart": int(rss_restart) if rss_restart else None},
    "profiles": int(profiles),
}
print()
print(f"whole-process time, hyperfine -N, {runs} runs after {warm} warm-up runs:")
w = max(len(c["name"]) for c in cmds)
print(f"  {'command'.ljust(w)}  {'median':>9}  {'mean':>9}  {'sd':>8}  {'min':>8}")
for c in cmds:
    print(f"  {c['name'].ljust(w)}  {c['median_ms']:7.3f}ms  {c['mean_ms']:7.3f}ms  "
          f"{c['stddev_ms']:6.3f}ms  {c['min_ms']:6.3f}ms")
if len(cmds) >= 2:
    print(f"  tokenctl minus the empty C++ program (medians): "
          f"{cmds[0]['median_ms'] - cmds[1]['median_ms']:.3f} ms")
print()
print("tokend start to READY (launch until GET /v1/health answers, 1 ms polling):")
print(f"  first start (creates key and database): {float(first):.1f} ms")
if restarts:
    print(f"  restart with {profiles} profiles: median {doc['ready_ms']['restart_median']:.1f} ms "
          f"(min {min(restarts):.1f}, max {max(restarts):.1f}, {len(restarts)} restarts)")
print()
print(f"tokend VmRSS with {profiles} profiles:")
print(f"  idle, after creating them:    {int(rss_idle) / 1024:.1f} MiB")
print(f"  after the hyperfine runs:     {int(rss_after) / 1024:.1f} MiB")
if rss_restart:
    print(f"  idle, after a restart:        {int(rss_restart) / 1024:.1f} MiB")
if out:
    with open(out, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print(f"\nresults written to {out}")
EOF

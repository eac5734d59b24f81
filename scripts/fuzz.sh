#!/usr/bin/env bash
# Builds the libFuzzer targets with clang-19 (ASan + UBSan) and runs them.
#
#   scripts/fuzz.sh TARGET SECONDS [libFuzzer flags...]   one target, e.g. an hour
#   scripts/fuzz.sh --all SECONDS                         every target in turn (CI)
#   scripts/fuzz.sh --list
#
# Each run starts from the committed seeds (fuzz/corpus/TARGET) and crash
# reproducers (fuzz/regressions/TARGET) and grows a working corpus under
# build-fuzz/corpus/. A crash stops the run, prints the reproducer's path, and
# exits 1: commit the file under fuzz/regressions/TARGET/ with the fix, and the
# normal test suite replays it from then on (ctest fuzz.replay.TARGET).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${TOKEND_FUZZ_BUILD:-$repo/build-fuzz}
targets=(token_answer metadata challenge dotenv mcp_framing proxy_path url http_server callback_listener standin_endpoint tls_record identity jws)

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
log() { printf '==> %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

[ $# -ge 1 ] || usage
if [ "$1" = --list ]; then printf '%s\n' "${targets[@]}"; exit 0; fi
[ $# -ge 2 ] || usage
what=$1 seconds=$2
shift 2
[[ $seconds =~ ^[0-9]+$ ]] || { echo "SECONDS must be a whole number, got '$seconds'" >&2; exit 2; }
if [ "$what" = --all ]; then
  run=("${targets[@]}")
else
  printf '%s\n' "${targets[@]}" | grep -qx -- "$what" ||
    { echo "no fuzz target '$what'; scripts/fuzz.sh --list names them" >&2; exit 2; }
  run=("$what")
fi

# clang-19 is in Debian 12's main archive and compiles libstdc++ 12's <expected>.
if ! command -v clang++-19 >/dev/null || ! dpkg-query -W -f='${Status}' libclang-rt-19-dev 2>/dev/null | grep -q 'ok installed'; then
  log "installing clang-19 and libclang-rt-19-dev"
  as_root apt-get update -q >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    clang-19 libclang-rt-19-dev >/dev/null
fi
"$repo/scripts/setup.sh" --deps-only

if [ ! -f "$build_dir/build.ninja" ]; then
  log "configuring $build_dir"
  CC=clang-19 CXX=clang++-19 cmake -S "$repo" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DTOKEND_FUZZ=ON -DTOKEND_BUILD_TESTS=OFF -DTOKEND_BUILD_BENCH=OFF >/dev/null
fi
log "building ${run[*]}"
cmake --build "$build_dir" --target "${run[@]/#/fuzz_}"

symbolizer=$(command -v llvm-symbolizer-19 || command -v llvm-symbolizer || true)
[ -z "$symbolizer" ] || export ASAN_SYMBOLIZER_PATH=$symbolizer
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0
for t in "${run[@]}"; do
  work=$build_dir/corpus/$t
  mkdir -p "$work" "$build_dir/artifacts"
  inputs=("$repo/fuzz/corpus/$t")
  [ -d "$repo/fuzz/regressions/$t" ] && inputs+=("$repo/fuzz/regressions/$t")
  log "fuzzing $t for ${seconds} s"
  if ! "$build_dir/fuzz/fuzz_$t" -max_total_time="$seconds" -max_len=8192 -timeout=10 \
      -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$build_dir/artifacts/$t-" \
      "$@" "$work" "${inputs[@]}" 2>"$build_dir/$t.log"; then
    tail -n 60 "$build_dir/$t.log" >&2
    log "$t FAILED; reproducer: $(ls -t "$build_dir"/artifacts/"$t"-* 2>/dev/null | head -n 1)"
    status=1
    continue
  fi
  execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+)/\1/p' "$build_dir/$t.log" | tail -n 1)
  rate=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+)/\1/p' "$build_dir/$t.log" | tail -n 1)
  log "$t: ${execs:-?} executions, ${rate:-?} exec/s, no crash"
done
exit $status

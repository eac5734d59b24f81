#!/usr/bin/env bash
# Runs clang-tidy-19 (checks in .clang-tidy, every finding an error) over the
# daemon's and tokenctl's sources, as the build compiles them: one run per
# batch of the unity build, two at a time. Tests, fuzz targets and benchmarks
# are left out.
#
#   scripts/tidy.sh [BUILD_DIR]    a configured build directory (default: build)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${1:-$repo/build}
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v clang-tidy-19 >/dev/null; then
  echo "==> installing clang-tidy-19" >&2
  as_root apt-get update -q >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends clang-tidy-19 >/dev/null
fi
[ -f "$build_dir/compile_commands.json" ] ||
  { echo "no $build_dir/compile_commands.json: configure a build first (scripts/setup.sh $build_dir)" >&2; exit 2; }
# CMake writes the unity batch sources when it configures: a configured build
# directory is enough, nothing needs to be compiled first.
mapfile -t sources < <(python3 - "$build_dir/compile_commands.json" <<'PY'
import json, sys
for e in json.load(open(sys.argv[1])):
    f = e["file"]
    if not any(p in f for p in ("/tests/", "/fuzz/", "/bench/")):
        print(f)
PY
)
echo "==> clang-tidy-19 on ${#sources[@]} sources (.clang-tidy)" >&2
run-clang-tidy-19 -quiet -p "$build_dir" -j "$(nproc)" "${sources[@]/%/\$}" >"$build_dir/tidy.log" 2>&1 || {
  grep -E "(warning|error):" "$build_dir/tidy.log" | sort -u >&2
  echo "clang-tidy found the above ($build_dir/tidy.log has it all)" >&2
  exit 1
}
echo "ok: clang-tidy-19 found nothing"

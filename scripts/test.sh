#!/usr/bin/env bash
# Installs everything, builds, and runs the whole test suite with ctest.
#
#   scripts/test.sh [BUILD_DIR] [extra cmake args...]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${1:-$repo/build}
shift || true
"$repo/scripts/setup.sh" "$build_dir" "$@"
cd "$build_dir"
exec ctest --output-on-failure -j "$(nproc)" --timeout 600

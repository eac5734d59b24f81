#!/usr/bin/env bash
# Formats the C++ sources with clang-format-19 and .clang-format.
#
#   scripts/format.sh           rewrite every tracked .cpp/.hpp in place
#   scripts/format.sh --check   change nothing; list the files that differ and
#                               exit 1 if any does (CI runs this)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

mode=fix
case "${1:-}" in
  --check) mode=check ;;
  "") ;;
  *) echo "usage: scripts/format.sh [--check]" >&2; exit 2 ;;
esac

if ! command -v clang-format-19 >/dev/null; then
  echo "==> installing clang-format-19" >&2
  as_root apt-get update -q >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends clang-format-19 >/dev/null
fi

mapfile -t files < <(git ls-files '*.cpp' '*.hpp')
if [ "$mode" = fix ]; then
  clang-format-19 -i "${files[@]}"
  echo "formatted ${#files[@]} files"
  exit 0
fi
bad=()
for f in "${files[@]}"; do
  if ! clang-format-19 --dry-run --Werror "$f" >/dev/null 2>&1; then bad+=("$f"); fi
done
if [ ${#bad[@]} -gt 0 ]; then
  printf 'not formatted: %s\n' "${bad[@]}" >&2
  echo "run scripts/format.sh to format them (clang-format-19, .clang-format)" >&2
  exit 1
fi
echo "ok: ${#files[@]} files formatted as .clang-format says"

#!/usr/bin/env bash
# Installs everything, builds, and runs tokend in the foreground on its
# defaults (XDG paths, SQLCipher database, key generated on first start).
# Extra arguments go to tokend, e.g. --log-level debug.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$repo/scripts/setup.sh" "$repo/build"
exec "$repo/build/daemon/tokend" "$@"

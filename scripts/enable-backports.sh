#!/usr/bin/env bash
# Enables bookworm-backports on Debian 12 by adding the suite to the machine's
# existing apt sources (no mirror is named here: whichever the machine or
# image uses is kept). Does nothing when backports is already enabled.
# Exit 0: enabled now; 1: already enabled; 2: no bookworm entry to add it to.
#
# Used by scripts/setup.sh and packaging/Dockerfile.
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  exit 1
fi
printf '==> %s\n' "enabling bookworm-backports in the existing apt sources" >&2
changed=1
# deb822 files: extend the Suites line that lists bookworm itself.
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  if grep -Eq '^Suites:.*(^|[[:space:]])bookworm([[:space:]]|$)' "$f"; then
    as_root sed -i -E '/^Suites:/{/(^|[[:space:]])bookworm([[:space:]]|$)/s/$/ bookworm-backports/}' "$f"
    changed=0
  fi
done
# One-line format: copy each "deb URI bookworm ..." line with the suite changed.
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -f "$f" ] || continue
  lines=$(grep -E '^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?[^[:space:]]+[[:space:]]+bookworm[[:space:]]' "$f" || true)
  if [ -n "$lines" ]; then
    printf '%s\n' "$lines" | sed -E 's/([[:space:]])bookworm([[:space:]])/\1bookworm-backports\2/' |
      as_root tee /etc/apt/sources.list.d/tokend-bookworm-backports.list >/dev/null
    changed=0
    break
  fi
done
if [ "$changed" -ne 0 ]; then
  printf '==> %s\n' "could not find a bookworm entry in the apt sources to add backports to" >&2
  exit 2
fi

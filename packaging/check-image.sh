#!/usr/bin/env bash
# Runs the image built from packaging/Dockerfile against a throwaway
# PostgreSQL on this host, the way docs/server-mode.md deploys it: the config,
# the database-url file and the KEK mounted read-only at /etc/tokend (owned by
# uid 10001, 0600), the socket directory at /run/tokend, PostgreSQL's socket
# at /run/postgresql. Checks readiness, a user's profile and token through the
# socket, that a dump of the database holds no token in plaintext, and that
# SIGTERM ends the container with exit code 0. Not part of .ci/run (it needs a
# container engine and a debian:12 base image).
#
#   docker build -f packaging/Dockerfile -t tokend-server .   # or podman build
#   packaging/check-image.sh [IMAGE]
#
# Environment: ENGINE (default: podman if installed, else docker);
# ENGINE_RUN_FLAGS, extra flags for `run`. In a VM with hybrid cgroups and
# without CAP_SYS_RESOURCE, podman 4.3 needed
#   ENGINE="podman --runtime runc --cgroup-manager cgroupfs"
#   ENGINE_RUN_FLAGS="--ulimit nofile=10000:10000 --ulimit nproc=1000:1000"
# and `podman build --isolation chroot`.
set -euo pipefail
image=${1:-tokend-server}
engine=${ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}
pg_bin=/usr/lib/postgresql/15/bin
[ "$(id -u)" -eq 0 ] || { echo "needs root (chown to the image's uid 10001)" >&2; exit 2; }
work=$(mktemp -d /var/tmp/tokend-image-check.XXXXXX)
name=tokend-image-check-$$
fail() { echo "FAILED: $*" >&2; exit 1; }
cleanup() {
  $engine rm -f "$name" >/dev/null 2>&1 || true
  [ -f "$work/pg/data/postmaster.pid" ] && su postgres -c "$pg_bin/pg_ctl -D $work/pg/data stop -m fast" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/etc" "$work/run" "$work/pg/sock"
chown -R postgres "$work/pg"
chmod 755 "$work" "$work/pg"
su postgres -c "$pg_bin/initdb -D $work/pg/data -A trust -U postgres" >/dev/null
su postgres -c "$pg_bin/pg_ctl -D $work/pg/data -l $work/pg/log -o \"-k $work/pg/sock -c listen_addresses=''\" -w start" >/dev/null
psql -h "$work/pg/sock" -U postgres -qc "create database tokend"
chmod 755 "$work/pg/sock"

echo "host=/run/postgresql dbname=tokend user=postgres" >"$work/etc/database-url"
openssl rand -hex 32 >"$work/etc/kek"
cat >"$work/etc/server.conf" <<CONF
database-url-file = /etc/tokend/database-url
kek-file          = /etc/tokend/kek
socket            = /run/tokend/tokend.sock
trusted-proxy-uid = 0
CONF
chown -R 10001:10001 "$work/etc" "$work/run"
chmod 700 "$work/etc" "$work/run"
chmod 600 "$work/etc"/*

# shellcheck disable=SC2086
$engine run -d --name "$name" --network none ${ENGINE_RUN_FLAGS:-} \
  -v "$work/etc:/etc/tokend:ro" -v "$work/run:/run/tokend" -v "$work/pg/sock:/run/postgresql" \
  "$image" >/dev/null
sock=$work/run/tokend.sock
for _ in $(seq 150); do [ -S "$sock" ] && break; sleep 0.2; done
[ -S "$sock" ] || { $engine logs "$name" >&2; fail "no socket after 30 s"; }

api() { curl -sS --unix-socket "$sock" -H 'X-Forwarded-User: alice@example.com' "$@"; }
ready=$(curl -sS --unix-socket "$sock" http://tokend/v1/server/ready)
echo "ready: $ready"
[[ $ready == *'"ready":true'* ]] || fail "not ready"
token="tok-image-check-$(openssl rand -hex 12)"
api -X PUT -H 'Content-Type: application/json' \
  --data "{\"kind\":\"pat\",\"site\":\"https://jira.example.com\",\"token\":\"$token\"}" \
  -o /dev/null -w 'profile created: %{http_code}\n' http://tokend/v1/profiles/jira
[[ $(api http://tokend/v1/profiles/jira/token) == *"\"token\":\"$token\""* ]] || fail "token not served"
echo "token served"
if pg_dump -h "$work/pg/sock" -U postgres tokend | grep -q "$token"; then fail "token in plaintext in the dump"; fi
echo "dump: no plaintext token"
$engine stop -t 20 "$name" >/dev/null
code=$($engine inspect -f '{{.State.ExitCode}}' "$name")
echo "exit code after SIGTERM: $code"
[ "$code" = 0 ] || fail "exit code $code"
echo "image check passed"

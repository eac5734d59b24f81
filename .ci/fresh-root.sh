#!/usr/bin/env bash
# Runs the README's two commands on a fresh, minimal Debian 12 root, the way a
# new user would run them as root on a new machine:
#
#   1. the first command (install, build, run tokend) until `tokenctl ping`
#      answers, then SIGTERM, which must exit 0;
#   2. the first command again: apt must be skipped, and tokend comes up again;
#   3. the second command (install, build, whole suite) to the end.
#
# The root is made by `debootstrap --variant=minbase bookworm` from the mirror
# the host's own apt sources name (nothing here names one). The committed tree
# (`git archive HEAD`) is copied to /root/tokend, a private home directory as on
# a real machine. The bare root may be cached as a tarball outside the checkout
# ($TOKEND_CI_CACHE, default ~/.cache/tokend-ci); without it, it is made anew.
# Whatever is mounted is unmounted, and whatever runs inside is killed, on every
# exit path.
#
#   .ci/fresh-root.sh            environment: TOKEND_CI_CACHE, TOKEND_CI_NO_CACHE=1
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache_dir=${TOKEND_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokend-ci}
cache_tar=$cache_dir/bookworm-minbase.tar.gz
log() { printf '=== fresh root: %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, mount)"

# The README's first fenced block holds exactly the two commands.
mapfile -t readme_commands < <(
  awk '/^```/ { if (inside) exit; inside = 1; next } inside' "$repo/README.md" |
    sed -E 's/[[:space:]]+#.*$//' | sed -E '/^[[:space:]]*$/d')
[ "${#readme_commands[@]}" -eq 2 ] ||
  die "README.md's first code block must hold exactly two commands, found ${#readme_commands[@]}"
run_command=${readme_commands[0]}
test_command=${readme_commands[1]}
log "README command 1: $run_command"
log "README command 2: $test_command"

# The mirror of the host's bookworm entry (deb822 first, then one-line format).
host_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '
      /^[[:space:]]*$/ { if (uri != "" && suite) { print uri; exit } uri = ""; suite = 0; next }
      /^URIs:/ { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm") suite = 1 }
      END { if (uri != "" && suite) print uri }' "$f" | head -n 1
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -nE 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+bookworm[[:space:]].*/\2/p' "$f"
  done
}
mirror=$(host_mirror | head -n 1)
[ -n "$mirror" ] || die "no bookworm entry in this machine's apt sources to take the mirror from"

work=$(mktemp -d /var/tmp/tokend-fresh-root.XXXXXX)
root=$work/root
mkdir -p "$root"

kill_inside() {
  local p killed=1
  for p in /proc/[0-9]*; do
    if [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ]; then
      kill -KILL "${p#/proc/}" 2>/dev/null && killed=0
    fi
  done
  return $killed
}

# The pid of the process named $1 running inside the root.
pid_inside() {
  local p
  for p in /proc/[0-9]*; do
    if [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && [ "$(cat "$p/comm" 2>/dev/null)" = "$1" ]; then
      echo "${p#/proc/}"
      return 0
    fi
  done
  return 1
}

cleanup() {
  local status=$?
  set +e
  # Processes first (they hold mounts busy), then every mount below the root,
  # deepest first.
  local round
  for round in 1 2 3 4 5; do kill_inside || break; sleep 0.2; done
  findmnt -rn -o TARGET | awk -v r="$root" 'index($0, r "/") == 1' | sort -r |
    while read -r m; do umount "$m" || umount -l "$m"; done
  if findmnt -rn -o TARGET | grep -q "^$root/"; then
    log "mounts still present under $root"
    status=1
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap on the host"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null
fi

start=$(date +%s)
if [ -z "${TOKEND_CI_NO_CACHE:-}" ] && [ -s "$cache_tar" ]; then
  log "bare root from the cache $cache_tar"
  tar -xzf "$cache_tar" -C "$root"
else
  log "debootstrap --variant=minbase bookworm from the host's mirror"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap"; }
  if [ -z "${TOKEND_CI_NO_CACHE:-}" ]; then
    mkdir -p "$cache_dir"
    tar -czf "$cache_tar.tmp" -C "$root" . && mv "$cache_tar.tmp" "$cache_tar"
  fi
fi
log "bare root ready in $(( $(date +%s) - start )) s"

# What every real machine has and debootstrap leaves to the installer.
cat >"$root/etc/hosts" <<'EOF'
127.0.0.1	localhost
127.0.1.1	debian
::1	localhost ip6-localhost ip6-loopback
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
EOF
echo debian >"$root/etc/hostname"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
# The network this machine sits on, as any machine on it has it: where TLS to
# the package registries is inspected with a local CA (added to the host's trust
# store under /usr/local/share/ca-certificates), the root trusts it too; Node.js
# (npm) reads it from NODE_EXTRA_CA_CERTS, since it keeps its own CA list.
extra_ca_env=()
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  mkdir -p "$root/usr/local/share/ca-certificates" "$root/etc/ssl"
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  cat /usr/local/share/ca-certificates/*.crt >"$root/etc/ssl/local-ca.pem"
  extra_ca_env=(NODE_EXTRA_CA_CERTS=/etc/ssl/local-ca.pem)
fi

mkdir -p "$root/root/tokend"
chmod 700 "$root/root"
git -C "$repo" archive HEAD | tar -x -C "$root/root/tokend"

mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mount --make-rslave "$root/dev"

# A login shell's environment, as root on that machine; nothing of the host's.
inside() {
  chroot "$root" /usr/bin/env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    "${extra_ca_env[@]}" "$@"
}

# Starts README command 1, waits for `tokenctl ping`, stops tokend with SIGTERM.
run_daemon_once() {
  local label=$1 out=$work/$2 t0 pid status
  t0=$(date +%s)
  setsid bash -c 'exec "$@"' _ chroot "$root" /usr/bin/env -i HOME=/root USER=root \
    LOGNAME=root SHELL=/bin/bash PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 "${extra_ca_env[@]}" bash -c "cd /root/tokend && $run_command" >"$out" 2>&1 &
  pid=$!
  local deadline=$(( t0 + 40 * 60 ))
  until inside /root/tokend/build/ctl/tokenctl ping >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 40 "$out" >&2
      die "README command 1 ($label) ended before tokenctl ping answered"
    fi
    [ "$(date +%s)" -lt "$deadline" ] || { tail -n 40 "$out" >&2; die "tokenctl ping: no answer in 40 min"; }
    sleep 1
  done
  log "README command 1, $label: tokenctl ping answered after $(( $(date +%s) - t0 )) s"
  # SIGTERM to tokend alone: the shells above it then pass its exit code on.
  local daemon_pid
  daemon_pid=$(pid_inside tokend) || die "tokenctl ping answered but no tokend runs inside the root"
  kill -TERM "$daemon_pid"
  status=0
  wait "$pid" || status=$?
  [ "$status" -eq 0 ] || { tail -n 20 "$out" >&2; die "tokend exited $status on SIGTERM (expected 0)"; }
  log "README command 1, $label: tokend stopped by SIGTERM, exit 0"
}

run_daemon_once "first run" run1.log
grep -q 'installing packages' "$work/run1.log" || die "the first run did not install packages"
run_daemon_once "second run" run2.log
grep -q 'dependencies already installed' "$work/run2.log" ||
  { cat "$work/run2.log" >&2; die "the second run did not skip apt"; }

t0=$(date +%s)
log "README command 2 (fewer kill -9 rounds here: TOKEND_CRASH_ROUNDS=${TOKEND_CRASH_ROUNDS:-50})"
status=0
inside TOKEND_CRASH_ROUNDS="${TOKEND_CRASH_ROUNDS:-50}" bash -c "cd /root/tokend && $test_command" ||
  status=$?
log "README command 2 exited $status after $(( $(date +%s) - t0 )) s"
[ "$status" -eq 0 ] || die "README command 2"
log "passed"

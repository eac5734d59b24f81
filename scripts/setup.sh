#!/usr/bin/env bash
# Installs tokend's dependencies (Debian 12 or newer) and builds it.
#
#   scripts/setup.sh [BUILD_DIR] [extra cmake args...]
#   scripts/setup.sh --deps-only        packages only, no build
#
# Idempotent and quick the second time: apt is skipped when every package is
# already installed, and the build is incremental. On Debian 12 (bookworm)
# SQLCipher 4 and Catch2 3 come from bookworm-backports, which is enabled by
# adding the suite to the machine's existing apt sources (no mirror is named
# here).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${1:-$repo/build}
[ "${1:-}" = --deps-only ] || shift || true

packages=(
  build-essential cmake ninja-build pkg-config python3
  libuv1-dev libcurl4-openssl-dev nlohmann-json3-dev
  libboost-dev libboost-program-options-dev libspdlog-dev libfmt-dev
  libsystemd-dev openssl libssl-dev  # libssl-dev: SHA-256 for PKCE, AES-256-GCM for the PostgreSQL store (libcrypto is already loaded via SQLCipher)
  libpq-dev  # the PostgreSQL store of server mode (store/, tokend_store_pg)
  postgresql-15  # its tests start a throwaway server from /usr/lib/postgresql/15/bin (tests/support/pg_server.cpp)
  curl  # docs examples call the proxy with curl
  systemd procps  # systemd-analyze and systemd-socket-activate for the unit tests; kill for ExecReload
  nodejs npm  # the interop tests run panva's oidc-provider (tests/interop, pinned by its package-lock.json)
  chromium  # the connect page's browser test: Debian's headless Chromium, driven by playwright-core (tests/connect)
  nginx  # that test's deployment: nginx terminates TLS, sets the user header and proxies to tokend's Unix socket
)
# Needed at a newer version than bookworm's own.
newer_packages=(libsqlcipher-dev libcatch2-dev catch2)

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

codename() {
  . /etc/os-release
  printf '%s' "${VERSION_CODENAME:-}"
}

installed_version() {
  dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null | sed -n 's/^install ok installed //p'
}

# Node.js with npm already on the machine from elsewhere (NodeSource's nodejs
# bundles npm and conflicts with Debian's npm package) is used as it is.
if command -v node >/dev/null && command -v npm >/dev/null; then
  for i in "${!packages[@]}"; do
    case ${packages[$i]} in nodejs | npm) unset 'packages[i]' ;; esac
  done
  packages=("${packages[@]}")
fi

needs_install() {
  local p
  for p in "${packages[@]}" "${newer_packages[@]}"; do
    [ -n "$(installed_version "$p")" ] || return 0
  done
  # SQLCipher must be 4.x and Catch2 3.x (bookworm's own are 3.4 and 2.x).
  case "$(installed_version libsqlcipher-dev)" in 4.*) ;; *) return 0 ;; esac
  case "$(installed_version libcatch2-dev)" in 3.*) ;; *) return 0 ;; esac
  return 1
}

install_packages() {
  if ! needs_install; then
    log "dependencies already installed"
    return
  fi
  local newer=("${newer_packages[@]}")
  if [ "$(codename)" = bookworm ]; then
    local rc=0
    "$repo/scripts/enable-backports.sh" || rc=$?
    [ "$rc" -le 1 ] || exit 1
    newer=("${newer_packages[@]/%//bookworm-backports}")
  fi
  log "installing packages"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${packages[@]}" "${newer[@]}"
}

build() {
  if [ ! -f "$build_dir/build.ninja" ]; then
    log "configuring $build_dir"
    cmake -S "$repo" -B "$build_dir" -G Ninja "$@" >/dev/null
  elif [ $# -gt 0 ]; then
    cmake "$build_dir" "$@" >/dev/null
  fi
  log "building $build_dir"
  cmake --build "$build_dir"
}

install_packages
[ "${1:-}" = --deps-only ] || build "$@"

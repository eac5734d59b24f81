#!/usr/bin/env bash
# Installs tokend (and tokenctl) for the current user and sets it up as a
# per-user service: a systemd user unit plus socket on Linux, a LaunchAgent on
# macOS. Run it again to update; --uninstall removes what it installed and
# keeps the database and key. See --help.
#
# Written for bash 3.2 as well (macOS /bin/bash): no associative arrays, no
# empty-array expansions under set -u.
set -euo pipefail

prog=${0##*/}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

label=dev.tokend.tokend
dropin_name=50-no-private-users.conf

usage() {
	cat <<EOF
Usage: $prog [OPTIONS]

Installs tokend and tokenctl for the current user and registers tokend as a
per-user service (systemd user units on Linux, a LaunchAgent on macOS).

Options:
  --prefix DIR   where the binaries go (default: ~/.local/bin)
  --from DIR     where the binaries come from: a build directory
                 (DIR/daemon/tokend, DIR/ctl/tokenctl) or a directory holding
                 tokend and tokenctl (default: $repo/build)
  --enable       also enable and start the service
  --no-enable    do not touch the service manager at all (no daemon-reload,
                 no launchctl); only install files and print the commands
                 (default: reload the manager's configuration and print the
                 command that enables the service)
  --uninstall    stop and remove the service and the binaries; the database,
                 key and config are kept
  --dry-run      print what would be done and change nothing
  --platform linux|macos
                 install for this platform instead of the running one (with
                 --no-enable or --dry-run, e.g. to preview the LaunchAgent)
  -h, --help     show this help

Linux:  binaries in ~/.local/bin, units in ~/.config/systemd/user/, data in
        ~/.local/share/tokend and ~/.config/tokend (created 0700).
macOS:  binaries in ~/.local/bin, ~/Library/LaunchAgents/$label.plist,
        logs in ~/Library/Logs/tokend/.
EOF
}

die() {
	echo "$prog: $*" >&2
	exit 1
}
usage_error() {
	echo "$prog: $*" >&2
	echo "Try '$prog --help'." >&2
	exit 2
}
warn() { echo "warning: $*" >&2; }

prefix=""
from=""
enable=default
action=install
dry_run=0
platform=""

while [ $# -gt 0 ]; do
	case $1 in
	--prefix | --from | --platform)
		[ $# -ge 2 ] || usage_error "$1 needs an argument"
		case $1 in
		--prefix) prefix=$2 ;;
		--from) from=$2 ;;
		--platform) platform=$2 ;;
		esac
		shift 2
		;;
	--prefix=*) prefix=${1#*=}; shift ;;
	--from=*) from=${1#*=}; shift ;;
	--platform=*) platform=${1#*=}; shift ;;
	--enable) enable=yes; shift ;;
	--no-enable) enable=no; shift ;;
	--uninstall) action=uninstall; shift ;;
	--dry-run | -n) dry_run=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage_error "unknown option: $1" ;;
	esac
done

if [ -z "$platform" ]; then
	case $(uname -s) in
	Linux) platform=linux ;;
	Darwin) platform=macos ;;
	*) die "unsupported system $(uname -s); only Linux (systemd) and macOS (launchd) are supported" ;;
	esac
fi
case $platform in
linux | macos) ;;
*) usage_error "--platform must be linux or macos, not '$platform'" ;;
esac
native=linux
[ "$(uname -s)" = Darwin ] && native=macos
if [ "$platform" != "$native" ] && [ "$enable" != no ] && [ "$dry_run" = 0 ]; then
	usage_error "installing for $platform on $native needs --no-enable (or --dry-run)"
fi

case ${HOME:-} in
/*) ;;
*) die "HOME must be set to an absolute path" ;;
esac
home=${HOME%/}

# Absolute path, without trailing slash. Paths end up in unit files and a
# plist, so characters that would need escaping there are refused.
absolute() {
	local p=$1
	case $p in
	/*) ;;
	*) p=$PWD/$p ;;
	esac
	while [ "${#p}" -gt 1 ] && [ "${p%/}" != "$p" ]; do p=${p%/}; done
	printf '%s\n' "$p"
}
check_path_chars() {
	case $2 in
	*[\"\\\`$'\n'$'\t']*) die "$1 '$2' contains a quote, backslash, backquote, tab or newline; choose another path" ;;
	esac
}

bindir=$(absolute "${prefix:-$home/.local/bin}")
check_path_chars "--prefix" "$bindir"
check_path_chars "HOME" "$home"

config_home=$home/.config
case ${XDG_CONFIG_HOME:-} in
/*) config_home=${XDG_CONFIG_HOME%/} ;;
esac

# --- output and actions ---------------------------------------------------------

tag=""
[ "$dry_run" = 1 ] && tag="[dry-run] "
say() { printf '%s%s\n' "$tag" "$*"; }

quote_cmd() {
	local out="" a
	for a in "$@"; do out="$out $(printf '%q' "$a")"; done
	printf '%s\n' "${out# }"
}

# run CMD...: run a command (or show it in a dry run); its status is returned.
run() {
	say "run: $(quote_cmd "$@")"
	[ "$dry_run" = 1 ] && return 0
	"$@"
}

file_mode() { stat -c %a "$1" 2>/dev/null || stat -f %Lp "$1"; }

changed=0

# ensure_dir DIR MODE: create DIR (mode MODE) if missing. An existing directory
# keeps its mode; for private directories a loose mode is reported, because
# tokend refuses it.
ensure_dir() {
	local dir=$1 mode=$2 private=${3:-}
	if [ -n "$private" ] && [ -L "$dir" ]; then
		warn "$dir is a symbolic link; tokend refuses it: replace it with a directory (mkdir -m $mode)"
		return 0
	fi
	if [ -d "$dir" ]; then
		if [ -n "$private" ] && [ "$(file_mode "$dir")" != "$mode" ]; then
			warn "$dir has mode $(file_mode "$dir"); tokend requires $mode: chmod $mode '$dir'"
		fi
		return 0
	fi
	[ -e "$dir" ] && die "$dir exists and is not a directory"
	say "mkdir: $dir ($mode)"
	[ "$dry_run" = 1 ] && return 0
	if [ -n "$private" ]; then
		(umask 077 && mkdir -p "$dir")
	else
		mkdir -p "$dir"
	fi
	chmod "$mode" "$dir"
}

# put_file SRC DEST MODE: copy SRC to DEST atomically (temporary file in the
# destination directory, then rename, so a running binary is never rewritten
# in place). Nothing happens when DEST already has that content and mode.
put_file() {
	local src=$1 dest=$2 mode=$3 what=${4:-$1}
	if [ -f "$dest" ] && cmp -s "$src" "$dest" && [ "$(file_mode "$dest")" = "$mode" ]; then
		say "unchanged: $dest"
		return 0
	fi
	say "install: $what -> $dest ($mode)"
	changed=1
	[ "$dry_run" = 1 ] && return 0
	local tmp
	tmp=$(mktemp "$dest.XXXXXX")
	if ! { cp "$src" "$tmp" && chmod "$mode" "$tmp" && mv -f "$tmp" "$dest"; }; then
		rm -f "$tmp"
		die "could not install $dest"
	fi
}

remove_file() {
	[ -e "$1" ] || [ -L "$1" ] || return 0
	say "remove: $1"
	changed=1
	[ "$dry_run" = 1 ] && return 0
	rm -f "$1"
}

scratch=$(mktemp -d "${TMPDIR:-/tmp}/tokend-install.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# render TEMPLATE OUT NAME=VALUE...: replace every @NAME@ by VALUE (already
# escaped for the target format by the caller).
render() {
	local template=$1 out=$2 kv name value script=$scratch/render.sed
	shift 2
	: >"$script"
	for kv in "$@"; do
		name=${kv%%=*}
		value=$(printf '%s' "${kv#*=}" | sed -e 's/[\\&|]/\\&/g')
		printf 's|@%s@|%s|g\n' "$name" "$value" >>"$script"
	done
	sed -f "$script" "$template" >"$out"
}

xml_escape() { printf '%s' "$1" | sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g'; }

# --- binaries ------------------------------------------------------------------

from=$(absolute "${from:-$repo/build}")
find_binary() {
	local name=$1 sub=$2
	if [ -x "$from/$sub/$name" ] && [ -f "$from/$sub/$name" ]; then
		printf '%s\n' "$from/$sub/$name"
	elif [ -x "$from/$name" ] && [ -f "$from/$name" ]; then
		printf '%s\n' "$from/$name"
	fi
}

install_binaries() {
	local tokend_src tokenctl_src
	tokend_src=$(find_binary tokend daemon)
	[ -n "$tokend_src" ] || die "no tokend binary in $from (looked for $from/daemon/tokend and $from/tokend); build it first (./scripts/setup.sh) or pass --from DIR"
	tokenctl_src=$(find_binary tokenctl ctl)

	case $platform:$bindir/ in
	linux:/tmp/* | linux:/var/tmp/*)
		warn "$bindir is under /tmp or /var/tmp, which tokend.service cannot see (PrivateTmp=yes); the service will not start from there" ;;
	esac
	ensure_dir "$bindir" 755
	put_file "$tokend_src" "$bindir/tokend" 755
	if [ -n "$tokenctl_src" ]; then
		put_file "$tokenctl_src" "$bindir/tokenctl" 755
	else
		say "skip: tokenctl (not built in $from)"
	fi
	case ":${PATH:-}:" in
	*":$bindir:"*) ;;
	*) echo "note: $bindir is not in your PATH; add it to use tokenctl" ;;
	esac
}

uninstall_binaries() {
	remove_file "$bindir/tokend"
	remove_file "$bindir/tokenctl"
}

# --- Linux: systemd user units ----------------------------------------------------

unitdir=$config_home/systemd/user
dropin_dir=$unitdir/tokend.service.d
datadir=$home/.local/share/tokend
confdir=$config_home/tokend

# ExecStart's executable path: specifiers (%) are expanded there, variables
# ($) are not.
systemd_escape() { printf '%s' "$1" | sed -e 's/%/%%/g'; }

# True when an unprivileged process may create a user namespace and mount
# inside it, which PrivateUsers=yes (and the mount sandboxing behind it) needs.
userns_available() {
	command -v unshare >/dev/null 2>&1 || return 0 # cannot tell: keep the default
	unshare --user --map-root-user --mount true >/dev/null 2>&1
}

manager_reachable() {
	command -v systemctl >/dev/null 2>&1 && systemctl --user show-environment >/dev/null 2>&1
}

linux_units() {
	ensure_dir "$unitdir" 755

	local service=$scratch/tokend.service
	if [ "$bindir" = "$home/.local/bin" ]; then
		cp "$repo/systemd/tokend.service" "$service"
	else
		local exec_path
		exec_path=$(systemd_escape "$bindir/tokend")
		sed -e "s|^ExecStart=%h/\.local/bin/tokend\$|ExecStart=\"$(printf '%s' "$exec_path" | sed -e 's/[\\&|]/\\&/g')\"|" \
			"$repo/systemd/tokend.service" >"$service"
		grep -q '^ExecStart="' "$service" || die "systemd/tokend.service has no 'ExecStart=%h/.local/bin/tokend' line to rewrite"
	fi
	put_file "$service" "$unitdir/tokend.service" 644 "$repo/systemd/tokend.service"
	put_file "$repo/systemd/tokend.socket" "$unitdir/tokend.socket" 644

	if userns_available; then
		remove_file "$dropin_dir/$dropin_name"
		if [ "$dry_run" = 0 ] && [ -d "$dropin_dir" ]; then
			rmdir "$dropin_dir" 2>/dev/null || true # keeps the user's own drop-ins
		fi
	else
		warn "this system does not let unprivileged users create user namespaces (unshare --user --map-root-user --mount failed);"
		warn "tokend.service would fail with 217/USER, so PrivateUsers=no is set in $dropin_dir/$dropin_name."
		warn "ProtectSystem=, ProtectHome=, PrivateTmp= are then NOT enforced; the seccomp-based hardening still is."
		cat >"$scratch/$dropin_name" <<'EOF'
# Written by scripts/install-service.sh: unprivileged user namespaces are not
# available on this system, and with PrivateUsers=yes tokend.service would not
# start (217/USER). Without a user namespace the user manager cannot apply
# ProtectSystem=, ProtectHome=, PrivateTmp= and ReadWritePaths=; the
# seccomp-based hardening still applies. Delete this file and re-run the
# installer once user namespaces are allowed.
[Service]
PrivateUsers=no
EOF
		ensure_dir "$dropin_dir" 755
		put_file "$scratch/$dropin_name" "$dropin_dir/$dropin_name" 644 "(generated drop-in)"
	fi

	# The service creates these itself on start (ExecStartPre=+mkdir); doing it
	# here too means the first start needs nothing from outside the sandbox.
	ensure_dir "$datadir" 700 private
	ensure_dir "$confdir" 700 private
}

linux_enable_hint() {
	echo
	echo "To start tokend now and at every login:"
	echo "    systemctl --user enable --now tokend.socket tokend.service"
	echo "Status and logs:"
	echo "    systemctl --user status tokend.service; journalctl --user -u tokend.service"
	if [ "$(id -u)" != 0 ] && command -v loginctl >/dev/null 2>&1; then
		echo "To keep it running while you are logged out (e.g. on a server):"
		echo "    loginctl enable-linger $(id -un)"
	fi
}

linux_install() {
	install_binaries
	linux_units

	case $enable in
	no)
		echo
		echo "Then tell systemd about the units:"
		echo "    systemctl --user daemon-reload"
		linux_enable_hint
		;;
	default)
		if [ "$dry_run" = 1 ] || manager_reachable; then
			run systemctl --user daemon-reload
			linux_enable_hint
		else
			warn "no systemd user manager is reachable (systemctl --user failed); the units are installed."
			echo "In your login session, run:"
			echo "    systemctl --user daemon-reload"
			linux_enable_hint
		fi
		;;
	yes)
		if [ "$dry_run" = 0 ] && ! manager_reachable; then
			die "no systemd user manager is reachable (systemctl --user failed); run this from your login session, or use --no-enable"
		fi
		local was_active=0
		if [ "$dry_run" = 0 ] && systemctl --user --quiet is-active tokend.service; then
			was_active=1
		fi
		run systemctl --user daemon-reload
		if ! run systemctl --user enable --now tokend.socket tokend.service; then
			linux_diagnose
			exit 1
		fi
		if [ "$was_active" = 1 ] && [ "$changed" = 1 ]; then
			run systemctl --user restart tokend.service || {
				linux_diagnose
				exit 1
			}
		fi
		[ "$dry_run" = 1 ] || systemctl --user --no-pager status tokend.service || true
		;;
	esac
}

linux_diagnose() {
	local status
	status=$(systemctl --user show -p ExecMainStatus --value tokend.service 2>/dev/null || true)
	echo "tokend.service did not start; see: journalctl --user -u tokend.service" >&2
	if [ "$status" = 217 ]; then
		echo "Exit status 217/USER: systemd could not create the user namespace for PrivateUsers=yes." >&2
		echo "Allow unprivileged user namespaces, or add a drop-in with PrivateUsers=no:" >&2
		echo "    systemctl --user edit tokend.service   # [Service] PrivateUsers=no" >&2
	fi
}

linux_uninstall() {
	if [ "$enable" != no ]; then
		if [ "$dry_run" = 1 ] || manager_reachable; then
			run systemctl --user disable --now tokend.service tokend.socket || true
		else
			warn "no systemd user manager is reachable; if tokend is running, stop it with: systemctl --user disable --now tokend.service tokend.socket"
		fi
	fi
	remove_file "$unitdir/tokend.service"
	remove_file "$unitdir/tokend.socket"
	remove_file "$dropin_dir/$dropin_name"
	if [ -d "$dropin_dir" ] && [ "$dry_run" = 0 ]; then
		rmdir "$dropin_dir" 2>/dev/null || echo "note: kept $dropin_dir (it holds your own drop-ins)"
	fi
	if [ "$enable" != no ] && { [ "$dry_run" = 1 ] || manager_reachable; }; then
		run systemctl --user daemon-reload
	fi
	uninstall_binaries
	echo
	echo "Kept the database in $datadir and the key and config in $confdir."
	echo "Delete them only if you want to lose every stored credential."
}

# --- macOS: LaunchAgent ---------------------------------------------------------------

agentdir=$home/Library/LaunchAgents
plist=$agentdir/$label.plist
logdir=$home/Library/Logs/tokend

macos_socket() {
	local t=${TMPDIR:-}
	if [ -z "$t" ] && [ "$native" = macos ]; then
		t=$(getconf DARWIN_USER_TEMP_DIR 2>/dev/null || true)
	fi
	case $t in
	/*) printf '%s/tokend/tokend.sock\n' "${t%/}" ;;
	*) printf '/tmp/tokend-%s/tokend.sock\n' "$(id -u)" ;;
	esac
}

macos_loaded() {
	[ "$native" = macos ] && launchctl print "gui/$(id -u)/$label" >/dev/null 2>&1
}

macos_install() {
	install_binaries
	local socket
	socket=$(macos_socket)
	check_path_chars "socket path" "$socket"
	ensure_dir "$agentdir" 755
	ensure_dir "$logdir" 700 private
	render "$repo/launchd/$label.plist" "$scratch/$label.plist" \
		"BINDIR=$(xml_escape "$bindir")" \
		"HOME=$(xml_escape "$home")" \
		"SOCKET=$(xml_escape "$socket")"
	if grep -q '@[A-Z]*@' "$scratch/$label.plist"; then
		die "launchd/$label.plist has a placeholder this script does not know: $(grep -o '@[A-Z]*@' "$scratch/$label.plist" | head -n 1)"
	fi
	put_file "$scratch/$label.plist" "$plist" 644 "$repo/launchd/$label.plist"

	local domain
	domain=gui/$(id -u)
	case $enable in
	yes)
		if [ "$dry_run" = 1 ] || macos_loaded; then
			run launchctl bootout "$domain/$label" || true
		fi
		run launchctl bootstrap "$domain" "$plist" || die "launchctl bootstrap failed (it needs your GUI login session, not ssh)"
		;;
	*)
		echo
		echo "To start tokend now and at every login:"
		if macos_loaded; then
			echo "    launchctl bootout $domain/$label"
		fi
		echo "    launchctl bootstrap $domain $(printf '%q' "$plist")"
		echo "Logs: $logdir/tokend.log; socket: $socket"
		;;
	esac
}

macos_uninstall() {
	if [ "$enable" != no ] && { [ "$dry_run" = 1 ] || macos_loaded; }; then
		run launchctl bootout "gui/$(id -u)/$label" || true
	fi
	remove_file "$plist"
	uninstall_binaries
	echo
	echo "Kept the database and key in $home/Library/Application Support/tokend and the logs in $logdir."
}

"${platform}_${action}"

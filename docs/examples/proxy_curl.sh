#!/bin/sh
# Calls through tokend's proxy with curl over the Unix socket: no token in
# the command line, the shell history or curl's memory.
#
#   sh proxy_curl.sh [PROFILE]                (default: jira)
set -eu
profile=${1:-jira}
# Where tokend listens (Linux; on macOS it is $TMPDIR/tokend/tokend.sock).
if [ -n "${TOKEND_SOCKET:-}" ]; then
  SOCK=$TOKEND_SOCKET
elif [ -n "${XDG_RUNTIME_DIR:-}" ]; then
  SOCK=$XDG_RUNTIME_DIR/tokend/tokend.sock
else
  SOCK=/tmp/tokend-$(id -u)/tokend.sock
fi
# The host name in the URL is not used; the path is /v1/proxy/PROFILE/...
base="http://tokend/v1/proxy/$profile"

# Who am I?
curl -sS --fail-with-body --unix-socket "$SOCK" "$base/jira/rest/api/3/myself"
echo

# Create an issue from a JSON file (streamed from disk, whatever its size).
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
cat >"$tmp" <<'JSON'
{"fields": {"project": {"key": "DEMO"}, "summary": "Filed with curl through tokend", "issuetype": {"name": "Task"}}}
JSON
curl -sS --fail-with-body --unix-socket "$SOCK" -H "Content-Type: application/json" \
  --data-binary "@$tmp" "$base/jira/rest/api/3/issue"
echo

# The same calls with tokenctl, which also takes care of the socket:
#   tokenctl api "$profile" GET jira/rest/api/3/myself
#   tokenctl api "$profile" POST jira/rest/api/3/issue --data "@$tmp"

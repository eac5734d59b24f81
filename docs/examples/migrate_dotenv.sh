#!/bin/sh
# Hand a .env-based token manager's token set over to tokend.
#
#   sh migrate_dotenv.sh PROFILE ENV_FILE [more tokenctl import options]
#
# 1. tokenctl import reads JIRA_OAUTH_CLIENT_ID, _CLIENT_SECRET,
#    _REDIRECT_URI, _ACCESS_TOKEN and _REFRESH_TOKEN (and the site, scopes,
#    cloud id and expiry when present) from ENV_FILE, and adds a dotenv sink:
#    from now on tokend rewrites JIRA_OAUTH_ACCESS_TOKEN in ENV_FILE after
#    every refresh, leaving every other line as it is.
# 2. The refresh token and client secret are deleted from ENV_FILE: tokend
#    holds them now, encrypted, and rotates the refresh token; a stale copy
#    could only break the rotation chain if the old token manager ran again.
set -eu
profile=$1
env_file=$2
shift 2

tokenctl import "$profile" --dotenv "$env_file" \
  --sink-dotenv "$env_file=JIRA_OAUTH_ACCESS_TOKEN" "$@"

tmp="$env_file.tokend.$$"
grep -v -E '^[[:space:]]*(export[[:space:]]+)?JIRA_OAUTH_(REFRESH_TOKEN|CLIENT_SECRET)[[:space:]]*=' \
  "$env_file" >"$tmp" || true
chmod 600 "$tmp"
mv "$tmp" "$env_file"

tokenctl status "$profile"

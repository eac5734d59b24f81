#!/bin/sh
# Hand a .env-based token manager's token set over to tokend.
#
#   sh migrate_dotenv.sh PROFILE ENV_FILE [more tokenctl import options]
#
# Stop the old token manager first (its cron job, timer or loop): from here
# on tokend refreshes, and every refresh replaces the refresh token.
#
# 1. The refresh token and client secret leave ENV_FILE: tokend holds them
#    from now on, encrypted. A stale copy could only break the rotation chain
#    if the old token manager ran again.
# 2. tokenctl import takes JIRA_OAUTH_CLIENT_ID, _CLIENT_SECRET,
#    _REDIRECT_URI, _ACCESS_TOKEN and _REFRESH_TOKEN (and the site, scopes,
#    cloud id and expiry when present) from a private copy of the original,
#    and adds a dotenv sink: tokend rewrites JIRA_OAUTH_ACCESS_TOKEN in
#    ENV_FILE after every refresh and leaves every other line as it is.
# If the import fails, ENV_FILE is put back as it was.
set -eu
profile=$1
env_file=$2
shift 2

original="$env_file.before-tokend"
(umask 077 && cp "$env_file" "$original")
trap 'rm -f "$original"' EXIT

stripped="$env_file.tokend.$$"
grep -v -E '^[[:space:]]*(export[[:space:]]+)?JIRA_OAUTH_(REFRESH_TOKEN|CLIENT_SECRET)[[:space:]]*=' \
  "$original" >"$stripped" || true
chmod 600 "$stripped"
mv "$stripped" "$env_file"

if ! tokenctl import "$profile" --dotenv "$original" \
    --sink-dotenv "$env_file=JIRA_OAUTH_ACCESS_TOKEN" "$@"; then
  cp "$original" "$env_file"
  echo "migrate_dotenv.sh: nothing changed, $env_file is as it was" >&2
  exit 1
fi
tokenctl status "$profile"

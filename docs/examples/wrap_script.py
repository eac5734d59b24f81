#!/usr/bin/env python3
"""An existing script that reads its Jira token from the environment, the way
scripts built around a .env token manager do. Nothing in it knows about
tokend: `tokenctl exec jira -- python3 wrap_script.py` hands it a fresh token.

    JIRA_OAUTH_ACCESS_TOKEN  the OAuth access token (tokenctl exec sets it for
                             Atlassian OAuth profiles)
    JIRA_OAUTH_CLOUD_ID      the site's cloud id (set too, once tokend knows it)
    ATLASSIAN_API_GATEWAY    optional: the gateway instead of https://api.atlassian.com
    JIRA_API_BASE            optional: the whole API base URL instead of
                             $ATLASSIAN_API_GATEWAY/ex/jira/$JIRA_OAUTH_CLOUD_ID
"""
import json
import os
import sys
import urllib.request

try:
    # python-dotenv's load_dotenv() does not override variables that are
    # already set, so the token tokenctl exec put in the environment wins over
    # a stale one left in .env.
    from dotenv import load_dotenv
    load_dotenv()
except ImportError:
    pass


def api_base():
    base = os.environ.get("JIRA_API_BASE")
    if base:
        return base.rstrip("/")
    gateway = os.environ.get("ATLASSIAN_API_GATEWAY", "https://api.atlassian.com")
    return f"{gateway}/ex/jira/{os.environ['JIRA_OAUTH_CLOUD_ID']}"


def jira(path):
    request = urllib.request.Request(f"{api_base()}/{path}", headers={
        "Authorization": "Bearer " + os.environ["JIRA_OAUTH_ACCESS_TOKEN"],
        "Accept": "application/json",
    })
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def main():
    me = jira("rest/api/3/myself")
    print(f"Logged in to Jira as {me['displayName']} ({me['accountId']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

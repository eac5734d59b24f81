#!/usr/bin/env python3
"""A minimal stdio MCP server standing in for an existing Python one: one
tool, jira_whoami, that calls Jira with the token in JIRA_OAUTH_ACCESS_TOKEN.
Claude Code starts it through `tokenctl exec` (see mcp-stdio.json), which
puts a fresh token in the environment and passes stdin/stdout through.

The environment is filled once, when the server starts: `--min-valid 1800`
in mcp-stdio.json makes the token last at least 30 minutes from then. A
server that runs longer than its token (an Atlassian access token lives an
hour) should fetch the token per call instead: see token_helper.py."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wrap_script import jira  # noqa: E402  (the same Jira call as the plain script)

TOOLS = [{
    "name": "jira_whoami",
    "description": "The Jira account this server acts as",
    "inputSchema": {"type": "object", "properties": {}},
}]


def handle(message):
    method = message.get("method")
    if method == "initialize":
        return {"protocolVersion": message["params"].get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "jira-example", "version": "1.0"}}
    if method == "tools/list":
        return {"tools": TOOLS}
    if method == "tools/call" and message["params"]["name"] == "jira_whoami":
        me = jira("rest/api/3/myself")
        return {"content": [{"type": "text", "text": f"{me['displayName']} ({me['accountId']})"}]}
    raise ValueError(f"unsupported: {method}")


def main():
    for line in sys.stdin:
        message = json.loads(line)
        if "id" not in message:
            continue  # a notification (notifications/initialized)
        try:
            reply = {"jsonrpc": "2.0", "id": message["id"], "result": handle(message)}
        except Exception as e:  # report it to the client rather than die
            reply = {"jsonrpc": "2.0", "id": message["id"], "error": {"code": -32603, "message": str(e)}}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

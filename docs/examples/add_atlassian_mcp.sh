#!/bin/sh
# Let tokend hold the token for Atlassian's remote MCP server, for Claude
# Code's headersHelper (docs/claude-code-mcp.md).
#
#   sh add_atlassian_mcp.sh [more tokenctl add options]
set -eu
MCP_SERVER=${MCP_SERVER:-https://mcp.atlassian.com/v1/sse}

# tokend discovers the server's authorization server, registers itself as a
# client and asks for tokens bound to the server (RFC 9728, 7591, 8707).
tokenctl add atlassian-mcp --kind oauth2 --provider mcp --mcp-server "$MCP_SERVER" "$@"

# Opens the browser to approve tokend's access (--no-browser on a remote
# machine: paste the URL the browser ends on).
tokenctl login atlassian-mcp

# What Claude Code will run: prints {"Authorization": "Bearer ..."}.
tokenctl headers atlassian-mcp >/dev/null
echo "atlassian-mcp is ready; point headersHelper at: tokenctl headers atlassian-mcp"

#!/usr/bin/env python3
"""Calls through tokend's proxy from Python's standard library, over the Unix
socket: the token never reaches this process.

    python3 proxy_python.py [PROFILE]        (default: jira)
"""
import http.client
import json
import os
import socket
import sys


def tokend_socket():
    """Where tokend listens (the rule tokend and tokenctl use): TOKEND_SOCKET, else
    $TMPDIR/tokend/tokend.sock on macOS, else $XDG_RUNTIME_DIR/tokend/tokend.sock, else
    /tmp/tokend-$UID/tokend.sock."""
    env = os.environ
    if env.get("TOKEND_SOCKET"):
        return env["TOKEND_SOCKET"]
    if sys.platform == "darwin" and os.path.isabs(env.get("TMPDIR", "")):
        return os.path.join(env["TMPDIR"], "tokend", "tokend.sock")
    if os.path.isabs(env.get("XDG_RUNTIME_DIR", "")):
        return os.path.join(env["XDG_RUNTIME_DIR"], "tokend", "tokend.sock")
    return f"/tmp/tokend-{os.getuid()}/tokend.sock"


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket: everything else (keep-alive, chunked
    bodies, streamed reads) is http.client's own."""

    def __init__(self, path, timeout=60):
        super().__init__("tokend", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


class Tokend:
    def __init__(self, profile):
        self.profile = profile
        self.conn = UnixHTTPConnection(tokend_socket())

    def request(self, method, path, body=None, headers=None):
        """-> (status, parsed JSON or None). `path` is what follows the profile, e.g.
        "jira/rest/api/3/myself"."""
        headers = dict(headers or {}, Accept="application/json")
        if body is not None:
            body = json.dumps(body)
            headers["Content-Type"] = "application/json"
        self.conn.request(method, f"/v1/proxy/{self.profile}/{path}", body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None

    def download(self, path, destination):
        """Streams a (possibly large) answer to a file, 64 KiB at a time."""
        self.conn.request("GET", f"/v1/proxy/{self.profile}/{path}")
        response = self.conn.getresponse()
        with open(destination, "wb") as out:
            while chunk := response.read(65536):
                out.write(chunk)
        return response.status


def main():
    jira = Tokend(sys.argv[1] if len(sys.argv) > 1 else "jira")
    status, me = jira.request("GET", "jira/rest/api/3/myself")
    if status >= 400:
        # tokend's own errors are {"error": {"code", "message"}}; upstream errors pass through.
        print(f"HTTP {status}: {me}", file=sys.stderr)
        return 1
    print(f"Logged in to Jira as {me['displayName']}")
    status, issue = jira.request("POST", "jira/rest/api/3/issue", {
        "fields": {"project": {"key": "DEMO"}, "summary": "Created through tokend", "issuetype": {"name": "Task"}}})
    if status != 201:
        print(f"creating an issue: HTTP {status}: {issue}", file=sys.stderr)
        return 1
    status, fetched = jira.request("GET", f"jira/rest/api/3/issue/{issue['key']}")
    print(f"{issue['key']}: {fetched['fields']['summary']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

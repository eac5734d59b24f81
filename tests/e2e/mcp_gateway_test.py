"""The MCP gateway end to end: `tokenctl mcp PROFILE`
between an MCP client on stdio and a real MCP server built on the official
MCP TypeScript SDK (v2, from npm), through the real tokend, with the fake
upstream as the authorization server (the MCP server checks every token by
RFC 7662 introspection there, so an expired or revoked token is refused
exactly when the authorization server says so).

    mcp_gateway_test.py --tokend PATH --tokenctl PATH --work-dir DIR

The work dir receives tests/mcp (package.json, package-lock.json, the server
and the SDK client) and `npm ci` installs the SDK there once.

Covered, for a 2025-11-25 session server and a 2026-07-28 stateless one: the
first use of a profile that never signed in (the bridge starts the login),
tools, notifications that arrive before the result (the server holds the
rest behind a gate, so "before" is shown by construction), the GET stream,
x-mcp-header parameters, one session kept across several token lifetimes
(401, refresh, replay), a revoked grant giving a JSON-RPC error that names
the login command while the bridge keeps running, --wait, a session the
server forgot, SIGTERM and EOF ending cleanly with the session deleted, bad
input, and the SDK's own client driving the bridge.
"""
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
MCP_SRC = os.path.join(HERE, "..", "mcp")
sys.path.insert(0, os.path.join(HERE, "..", "fake_upstream"))

from client import FakeUpstream  # noqa: E402
from harness import (SANITIZER_MARKERS, Daemon, XdgTree, binaries, free_port, install_packages,  # noqa: E402
                     run_ctl, stop_process, unix_request, wait_for, work_dir_arg)

WORK = work_dir_arg(os.path.join(HERE, "..", "..", "build", "tests", "mcp"))
TOKEND, TOKENCTL = binaries()
BROWSER = os.path.join(HERE, "fake_browser.py")
DEADLINE = 30
LOGIN_REQUIRED = -32001
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "e2e", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}}


class McpServer:
    """tests/mcp/server.mjs (the official SDK) on 127.0.0.1; its event lines collected."""

    def __init__(self, mode, issuer, ca_file):
        env = dict(os.environ, MCP_MODE=mode, MCP_ISSUER=issuer, NODE_EXTRA_CA_CERTS=ca_file)
        self.proc = subprocess.Popen(["node", os.path.join(WORK, "server.mjs")], cwd=WORK, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.events = []
        self.stderr = []
        self._ready = queue.Queue()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()
        try:
            ready = self._ready.get(timeout=DEADLINE)
        except queue.Empty:
            self.stop()
            raise RuntimeError("the MCP server did not start:\n" + "".join(self.stderr))
        self.url = ready["url"]
        self.base = self.url.rsplit("/", 1)[0]

    def _read(self):
        for line in self.proc.stdout:
            obj = json.loads(line)
            if obj.get("ready"):
                self._ready.put(obj)
            else:
                with self._lock:
                    self.events.append(obj)

    def seen(self, event):
        with self._lock:
            return [e for e in self.events if e["event"] == event]

    def control(self, method, path):
        req = urllib.request.Request(self.base + path, method=method, data=b"" if method == "POST" else None)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as r:
            return json.loads(r.read())

    def log(self):
        return self.control("GET", "/control/log")

    def stop(self):
        stop_process(self.proc)
        self.proc.stdout.close()
        self.proc.stderr.close()


class Bridge:
    """`tokenctl mcp PROFILE` with pipes: JSON-RPC lines in, every stdout line checked to be JSON-RPC."""

    def __init__(self, env, profile, *extra):
        self.proc = subprocess.Popen([TOKENCTL, "mcp", profile, *extra], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.messages = queue.Queue()
        self.raw = []
        self.err = []
        self.next_id = 1
        self._readers = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=lambda: self.err.extend(l.decode("utf-8", "replace")
                                                                         for l in self.proc.stderr), daemon=True)]
        for t in self._readers:
            t.start()

    def _read(self):
        for line in self.proc.stdout:
            self.raw.append(line)
            self.messages.put(json.loads(line))

    def send(self, obj):
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def request(self, method, params=None, modern=False):
        """Sends a request; returns its id."""
        rid = self.next_id
        self.next_id += 1
        msg = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None or modern:
            msg["params"] = dict(params or {})
            if modern:
                msg["params"]["_meta"] = META
        self.send(msg)
        return rid

    def next(self, deadline=DEADLINE):
        try:
            return self.messages.get(timeout=deadline)
        except queue.Empty:
            raise AssertionError(f"no message from the bridge within {deadline}s; stderr:\n{''.join(self.err)}")

    def answer(self, rid, others=None, deadline=DEADLINE):
        """The response to `rid`; messages before it go to `others`."""
        end = time.monotonic() + deadline
        while True:
            m = self.next(max(0.1, end - time.monotonic()))
            if m.get("id") == rid and "method" not in m:
                return m
            if others is not None:
                others.append(m)

    def call(self, method, params=None, modern=False):
        return self.answer(self.request(method, params, modern))

    def initialize(self):
        r = self.call("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                     "clientInfo": {"name": "e2e", "version": "1"}})
        assert "result" in r, r
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return r

    def wait(self, deadline=DEADLINE):
        """The exit code, once everything the bridge wrote has been read."""
        code = self.proc.wait(timeout=deadline)
        for t in self._readers:
            t.join(timeout=deadline)
        return code

    def close(self, deadline=DEADLINE):
        """EOF on stdin; the exit code."""
        self.proc.stdin.close()
        return self.wait(deadline)

    def stderr(self):
        return "".join(self.err)


class McpGatewayTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        why = install_packages(MCP_SRC, WORK, ("server.mjs", "client.mjs"))
        if why:
            print(f"MCP gateway tests skipped: {why}", file=sys.stderr)
            raise unittest.SkipTest(why)
        cls.up = FakeUpstream(quiet=True)
        cls.servers = {mode: McpServer(mode, cls.up.base_url, cls.up.ca_file) for mode in ("session", "stateless")}

    @classmethod
    def tearDownClass(cls):
        for s in getattr(cls, "servers", {}).values():
            s.stop()
        if getattr(cls, "up", None):
            cls.up.stop()

    def setUp(self):
        self.up.reset()
        self.xdg = XdgTree()
        self.port = free_port()
        self.redirect = f"http://127.0.0.1:{self.port}/callback"
        self.env = dict(self.xdg.env, BROWSER=BROWSER, FAKE_BROWSER_CA=self.up.ca_file)
        self.daemon = Daemon(TOKEND, self.env, ["--ca-bundle", self.up.ca_file, "--http-timeout", "5s"])
        self.daemon.wait_ready(self.xdg.socket)
        self.bridges = []
        self.sessions_before = {m: len(s.seen("session_created")) for m, s in self.servers.items()}
        self.log_before = len(self.servers["session"].log())

    def tearDown(self):
        for b in self.bridges:
            if b.proc.poll() is None:
                b.proc.kill()
            b.proc.wait()
            for f in (b.proc.stdin, b.proc.stdout, b.proc.stderr):
                if not f.closed:
                    f.close()
        self.assertEqual(self.daemon.stop(), 0, self.daemon.output())
        issued = [t["token"] for t in self.up.tokens() if t.get("token")]
        out = self.daemon.output()
        for b in self.bridges:
            for marker in SANITIZER_MARKERS + ("ThreadSanitizer",):
                self.assertNotIn(marker, b.stderr())
            text = b.stderr() + "".join(l.decode("utf-8", "replace") for l in b.raw)
            for t in issued:
                self.assertNotIn(t, text, "a token reached the bridge's output")
        for t in issued:
            self.assertNotIn(t, out, "a token reached tokend's log")
        self.xdg.close()

    # -- helpers ---------------------------------------------------------------------

    def ctl(self, *args, env=None):
        return run_ctl(TOKENCTL, env or self.env, *args)

    def add(self, mode, name="m"):
        r = self.ctl("add", name, "--kind", "oauth2", "--provider", "mcp", "--mcp-server", self.servers[mode].url,
                     "--redirect-uri", self.redirect)
        self.assertEqual(r.returncode, 0, r.stderr)

    def login(self, name="m"):
        r = self.ctl("login", name)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def bridge(self, *extra, name="m", env=None):
        b = Bridge(env or self.env, name, *extra)
        self.bridges.append(b)
        return b

    def state(self, name="m"):
        status, body = unix_request(self.xdg.socket, "GET", f"/v1/profiles/{name}")
        self.assertEqual(status, 200, body)
        return json.loads(body)["state"]

    def sessions_created(self, mode="session"):
        return self.servers[mode].seen("session_created")[self.sessions_before[mode]:]

    def grant_refreshes(self):
        return sum(g.get("refreshes", 0) for g in self.up.grants())

    def expire_tokens(self):
        """Moves the authorization server's clock past every access token's expiry."""
        self.up.advance_clock(3700)

    def assert_tool_works(self, b, modern=False, text="hello"):
        r = b.call("tools/call", {"name": "echo", "arguments": {"text": text}}, modern)
        self.assertEqual(r.get("result", {}).get("content"), [{"type": "text", "text": text}], r)

    # -- tests -----------------------------------------------------------------------

    def test_first_use_logs_in_then_a_session_works_and_ends_cleanly(self):
        self.add("session")
        self.assertEqual(self.state(), "empty")
        b = self.bridge()
        # The bridge starts the login itself (BROWSER completes it); the first
        # request waits for it instead of failing.
        r = b.initialize()
        self.assertEqual(r["result"]["protocolVersion"], "2025-11-25")
        self.assertIn("has never signed in", b.stderr())
        self.assertEqual(self.state(), "valid")
        tools = b.call("tools/list")["result"]["tools"]
        self.assertEqual(sorted(t["name"] for t in tools), ["echo", "notify", "region", "stamp"])
        self.assert_tool_works(b)
        r = b.call("tools/call", {"name": "region", "arguments": {"region": "eu-1", "query": "q"}})
        self.assertEqual(r["result"]["content"][0]["text"], "eu-1: q")
        # The GET stream carries what the server sends on its own.
        wait_for(lambda: any(e["method"] == "GET" and e["ok"] for e in self.servers["session"].log()), "the GET stream")
        self.servers["session"].control("POST", "/control/list-changed")
        self.assertEqual(b.next()["method"], "notifications/tools/list_changed")
        sessions = self.sessions_created()
        self.assertEqual(len(sessions), 1)
        sid = sessions[0]["session"]
        self.assertEqual(b.close(), 0, b.stderr())
        # EOF deleted the session at the server.
        wait_for(lambda: any(e["session"] == sid for e in self.servers["session"].seen("session_deleted")),
                 "the session's DELETE")
        log = self.servers["session"].log()[self.log_before:]
        after_init = [e for e in log if e["ok"] and e["mcp"] not in (None, "initialize")]
        self.assertTrue(all(e["headers"].get("mcp-session-id") == sid for e in after_init), after_init)
        self.assertTrue(all(e["headers"].get("mcp-protocol-version") == "2025-11-25" for e in after_init))
        region = [e for e in log if e["mcp"] == "tools/call" and e["headers"].get("mcp-name") == "region"]
        self.assertEqual(region[0]["headers"].get("mcp-param-region"), "eu-1")
        for line in b.raw:
            self.assertEqual(json.loads(line)["jsonrpc"], "2.0")

    def test_first_use_without_a_browser_prints_the_url(self):
        self.add("stateless")
        env = {k: v for k, v in self.env.items() if k not in ("BROWSER", "DISPLAY", "WAYLAND_DISPLAY")}
        b = self.bridge(env=env)
        rid = b.request("tools/call", {"name": "echo", "arguments": {"text": "first"}}, modern=True)
        url = wait_for(lambda: next((l.strip() for l in b.stderr().splitlines() if l.strip().startswith("https://")),
                                    None), "the authorize URL on stderr")
        self.assertIn("open this URL in a browser", b.stderr())
        self.assertTrue(b.messages.empty(), "the request waits for the login")
        # The user opens it elsewhere; tokend's loopback listener takes the redirect.
        r = subprocess.run([sys.executable, BROWSER, url], env=self.env, capture_output=True, text=True,
                           timeout=DEADLINE)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = b.answer(rid)
        self.assertEqual(r["result"]["content"][0]["text"], "first", r)
        self.assertEqual(b.close(), 0, b.stderr())

    def test_stateless_server_with_request_metadata(self):
        self.add("stateless")
        self.login()
        b = self.bridge()
        before = len(self.servers["stateless"].log())
        r = b.call("server/discover", {}, modern=True)
        self.assertEqual(r["result"]["supportedVersions"], ["2026-07-28"], r)
        # x-mcp-header parameters: the bridge lists the tools itself when the
        # client calls one it has not listed (HeaderMismatch), then retries.
        r = b.call("tools/call", {"name": "region", "arguments": {"region": "eu-2", "query": "q"}}, modern=True)
        self.assertEqual(r["result"]["content"][0]["text"], "eu-2: q", r)
        self.assert_tool_works(b, modern=True)
        self.assertEqual(b.close(), 0, b.stderr())
        log = self.servers["stateless"].log()[before:]
        self.assertFalse([e for e in log if e["method"] != "POST"], "no GET stream and no DELETE without sessions")
        calls = [e for e in log if e["mcp"] == "tools/call" and e["ok"]]
        self.assertTrue(all(e["headers"].get("mcp-protocol-version") == "2026-07-28" for e in calls))
        self.assertTrue(all(e["headers"].get("mcp-method") == "tools/call" for e in calls))
        self.assertIn("eu-2", [e["headers"].get("mcp-param-region") for e in calls])

    def test_notifications_arrive_before_the_result(self):
        for mode in ("session", "stateless"):
            with self.subTest(mode=mode):
                self.add(mode, name=mode)
                self.login(mode)
                b = self.bridge(name=mode)
                modern = mode == "stateless"
                if not modern:
                    b.initialize()
                gate = f"g-{mode}"
                rid = b.request("tools/call", {"name": "notify", "arguments": {"count": 3, "gate": gate}}, modern)
                first = b.next()
                # The server holds the rest until the gate opens: step 1 came
                # through while the result did not exist yet.
                self.assertEqual(first.get("method"), "notifications/message", first)
                self.assertEqual(first["params"]["data"], "step 1")
                self.servers[mode].control("POST", f"/control/gates/{gate}")
                rest = []
                r = b.answer(rid, rest)
                self.assertEqual([m["params"]["data"] for m in rest], ["step 2", "step 3"])
                self.assertEqual(r["result"]["content"][0]["text"], "done after 3")
                self.assertEqual(b.close(), 0, b.stderr())

    def test_one_session_across_token_lifetimes(self):
        self.add("session")
        self.login()
        b = self.bridge()
        b.initialize()
        # The bridge opens its GET stream after initializing, on its own time:
        # opened after the clock moves, it would meet the 401 (and the refresh)
        # before the tools/call below does.
        wait_for(lambda: any(e["method"] == "GET" and e["ok"]
                             for e in self.servers["session"].log()[self.log_before:]),
                 "the GET stream")
        refreshes = self.grant_refreshes()
        for lifetime in range(3):
            # The token the bridge's calls carried has expired at the
            # authorization server: the MCP server answers 401, tokend
            # refreshes once and replays, the client never notices.
            self.expire_tokens()
            self.assert_tool_works(b, text=f"lifetime {lifetime}")
        self.assertEqual(self.grant_refreshes(), refreshes + 3)
        self.assertEqual(len(self.sessions_created()), 1, "one session, never reconnected")
        log = self.servers["session"].log()[self.log_before:]
        self.assertEqual(len([e for e in log if e["mcp"] == "tools/call" and not e["ok"]]), 3)
        self.assertEqual(b.close(), 0, b.stderr())

    def test_revoked_grant_names_the_login_and_the_session_survives_it(self):
        self.add("session")
        self.login()
        b = self.bridge()
        b.initialize()
        self.assert_tool_works(b)
        for g in self.up.grants():
            self.up.revoke_grant(g["grant_id"])
        self.expire_tokens()
        r = b.call("tools/call", {"name": "echo", "arguments": {"text": "x"}})
        self.assertEqual(r["error"]["code"], LOGIN_REQUIRED, r)
        self.assertIn("tokenctl login m", r["error"]["message"])
        self.assertEqual(r["error"]["data"]["command"], "tokenctl login m")
        self.assertEqual(self.state(), "reauth_required")
        self.assertIsNone(b.proc.poll(), "the bridge keeps running")
        # Once signed in again, the same client session carries on.
        self.login()
        self.assert_tool_works(b, text="after login")
        self.assertEqual(len(self.sessions_created()), 1)
        self.assertEqual(b.close(), 0, b.stderr())

    def test_wait_holds_a_request_until_the_login(self):
        self.add("session")
        self.login()
        b = self.bridge("--wait", "60")
        b.initialize()
        for g in self.up.grants():
            self.up.revoke_grant(g["grant_id"])
        self.expire_tokens()
        rid = b.request("tools/call", {"name": "echo", "arguments": {"text": "waited"}})
        wait_for(lambda: self.state() == "reauth_required", "the profile to need a login")
        self.assertTrue(b.messages.empty(), "the request waits instead of failing")
        self.login()
        r = b.answer(rid)
        self.assertEqual(r["result"]["content"][0]["text"], "waited", r)
        self.assertEqual(b.close(), 0, b.stderr())

    def test_a_forgotten_session_is_made_again(self):
        self.add("session")
        self.login()
        b = self.bridge()
        b.initialize()
        self.servers["session"].control("POST", "/control/sessions/forget")
        self.assert_tool_works(b, text="new session")
        self.assertIn("a new one was made", b.stderr())
        self.assertEqual(b.close(), 0, b.stderr())

    def test_sigterm_cuts_off_calls_in_flight_and_deletes_the_session(self):
        self.add("session")
        self.login()
        b = self.bridge()
        b.initialize()
        # The server records a session once its initialize answer is out:
        # the client may have it first.
        wait_for(lambda: self.sessions_created(), "the session at the server")
        sid = self.sessions_created()[-1]["session"]
        b.request("tools/call", {"name": "notify", "arguments": {"count": 2, "gate": "never-opened"}})
        self.assertEqual(b.next()["params"]["data"], "step 1")
        b.proc.send_signal(signal.SIGTERM)
        self.assertEqual(b.wait(), 0, b.stderr())
        wait_for(lambda: any(e["session"] == sid for e in self.servers["session"].seen("session_deleted")),
                 "the session's DELETE")

    def test_bad_input_gets_json_rpc_errors_and_the_bridge_goes_on(self):
        self.add("session")
        self.login()
        b = self.bridge()
        b.proc.stdin.write(b"this is not json\n")
        b.proc.stdin.flush()
        r = b.next()
        self.assertEqual((r["id"], r["error"]["code"]), (None, -32700), r)
        b.send({"jsonrpc": "1.0", "id": 7, "method": "x"})
        r = b.next()
        self.assertEqual((r["id"], r["error"]["code"]), (None, -32600), r)
        b.initialize()
        self.assert_tool_works(b)
        self.assertEqual(b.close(), 0, b.stderr())

    def test_unknown_profile_and_usage(self):
        b = self.bridge(name="nope")
        self.assertEqual(b.wait(), 1)
        self.assertIn("there is no profile 'nope'", b.stderr())
        self.assertEqual(b.raw, [], "nothing but JSON-RPC on stdout")
        r = self.ctl("mcp", "bad/name")
        self.assertEqual(r.returncode, 2, r.stderr)
        r = self.ctl("mcp", "m", "--wait", "soon")
        self.assertEqual(r.returncode, 2, r.stderr)

    def test_the_official_sdk_client_through_the_bridge(self):
        for mode, negotiation, version in (("session", "legacy", "2025-11-25"), ("stateless", "auto", "2026-07-28")):
            with self.subTest(mode=mode):
                self.add(mode, name=mode)
                self.login(mode)
                env = dict(self.env, MCP_NEGOTIATION=negotiation)
                r = subprocess.run(["node", os.path.join(WORK, "client.mjs"), TOKENCTL, "mcp", mode], cwd=WORK,
                                   env=env, capture_output=True, text=True, timeout=120)
                self.assertEqual(r.returncode, 0, r.stderr)
                out = json.loads(r.stdout.strip().splitlines()[-1])
                self.assertTrue(out["ok"], out)
                self.assertEqual(out["tools"], ["echo", "notify", "region", "stamp"])
                self.assertEqual((out["echo"], out["region"], out["version"]), ("through tokend", "eu-1: q", version))


if __name__ == "__main__":
    unittest.main()

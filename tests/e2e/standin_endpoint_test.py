"""tokenctl exec --endpoint end to end: the real
tokend and tokenctl, the TLS fake provider and Atlassian API, and a command
that reads its URL and credential from the environment like an unmodified
local MCP server or .env script. The fake's clock is advanced past each
access token's lifetime, so every round needs a token the command never saw."""
import base64
import json
import os
import socket
import subprocess
import sys
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fake_upstream"))

from client import FakeUpstream  # noqa: E402
from harness import (Daemon, XdgTree, binaries, run_ctl, send_and_read_to_close, split_answer,  # noqa: E402
                     unix_request, wait_for)

TOKEND, TOKENCTL = binaries()
CLIENT_ID = "atl"
CLIENT_SECRET = "cs-MARKER-standin-secret"
API_TOKEN = "ATATT-MARKER-standin-api-token"
EMAIL = "me@example.test"
LIFETIME = 3600

# The command: dumps its environment, then makes the calls the test asks for
# on stdin, one JSON line each, and answers each with one JSON line.
CHILD = textwrap.dedent('''
    import base64, json, os, sys, urllib.error, urllib.request

    def call(url, auth):
        req = urllib.request.Request(url, headers={"Authorization": auth, "Accept": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    print(json.dumps({"env": dict(os.environ), "pid": os.getpid(), "ppid": os.getppid()}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "exit":
            sys.exit(cmd["code"])
        secret = os.environ[cmd["token_env"]]
        if cmd["auth"] == "bearer":
            auth = "Bearer " + secret
        else:
            auth = "Basic " + base64.b64encode((os.environ[cmd["user_env"]] + ":" + secret).encode()).decode()
        status, body = call(os.environ[cmd["url_env"]] + cmd["path"], auth)
        print(json.dumps({"status": status, "body": body}), flush=True)
''')


def raw_http(port, request_bytes, deadline=20):
    """Sends raw bytes to the endpoint; (status, head text, body bytes)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=deadline)
    return split_answer(send_and_read_to_close(s, request_bytes))


def refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return False
    except ConnectionRefusedError:
        return True


class Command:
    """tokenctl exec ... -- python3 child.py, driven line by line."""

    def __init__(self, env, args, child):
        self.proc = subprocess.Popen([TOKENCTL, "exec", *args, "--", sys.executable, child], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline()
        if not first:
            raise AssertionError(f"tokenctl exec ended ({self.proc.wait(timeout=20)}): {self.proc.stderr.read()}")
        self.started = json.loads(first)
        self.env = self.started["env"]

    def ask(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the command ended: {self.proc.stderr.read()}")
        return json.loads(line)

    def finish(self, code=0):
        self.proc.stdin.write(json.dumps({"op": "exit", "code": code}) + "\n")
        self.proc.stdin.close()
        rc = self.proc.wait(timeout=20)
        self.stderr = self.proc.stderr.read()
        return rc

    @property
    def port(self):
        return int(self.env["TOKEND_URL"].split(":")[2].split("/")[0])


class StandinEndpointTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.up = FakeUpstream(quiet=True)

    @classmethod
    def tearDownClass(cls):
        cls.up.stop()

    def setUp(self):
        self.up.reset()
        self.up.clear_faults()
        self.up.add_client(CLIENT_ID, CLIENT_SECRET, "client_secret_post")
        self.xdg = XdgTree()
        self.env = self.xdg.env
        self.child = os.path.join(self.xdg.root, "child.py")
        with open(self.child, "w") as f:
            f.write(CHILD)
        self.daemon = Daemon(TOKEND, self.env, ["--ca-bundle", self.up.ca_file, "--log-level", "debug"])
        self.daemon.wait_ready(self.xdg.socket)
        self.cloud = self.up.sites()[0]["id"]
        self.commands = []

    def tearDown(self):
        for c in self.commands:
            if c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait(timeout=20)
            for f in (c.proc.stdin, c.proc.stdout, c.proc.stderr):
                if not f.closed:
                    f.close()
        if self.daemon.proc.poll() is None:
            self.assertEqual(self.daemon.stop(), 0, self.daemon.output())
        log = self.daemon.output()
        for t in self.up.tokens():
            if t.get("token"):
                self.assertNotIn(t["token"], log)
        for c in self.commands:
            self.assertNotIn(c.env.get("TOKEND_TOKEN", "-"), log, "the stand-in was logged")
        self.xdg.close()

    def put(self, name, body):
        status, text = unix_request(self.xdg.socket, "PUT", f"/v1/profiles/{name}", json.dumps(body))
        self.assertIn(status, (200, 201), text)

    def add_oauth(self, name="oauth", **extra):
        g = self.up.add_grant(CLIENT_ID, access_lifetime=LIFETIME)
        self.put(name, {"kind": "oauth2", "provider": "atlassian", "client_id": CLIENT_ID,
                        "client_secret": CLIENT_SECRET, "token_url": self.up.token_url,
                        "api_base": self.up.base_url, "cloud_id": self.cloud, "access_token": g["access_token"],
                        "refresh_token": g["refresh_token"], "expires_in": LIFETIME, **extra})
        return g

    def start(self, *args):
        c = Command(self.env, args, self.child)
        self.commands.append(c)
        return c

    def metric(self, name):
        status, text = unix_request(self.xdg.socket, "GET", "/v1/metrics")
        self.assertEqual(status, 200)
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def real_tokens(self):
        return [t["token"] for t in self.up.tokens() if t.get("token")]

    def assert_no_real_token(self, env):
        dump = json.dumps(env)
        for t in self.real_tokens() + [CLIENT_SECRET, API_TOKEN]:
            self.assertNotIn(t, dump)

    # -- the command's view ---------------------------------------------------

    def test_oauth_command_works_across_token_lifetimes_with_bearer_and_basic(self):
        g = self.add_oauth()
        c = self.start("oauth", "--endpoint", "--url-env", "JIRA_URL=jira", "--url-env", "ATLASSIAN_URL",
                       "--standin-env", "JIRA_API_TOKEN", "--user-env", "JIRA_USERNAME")
        env = c.env
        origin = f"http://127.0.0.1:{c.port}"
        self.assertEqual(env["JIRA_URL"], f"{origin}/ex/jira/{self.cloud}")
        self.assertEqual(env["TOKEND_JIRA_URL"], env["JIRA_URL"])
        self.assertEqual(env["TOKEND_CONFLUENCE_URL"], f"{origin}/ex/confluence/{self.cloud}/wiki")
        self.assertEqual(env["ATLASSIAN_URL"], origin)
        self.assertEqual(env["TOKEND_URL"], origin)
        standin = env["TOKEND_TOKEN"]
        self.assertGreaterEqual(len(standin), 43)
        for name in ("JIRA_API_TOKEN", "JIRA_OAUTH_ACCESS_TOKEN"):
            self.assertEqual(env[name], standin)
        self.assertEqual(env["TOKEND_AUTHORIZATION"], "Bearer " + standin)
        self.assertEqual(env["JIRA_OAUTH_CLOUD_ID"], self.cloud)
        self.assertNotIn("TOKEND_EXPIRES_AT", env)
        self.assert_no_real_token(env)

        fingerprints = set()
        for round_ in range(3):
            for auth in ("bearer", "basic"):
                with self.subTest(round=round_, auth=auth):
                    r = c.ask(op="call", url_env="JIRA_URL", path="/rest/api/3/myself", auth=auth,
                              token_env="JIRA_API_TOKEN", user_env="JIRA_USERNAME")
                    self.assertEqual(r["status"], 200, r["body"])
                    fingerprints.add(json.loads(r["body"])["fakeUpstream"]["fingerprint"])
            # Confluence through the 3LO gateway layout too.
            r = c.ask(op="call", url_env="TOKEND_CONFLUENCE_URL", path="/rest/api/content?limit=1",
                      auth="bearer", token_env="TOKEND_TOKEN", user_env="TOKEND_USER")
            self.assertEqual(r["status"], 200, r["body"])
            # The token tokend holds expires at the provider.
            self.up.advance_clock(LIFETIME + 60)
        self.assertEqual(len(fingerprints), 3, "each lifetime was served by a fresh token")
        self.assertGreaterEqual(self.up.grant(g["grant_id"])["refreshes"], 2)
        self.assertEqual(self.metric("tokend_endpoints_open"), 1)

        ctl_pid, command_pid = c.proc.pid, c.started["pid"]
        self.assertEqual(c.started["ppid"], ctl_pid)
        self.assertEqual(c.finish(0), 0, c.stderr)
        # Closed with the command: polled, tokend notices the connection's end.
        wait_for(lambda: refused(c.port), "the endpoint to close after the command")
        self.assertEqual(self.metric("tokend_endpoints_open"), 0)
        status, text = unix_request(self.xdg.socket, "GET", "/v1/audit?limit=100")
        events = json.loads(text)["events"]
        proxied = [e for e in events if e["kind"] == "proxy" and e["profile"] == "oauth"]
        self.assertGreaterEqual(len(proxied), 9)
        # The command's own pid, not tokenctl's.
        self.assertTrue(all(e["peer_pid"] == command_pid for e in proxied), proxied)
        self.assertIn("jira/rest/api/3/myself", [e["detail"]["path"] for e in proxied])
        opened = [e for e in events if e["kind"] == "endpoint_opened"]
        self.assertEqual([e["peer_pid"] for e in opened], [ctl_pid])
        # A pid that is neither the caller nor its child is refused.
        status, text = unix_request(self.xdg.socket, "POST", "/v1/profiles/oauth/endpoint", json.dumps({"pid": 1}))
        self.assertEqual(status, 400, text)
        self.assertIn("child", json.loads(text)["error"]["message"])

    def test_api_token_site_layout_and_basic_with_the_profiles_email(self):
        self.up.add_api_token(EMAIL, API_TOKEN)
        self.put("cloud", {"kind": "api-token", "site": self.up.site_url("acme"), "email": EMAIL, "token": API_TOKEN})
        c = self.start("cloud", "--endpoint", "--url-env", "JIRA_URL=jira", "--url-env", "CONFLUENCE_URL=confluence",
                       "--user-env", "JIRA_USERNAME", "--user-env", "CONFLUENCE_USERNAME",
                       "--standin-env", "JIRA_API_TOKEN", "--standin-env", "CONFLUENCE_API_TOKEN")
        site_path = "/site/acme"
        self.assertEqual(c.env["JIRA_URL"], f"http://127.0.0.1:{c.port}{site_path}")
        self.assertEqual(c.env["CONFLUENCE_URL"], f"http://127.0.0.1:{c.port}{site_path}/wiki")
        self.assertEqual(c.env["JIRA_USERNAME"], EMAIL)
        self.assert_no_real_token(c.env)
        r = c.ask(op="call", url_env="JIRA_URL", path="/rest/api/2/myself", auth="basic", token_env="JIRA_API_TOKEN",
                  user_env="JIRA_USERNAME")
        self.assertEqual(r["status"], 200, r["body"])
        self.assertEqual(json.loads(r["body"])["emailAddress"], EMAIL)
        r = c.ask(op="call", url_env="CONFLUENCE_URL", path="/rest/api/user/current", auth="basic",
                  token_env="CONFLUENCE_API_TOKEN", user_env="CONFLUENCE_USERNAME")
        self.assertEqual(r["status"], 200, r["body"])
        self.assertEqual(c.finish(3), 3, c.stderr)

    def test_the_docs_dotenv_script_runs_unchanged_with_either_base_variable(self):
        """docs/wrapping-scripts.md: examples/wrap_script.py under --endpoint."""
        self.add_oauth()
        script = os.path.join(HERE, "..", "..", "docs", "examples", "wrap_script.py")
        for flag in ("JIRA_API_BASE=jira", "ATLASSIAN_API_GATEWAY"):
            with self.subTest(flag):
                r = run_ctl(TOKENCTL, self.env, "exec", "oauth", "--endpoint", "--url-env", flag, "--",
                            sys.executable, script)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertIn("Logged in to Jira as", r.stdout)

    # -- what the endpoint refuses ------------------------------------------

    def test_wrong_standin_host_origin_policy_and_layout_are_refused(self):
        self.add_oauth(policy={"deny": ["jira/rest/api/3/project"]})
        c = self.start("oauth", "--endpoint")
        port, standin = c.port, c.env["TOKEND_TOKEN"]
        path = f"/ex/jira/{self.cloud}/rest/api/3/myself"
        before = len(self.up.api_log(settle=True))

        def req(target=path, host=f"127.0.0.1:{port}", auth=f"Bearer {standin}", extra=()):
            head = f"GET {target} HTTP/1.1\r\nConnection: close\r\n"
            if host is not None:
                head += f"Host: {host}\r\n"
            if auth is not None:
                head += f"Authorization: {auth}\r\n"
            for h in extra:
                head += h + "\r\n"
            return raw_http(port, (head + "\r\n").encode())

        basic = lambda user, secret: "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()  # noqa: E731
        cases = [
            ("no credential", dict(auth=None), 401, "unauthorized"),
            ("wrong bearer", dict(auth="Bearer " + standin[:-1] + ("A" if standin[-1] != "A" else "B")), 401,
             "unauthorized"),
            ("wrong basic password", dict(auth=basic("me", "nope")), 401, "unauthorized"),
            ("stand-in as basic user", dict(auth=basic(standin, "x")), 401, "unauthorized"),
            ("no host", dict(host=None), 421, "wrong_host"),
            ("rebinding host", dict(host=f"evil.example:{port}"), 421, "wrong_host"),
            ("other port", dict(host=f"127.0.0.1:{port + 1}"), 421, "wrong_host"),
            ("cross-site origin", dict(extra=["Origin: https://evil.example"]), 403, "cross_site"),
            ("null origin", dict(extra=["Origin: null"]), 403, "cross_site"),
            ("fetch metadata", dict(extra=["Sec-Fetch-Site: cross-site"]), 403, "cross_site"),
            ("same-site", dict(extra=["Sec-Fetch-Site: same-site"]), 403, "cross_site"),
            ("policy", dict(target=f"/ex/jira/{self.cloud}/rest/api/3/project"), 403, "policy_denied"),
            ("other cloud", dict(target="/ex/jira/other-cloud/rest/api/3/myself"), 404, "not_found"),
            ("escape", dict(target=f"/ex/jira/{self.cloud}/../../_control/reset"), 400, "invalid_argument"),
        ]
        for what, kw, want, code in cases:
            with self.subTest(what):
                status, head, body = req(**kw)
                self.assertEqual(status, want, body)
                self.assertEqual(json.loads(body)["error"]["code"], code)
                if want == 401:
                    self.assertIn("www-authenticate: bearer", head.lower())
        self.assertEqual(len(self.up.api_log(settle=True)), before, "a refused request reached the upstream")
        # The endpoint's own origin, localhost and Basic with any user pass.
        for kw in (dict(extra=[f"Origin: http://127.0.0.1:{port}", "Sec-Fetch-Site: same-origin"]),
                   dict(host=f"localhost:{port}"), dict(auth=basic("anyone", standin))):
            with self.subTest(ok=kw):
                status, _, body = req(**kw)
                self.assertEqual(status, 200, body)
        self.assertEqual(c.finish(0), 0, c.stderr)
        wait_for(lambda: refused(port), "the endpoint to close after the command")

    def test_hostile_bytes_and_too_many_connections_leave_the_endpoint_serving(self):
        self.add_oauth()
        c = self.start("oauth", "--endpoint")
        port, standin = c.port, c.env["TOKEND_TOKEN"]
        self.assertEqual(raw_http(port, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")[0], 400)
        big = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-Big: " % port + b"a" * 70000 + b"\r\n\r\n"
        self.assertEqual(raw_http(port, big)[0], 431)
        smuggle = (b"POST /ex/jira/x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nTransfer-Encoding: gzip\r\n\r\n" % port)
        self.assertEqual(raw_http(port, smuggle)[0], 400)
        # Past 64 connections each new one is answered 503 and closed.
        held = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(64)]
        try:
            wait_for(lambda: raw_http(port, b"GET / HTTP/1.1\r\n\r\n")[0] == 503, "a connection over the limit")
        finally:
            for s in held:
                s.close()
        path = f"/ex/jira/{self.cloud}/rest/api/3/myself"
        ok = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {standin}\r\n"
              f"Connection: close\r\n\r\n").encode()
        wait_for(lambda: raw_http(port, ok)[0] == 200, "the endpoint to serve again")
        self.assertEqual(c.finish(0), 0, c.stderr)

    # -- lifetime and exit codes ---------------------------------------------

    def test_a_killed_tokenctl_closes_the_endpoint(self):
        self.add_oauth()
        c = self.start("oauth", "--endpoint")
        c.proc.kill()
        c.proc.wait(timeout=20)
        wait_for(lambda: refused(c.port), "the endpoint to close after tokenctl was killed")
        wait_for(lambda: self.metric("tokend_endpoints_open") == 0, "the open-endpoint gauge to drop")

    def test_exit_codes(self):
        self.add_oauth()
        ctl = lambda *a: run_ctl(TOKENCTL, self.env, *a)  # noqa: E731
        r = ctl("exec", "oauth", "--url-env", "X", "--", "true")
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--url-env needs --endpoint", r.stderr)
        r = ctl("exec", "oauth", "--endpoint", "--min-valid", "60", "--", "true")
        self.assertEqual(r.returncode, 2, r.stderr)
        r = ctl("exec", "oauth", "--endpoint", "--url-env", "1X", "--", "true")
        self.assertEqual(r.returncode, 2, r.stderr)
        r = ctl("exec", "oauth", "--endpoint", "--url-env", "X=bitbucket", "--", "true")
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("has: confluence, jira", r.stderr)
        r = ctl("exec", "nobody", "--endpoint", "--", "true")
        self.assertEqual(r.returncode, 1, r.stderr)
        r = ctl("exec", "oauth", "--endpoint", "--", "sh", "-c", "exit 7")
        self.assertEqual(r.returncode, 7, r.stderr)
        r = ctl("exec", "oauth", "--endpoint", "--", "/nonexistent/command")
        self.assertEqual(r.returncode, 127, r.stderr)
        # A profile that needs a login: 4, naming the command.
        self.put("gone", {"kind": "oauth2", "provider": "atlassian", "client_id": CLIENT_ID,
                          "token_url": self.up.token_url, "api_base": self.up.base_url, "cloud_id": self.cloud})
        marker = os.path.join(self.xdg.root, "ran")
        r = ctl("exec", "gone", "--endpoint", "--", "sh", "-c", f"touch {marker}")
        self.assertEqual(r.returncode, 4, r.stderr)
        self.assertIn("tokenctl login gone", r.stderr)
        self.assertFalse(os.path.exists(marker), "the held command ran although no endpoint was opened")
        # No daemon: 3.
        self.assertEqual(self.daemon.stop(), 0, self.daemon.output())
        r = ctl("exec", "oauth", "--endpoint", "--", "true")
        self.assertEqual(r.returncode, 3, r.stderr)


if __name__ == "__main__":
    unittest.main()

"""tokend against a real authorization server nobody on the team wrote
panva's oidc-provider from npm, pinned by the committed
package.json and package-lock.json, started on 127.0.0.1 by this test.

    interop_test.py --tokend PATH --tokenctl PATH --work-dir DIR

The work dir receives a copy of package.json, package-lock.json and
server.mjs and `npm ci` installs oidc-provider there once (again when the
lock changes). Covered: the code flow through the loopback listener and by
paste, the device flow, refresh with rotation and the server's reuse
detection, revocation on logout, an iss mismatch refused (RFC 9207), and an
MCP-style protected resource reached through RFC 9728 discovery, dynamic
registration (application_type native) and an RFC 8707 resource.

Without node or npm the suite says why and skips; scripts/setup.sh installs
both, so CI never skips.
"""
import base64
import hashlib
import json
import os
import queue
import secrets
import subprocess
import sys
import threading
import time
import unittest
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
sys.path.insert(0, HERE)

from harness import (Daemon, XdgTree, binaries, free_port, install_packages, run_ctl,  # noqa: E402
                     secret_file, stop_process, unix_request, wait_for, work_dir_arg)
from interop_browser import Browser  # noqa: E402

TOKEND, TOKENCTL = binaries()
WORK = work_dir_arg(os.path.join(HERE, "..", "..", "build", "interop"))
CLIENT_SECRET = "cs-interop-" + secrets.token_urlsafe(12)
BROWSER = os.path.join(HERE, "interop_browser.py")


class AuthorizationServer:
    """server.mjs running; its JSON lines (ready, then events) collected."""

    def __init__(self, redirect_uris):
        env = dict(os.environ, INTEROP_REDIRECT_URIS=",".join(redirect_uris), INTEROP_CLIENT_SECRET=CLIENT_SECRET)
        self.proc = subprocess.Popen(["node", os.path.join(WORK, "server.mjs")], cwd=WORK, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines = queue.Queue()
        self.events = []
        self.stderr = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()
        try:
            ready = self.lines.get(timeout=30)
        except queue.Empty:
            self.stop()
            raise RuntimeError("the interop server did not start:\n" + "".join(self.stderr))
        self.issuer, self.mcp = ready["issuer"], ready["mcp"]
        self.name, self.version, self.node = ready["server"], ready["version"], ready["node"]

    def _read(self):
        for line in self.proc.stdout:
            try:
                obj = json.loads(line)
            except ValueError:  # the provider's own notices
                self.stderr.append(line)
                continue
            if obj.get("ready"):
                self.lines.put(obj)
            else:
                with self._lock:
                    self.events.append(obj)

    def _read_err(self):
        for line in self.proc.stderr:
            self.stderr.append(line)

    def seen(self, event, **match):
        with self._lock:
            return [e for e in self.events if e["event"] == event and all(e.get(k) == v for k, v in match.items())]

    def post(self, path, form, auth=None):
        req = urllib.request.Request(self.issuer + path, data=urllib.parse.urlencode(form).encode(), method="POST")
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
        if auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def barrier(self):
        """Returns once every event the server emitted before now has been read
        (a refused grant's event is written after them on the same pipe)."""
        before = len(self.seen("grant.error"))
        self.post("/token", {"grant_type": "refresh_token", "refresh_token": "barrier"},
                  auth=("web-app", CLIENT_SECRET))
        wait_for(lambda: len(self.seen("grant.error")) > before, "the interop server's events")

    def introspect(self, token):
        status, body = self.post("/token/introspection", {"token": token}, auth=("web-app", CLIENT_SECRET))
        assert status == 200, body
        return body

    def mcp_call(self, token):
        req = urllib.request.Request(self.mcp, data=b'{"jsonrpc":"2.0","id":1,"method":"ping"}', method="POST")
        req.add_header("Authorization", "Bearer " + token)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def stop(self):
        stop_process(self.proc)


class InteropTest(unittest.TestCase):
    server = None

    @classmethod
    def setUpClass(cls):
        why = install_packages(HERE, WORK, ("server.mjs",))
        if why:
            print(f"interop tests skipped: {why}", file=sys.stderr)
            raise unittest.SkipTest(why)
        cls.port = free_port()
        cls.redirect = f"http://127.0.0.1:{cls.port}/callback"
        cls.server = AuthorizationServer([cls.redirect])
        print(f"\ninterop authorization server: {cls.server.name} {cls.server.version} (node {cls.server.node}) "
              f"at {cls.server.issuer}", file=sys.stderr, flush=True)

    @classmethod
    def tearDownClass(cls):
        if cls.server:
            cls.server.stop()

    def setUp(self):
        self.xdg = XdgTree()
        self.env = dict(self.xdg.env, BROWSER=BROWSER,
                        INTEROP_BROWSER_LOG=os.path.join(self.xdg.root, "browser.log"))
        self.daemon = Daemon(TOKEND, self.env, ["--http-timeout", "5s", "--log-level", "debug"])
        self.daemon.wait_ready(self.xdg.socket)

    def tearDown(self):
        if self.daemon.proc.poll() is None:
            self.assertEqual(self.daemon.stop(), 0, self.daemon.output())
        self.assertNotIn(CLIENT_SECRET, self.daemon.output())
        self.xdg.close()

    # -- helpers -----------------------------------------------------------------------------

    def ctl(self, *args, input=None, timeout=60):
        return run_ctl(TOKENCTL, self.env, *args, input=input, timeout=timeout)

    def api(self, method, path, body=None):
        status, text = unix_request(self.xdg.socket, method, path, json.dumps(body) if body is not None else None)
        return status, json.loads(text) if text else None

    def profile(self, name):
        status, body = self.api("GET", f"/v1/profiles/{name}")
        self.assertEqual(status, 200, body)
        return body

    def add_oidc(self, name="p", client="web-app", extra=()):
        args = ["add", name, "--kind", "oauth2", "--issuer", self.server.issuer, "--client-id", client,
                "--redirect-uri", self.redirect, "--scopes", "openid offline_access", *extra]
        if client == "web-app":
            args += ["--client-secret-file", secret_file(self.xdg.root, "cs", CLIENT_SECRET)]
        r = self.ctl(*args)
        self.assertEqual(r.returncode, 0, r.stderr)

    def token(self, name="p"):
        r = self.ctl("token", name)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout.strip()

    def browser_runs(self):
        path = self.env["INTEROP_BROWSER_LOG"]
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def own_login(self):
        """A code flow the test does itself (web-app, PKCE): the provider's token answer."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        query = urllib.parse.urlencode({"client_id": "web-app", "response_type": "code", "redirect_uri": self.redirect,
                                        "scope": "openid offline_access", "prompt": "consent", "state": "s",
                                        "code_challenge": challenge, "code_challenge_method": "S256"})
        location = Browser().authorize(f"{self.server.issuer}/auth?{query}")
        code = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["code"][0]
        status, body = self.server.post("/token", {"grant_type": "authorization_code", "code": code,
                                                   "redirect_uri": self.redirect, "code_verifier": verifier},
                                        auth=("web-app", CLIENT_SECRET))
        self.assertEqual(status, 200, body)
        return body

    # -- the tests ---------------------------------------------------------------------------

    def test_code_flow_loopback_refresh_and_revocation_on_logout(self):
        self.add_oidc()
        r = self.ctl("login", "p")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        wait_for(lambda: self.browser_runs(), "the browser to finish")
        self.assertEqual(self.browser_runs()[0].get("callback_status"), 200, self.browser_runs())
        # offline_access with prompt=consent: the real server issued a refresh token.
        self.assertTrue(self.profile("p")["has_refresh_token"], self.profile("p"))
        self.assertEqual(self.profile("p")["config"]["discovered"]["issuer"], self.server.issuer)
        first = self.token()
        self.assertTrue(self.server.introspect(first)["active"])
        r = self.ctl("renew", "p")
        self.assertEqual(r.returncode, 0, r.stderr)
        second = self.token()
        self.assertNotEqual(first, second)
        self.assertTrue(self.server.introspect(second)["active"])
        wait_for(lambda: self.server.seen("refresh_token.consumed"), "the server to rotate the refresh token")
        r = self.ctl("test", "p")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        revoked = len(self.server.seen("grant.revoked"))
        r = self.ctl("logout", "p")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("revoked", r.stdout)
        wait_for(lambda: len(self.server.seen("grant.revoked")) == revoked + 1, "the server to revoke the grant")
        # Revoking the refresh token ends the grant: its access token is dead too.
        self.assertFalse(self.server.introspect(second)["active"])
        self.assertEqual(self.ctl("token", "p").returncode, 4)

    def test_paste_flow_and_iss_mismatch_refused(self):
        self.add_oidc(client="public-app")
        # iss in the pasted redirect is another issuer's: refused, nothing redeemed.
        status, flow = self.api("POST", "/v1/profiles/p/login", {"listen": False})
        self.assertEqual(status, 200, flow)
        location = Browser().authorize(flow["authorize_url"])
        params = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
        self.assertEqual(params["iss"], [self.server.issuer], "the server sends iss (RFC 9207)")
        exchanges = len(self.server.seen("grant.success", grant_type="authorization_code"))
        forged = location.replace(urllib.parse.quote(self.server.issuer, safe=""),
                                  urllib.parse.quote("http://127.0.0.1:1/evil", safe=""))
        self.assertNotEqual(forged, location)
        status, body = self.api("POST", "/v1/profiles/p/login/complete", {"redirect_url": forged})
        self.assertEqual(status, 400, body)
        self.assertEqual(body["error"]["reason"], "iss_mismatch")
        self.server.barrier()
        self.assertEqual(len(self.server.seen("grant.success", grant_type="authorization_code")), exchanges)
        self.assertFalse(self.profile("p")["has_token"])
        # The genuine paste through tokenctl login --no-browser.
        proc = subprocess.Popen([TOKENCTL, "login", "p", "--no-browser"], env=self.env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            url = None
            deadline = time.monotonic() + 20
            while url is None and time.monotonic() < deadline:
                line = proc.stderr.readline()
                if not line:
                    break
                url = next((w for w in line.split() if w.startswith(self.server.issuer + "/auth")), None)
            self.assertIsNotNone(url, "tokenctl login --no-browser printed no authorize URL")
            proc.stdin.write(Browser().authorize(url) + "\n")
            proc.stdin.flush()
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        self.assertEqual(proc.returncode, 0, out + err)
        self.assertTrue(self.server.introspect(self.token())["active"])
        self.assertTrue(self.profile("p")["has_refresh_token"])

    def test_device_flow(self):
        self.add_oidc()
        proc = subprocess.Popen([TOKENCTL, "login", "p", "--device", "--no-browser"], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            flow = {}

            def started():
                flow.update(self.api("GET", "/v1/profiles/p/login")[1])
                return flow.get("state") == "pending" and "user_code" in flow
            wait_for(started, "the device flow to start")
            Browser().device(flow["verification_uri"], flow["user_code"])
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        self.assertEqual(proc.returncode, 0, out + err)
        wait_for(lambda: self.server.seen("grant.success", grant_type="urn:ietf:params:oauth:grant-type:device_code"),
                 "the device grant at the server")
        self.assertTrue(self.server.introspect(self.token())["active"])
        self.assertEqual(self.ctl("renew", "p").returncode, 0)
        self.assertTrue(self.server.introspect(self.token())["active"])

    def test_refresh_token_alone_rotation_and_reuse_detection(self):
        tokens = self.own_login()
        self.assertIn("refresh_token", tokens)
        r = self.ctl("add", "p", "--kind", "oauth2", "--issuer", self.server.issuer, "--client-id", "web-app",
                     "--client-secret-file", secret_file(self.xdg.root, "cs", CLIENT_SECRET),
                     "--token-url", self.server.issuer + "/token",
                     "--refresh-token-file", secret_file(self.xdg.root, "rt", tokens["refresh_token"]))
        self.assertEqual(r.returncode, 0, r.stderr)
        # Refreshed at once; the server rotated the refresh token.
        wait_for(lambda: self.profile("p")["has_token"], "the refresh token alone to be refreshed")
        self.assertTrue(self.server.introspect(self.token())["active"])
        self.assertEqual(self.ctl("renew", "p").returncode, 0)
        # Someone presents the first, consumed refresh token again: the
        # server's reuse detection revokes the whole grant ...
        revoked = len(self.server.seen("grant.revoked"))
        status, body = self.server.post("/token", {"grant_type": "refresh_token",
                                                   "refresh_token": tokens["refresh_token"]},
                                        auth=("web-app", CLIENT_SECRET))
        self.assertEqual((status, body["error"]), (400, "invalid_grant"), body)
        wait_for(lambda: len(self.server.seen("grant.revoked")) > revoked, "the grant to be revoked")
        # ... and tokend, refreshing next, needs a login and says which.
        r = self.ctl("renew", "p")
        self.assertEqual(r.returncode, 4, r.stderr)
        self.assertIn("tokenctl login p", r.stderr)
        self.assertEqual(self.profile("p")["state"], "reauth_required")

    def test_mcp_protected_resource_with_registration_and_resource(self):
        r = self.ctl("add", "m", "--kind", "oauth2", "--provider", "mcp", "--mcp-server", self.server.mcp,
                     "--redirect-uri", self.redirect)
        self.assertEqual(r.returncode, 0, r.stderr)
        registrations = len(self.server.seen("registration_create.success"))
        r = self.ctl("login", "m")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        created = wait_for(lambda: self.server.seen("registration_create.success")[registrations:],
                           "the registration at the server")
        self.assertEqual(len(created), 1)
        self.assertEqual(created[-1]["application_type"], "native")
        config = self.profile("m")["config"]
        self.assertTrue(config["client_registered"])
        self.assertEqual(config["client_registered_for"], self.server.issuer)
        self.assertEqual(config["discovered"]["resource"], self.server.mcp)
        token = self.token("m")
        # RFC 8707: the token's audience is the MCP server, which accepts it.
        self.assertEqual(self.server.mcp_call(token), 200)
        self.assertEqual(self.server.mcp_call("not-a-token"), 401)
        self.assertEqual(self.ctl("renew", "m").returncode, 0)
        self.assertEqual(self.server.mcp_call(self.token("m")), 200)


if __name__ == "__main__":
    unittest.main(verbosity=2)

"""Login flows end to end: the real tokend and tokenctl
against the TLS fake provider, a fake browser that follows the provider's
redirect to tokend's loopback listener, and tokenctl's headless paste.

Each flow goes login -> token -> refresh -> logout; every failure (wrong
state, replayed callback, PKCE mismatch, denied consent, expired flow,
taken port) ends in a clear error and changes nothing stored."""
import json
import os
import socket
import subprocess
import sys
import time
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fake_upstream"))

from client import DocumentServer, FakeUpstream, make_pkce, redirect_params  # noqa: E402
from harness import Daemon, XdgTree, binaries, free_port, secret_file, run_ctl, unix_request, wait_for  # noqa: E402

TOKEND, TOKENCTL = binaries()
BROWSER = os.path.join(HERE, "fake_browser.py")
WEB_ID = "web-app"
WEB_SECRET = "cs-MARKER-login-secret"
PUBLIC_ID = "public-app"
ATLASSIAN_ID = "atlassian-app"  # Atlassian takes the secret in the (JSON) body
ALL_LOGS = []


def read_until(stream, needle, deadline=20.0):
    """Reads lines until one contains `needle`; False at EOF or the deadline."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        line = stream.readline()
        if not line:
            return False
        if needle in line:
            return True
    return False


def port_open(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class LoginTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.up = FakeUpstream(quiet=True)

    @classmethod
    def tearDownClass(cls):
        issued = [t["token"] for t in cls.up.tokens() if t.get("token")]
        cls.up.stop()
        for text in ALL_LOGS:
            for t in issued:
                assert t not in text, "an issued token or code appears in a tokend log"
            assert WEB_SECRET not in text

    def setUp(self):
        self.up.reset()
        self.up.clear_faults()
        self.port = free_port()
        self.redirect = f"http://127.0.0.1:{self.port}/callback"
        self.up.add_client(WEB_ID, WEB_SECRET, "client_secret_basic", redirect_uris=[self.redirect])
        self.up.add_client(PUBLIC_ID, None, "none", redirect_uris=[self.redirect])
        self.up.add_client(ATLASSIAN_ID, WEB_SECRET, "client_secret_post", redirect_uris=[self.redirect])
        self.xdg = XdgTree()
        self.env = dict(self.xdg.env)
        self.browser_log = os.path.join(self.xdg.root, "browser.log")
        self.env.update(BROWSER=BROWSER, FAKE_BROWSER_CA=self.up.ca_file, FAKE_BROWSER_LOG=self.browser_log)
        self.daemon = None
        self.start()

    def start(self, *extra):
        self.daemon = Daemon(TOKEND, self.env, ["--ca-bundle", self.up.ca_file, "--http-timeout", "5s",
                                                "--log-level", "debug", *extra])
        self.daemon.wait_ready(self.xdg.socket)

    def restart(self, *extra):
        self.assertEqual(self.daemon.stop(), 0, self.daemon.output())
        ALL_LOGS.append(self.daemon.output())
        self.start(*extra)

    def tearDown(self):
        if self.daemon.proc.poll() is None:
            self.assertEqual(self.daemon.stop(), 0, self.daemon.output())
        ALL_LOGS.append(self.daemon.output())
        issued = [t["token"] for t in self.up.tokens() if t.get("token")]
        data_dir = os.path.dirname(self.xdg.db)
        for f in os.listdir(data_dir):
            with open(os.path.join(data_dir, f), "rb") as fh:
                blob = fh.read()
            for t in issued:
                self.assertNotIn(t.encode(), blob, f"issued token in {f}")
        self.xdg.close()

    # -- helpers --------------------------------------------------------------------

    def ctl(self, *args, input=None, env=None, timeout=60):
        return run_ctl(TOKENCTL, env or self.env, *args, input=input, timeout=timeout)

    def api(self, method, path, body=None):
        status, text = unix_request(self.xdg.socket, method, path, json.dumps(body) if body is not None else None)
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, text

    def add_generic(self, name="p", client=WEB_ID, extra=(), redirect=None):
        args = ["add", name, "--kind", "oauth2", "--client-id", client,
                "--authorize-url", self.up.authorize_endpoint, "--token-url", self.up.token_url,
                "--revocation-url", self.up.revocation_url, "--userinfo-url", self.up.userinfo_url,
                "--redirect-uri", redirect or self.redirect, "--scopes", "openid offline_access", *extra]
        if client == WEB_ID:
            args += ["--client-secret-file", secret_file(self.xdg.root, "cs", WEB_SECRET)]
        r = self.ctl(*args)
        self.assertEqual(r.returncode, 0, r.stderr)

    def metric(self, name):
        status, text = unix_request(self.xdg.socket, "GET", "/v1/metrics")
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def profile(self, name="p"):
        status, body = self.api("GET", f"/v1/profiles/{name}")
        self.assertEqual(status, 200, body)
        return body

    def stored_state(self, name="p"):
        p = self.profile(name)
        return (p["state"], p["generation"], p["has_token"], p["has_refresh_token"])

    def start_paste_flow(self, name="p", **body):
        status, flow = self.api("POST", f"/v1/profiles/{name}/login", {"listen": False, **body})
        self.assertEqual(status, 200, flow)
        self.assertEqual(flow["state"], "pending")
        return flow

    def consent(self, authorize_url):
        """What the user's browser does at the provider: the redirect Location."""
        split = urllib.parse.urlsplit(authorize_url)
        r = self.up.request("GET", split.path + "?" + split.query)
        self.assertEqual(r.status, 302, r.body[:300])
        return r.headers["location"]

    def assert_token_works(self, name="p"):
        r = self.ctl("token", name)
        self.assertEqual(r.returncode, 0, r.stderr)
        token = r.stdout.strip()
        live = {t["token"]: t for t in self.up.tokens() if t.get("token")}
        self.assertIn(token, live, "tokend serves a token the provider never issued")
        self.assertTrue(live[token]["valid"], "tokend serves a token the provider no longer accepts")
        return token

    def authorizations(self):
        """The parameters of every authorization request the provider saw."""
        return [e["authorize"]["params"] for e in self.up.log(settle=True) if e.get("authorize")]

    def wait_browser_runs(self, n):
        """tokenctl does not wait for the browser it started: wait for its log lines."""
        wait_for(lambda: len(self.browser_runs()) >= n, f"{n} browser run(s) logged")
        return self.browser_runs()

    def browser_runs(self):
        if not os.path.exists(self.browser_log):
            return []
        with open(self.browser_log) as f:
            return [json.loads(line) for line in f if line.strip()]

    # -- the whole life of a login: code + PKCE through the loopback listener ------

    def test_code_flow_login_token_refresh_test_logout(self):
        self.add_generic()
        r = self.ctl("login", "p")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("Logged in", r.stdout)
        runs = self.wait_browser_runs(1)
        self.assertEqual(len(runs), 1, runs)
        self.assertEqual(runs[0]["callback_status"], 200, runs[0])
        self.assertIn("close this tab", runs[0]["callback_body_excerpt"])
        # PKCE S256 on the authorization request, the verifier on the exchange.
        authz = self.authorizations()
        self.assertEqual(len(authz), 1)
        self.assertEqual(authz[0].get("code_challenge_method"), "S256", authz[0])
        self.assertFalse(port_open(self.port), "the loopback listener stays open after the login")
        first = self.assert_token_works()
        self.assertEqual(self.profile()["state"], "valid")
        # Refresh with the refresh token the login brought.
        r = self.ctl("renew", "p")
        self.assertEqual(r.returncode, 0, r.stderr)
        second = self.assert_token_works()
        self.assertNotEqual(first, second)
        r = self.ctl("test", "p")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # Logout revokes at the provider and forgets.
        revocations = self.up.stats()["revocations"]
        r = self.ctl("logout", "p")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("revoked", r.stdout)
        self.assertEqual(self.up.stats()["revocations"], revocations + 1)
        live = {t["token"]: t for t in self.up.tokens() if t.get("token")}
        self.assertFalse(live[second]["valid"], "logout did not revoke the grant")
        self.assertEqual(self.profile()["state"], "empty")
        r = self.ctl("token", "p")
        self.assertEqual(r.returncode, 4, r.stderr)
        self.assertIn("tokenctl login p", r.stderr)

    def test_public_client(self):
        self.add_generic(client=PUBLIC_ID)
        r = self.ctl("login", "p")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assert_token_works()
        exchange = [e for e in self.up.log(settle=True) if e.get("grant_type") == "authorization_code"][-1]
        self.assertEqual(exchange["client_auth"], "none")
        r = self.ctl("renew", "p")
        self.assertEqual(r.returncode, 0, r.stderr)

    # -- headless -----------------------------------------------------------------------

    def test_headless_paste_with_tokenctl(self):
        self.add_generic()
        proc = subprocess.Popen([TOKENCTL, "login", "p", "--no-browser"], env=self.env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            url = None
            deadline = time.monotonic() + 20
            while url is None and time.monotonic() < deadline:
                line = proc.stderr.readline()  # the instructions are for a person: stderr
                if not line:
                    break
                for word in line.split():
                    if word.startswith(self.up.authorize_endpoint):
                        url = word
            self.assertIsNotNone(url, "tokenctl login --no-browser printed no authorize URL")
            location = self.consent(url)
            # The listener would catch it too; paste it first, as a person on
            # another machine would.
            proc.stdin.write(location + "\n")
            proc.stdin.flush()
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        self.assertEqual(proc.returncode, 0, out + err)
        self.assert_token_works()
        self.assertEqual(self.ctl("renew", "p").returncode, 0)
        self.assert_token_works()
        self.assertEqual(self.ctl("logout", "p").returncode, 0)
        self.assertEqual(self.ctl("token", "p").returncode, 4)

    def test_ctrl_c_cancels_the_flow(self):
        self.add_generic()
        env = dict(self.env, BROWSER="/bin/true")  # a browser that never comes back
        proc = subprocess.Popen([TOKENCTL, "login", "p"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            wait_for(lambda: self.api("GET", "/v1/profiles/p/login")[1].get("listening"), "the flow to start")
            self.assertTrue(port_open(self.port))
            # (tokenctl installs its handler once the flow has started.)
            self.assertTrue(read_until(proc.stderr, "Waiting"), "tokenctl did not start waiting")
            proc.send_signal(2)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        self.assertEqual(proc.returncode, 1, out + err)
        self.assertIn("cancelled", err)
        self.assertEqual(self.api("GET", "/v1/profiles/p/login")[1]["state"], "cancelled")
        self.assertFalse(port_open(self.port))
        self.assertFalse(self.profile()["has_token"])

    def test_paste_bare_code_over_the_api(self):
        self.add_generic()
        flow = self.start_paste_flow()
        self.assertFalse(flow["listening"])
        self.assertFalse(port_open(self.port))
        code = redirect_params(self.consent(flow["authorize_url"]))["code"]
        status, body = self.api("POST", "/v1/profiles/p/login/complete", {"code": code})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["state"], "succeeded")
        self.assert_token_works()
        # The same code again: no flow is pending any more.
        status, body = self.api("POST", "/v1/profiles/p/login/complete", {"code": code})
        self.assertEqual(status, 409, body)

    # -- failures: each a clear error, nothing stored changed ---------------------------

    def with_existing_token(self):
        """A profile that already holds a token, so 'nothing changed' is visible."""
        self.add_generic()
        r = self.ctl("login", "p")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return self.stored_state(), self.assert_token_works()

    def assert_unchanged(self, before, token):
        self.assertEqual(self.stored_state(), before)
        self.assertEqual(self.ctl("token", "p").stdout.strip(), token)

    def test_wrong_state_ends_the_flow(self):
        before, token = self.with_existing_token()
        flow = self.start_paste_flow()
        location = self.consent(flow["authorize_url"])
        forged = location.replace("state=", "state=x")
        status, body = self.api("POST", "/v1/profiles/p/login/complete", {"redirect_url": forged})
        self.assertEqual(status, 400, body)
        self.assertEqual(body["error"]["code"], "login_failed")
        self.assertEqual(body["error"]["reason"], "state_mismatch")
        self.assertIn("state", body["error"]["message"])
        status, body = self.api("GET", "/v1/profiles/p/login")
        self.assertEqual(body["state"], "failed")
        self.assert_unchanged(before, token)
        # The genuine redirect cannot be used afterwards either.
        status, body = self.api("POST", "/v1/profiles/p/login/complete", {"redirect_url": location})
        self.assertEqual(status, 409, body)
        self.assert_unchanged(before, token)

    def test_replayed_callback(self):
        self.add_generic()
        env = dict(self.env, FAKE_BROWSER_MODE="replay")
        r = self.ctl("login", "p", env=env)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        run = self.wait_browser_runs(1)[0]
        self.assertEqual(run["callback_status"], 200, run)
        # The tab reloaded: the listener is gone (or says the sign-in is over).
        self.assertNotEqual(run.get("replay_status"), 200, run)
        token = self.assert_token_works()
        before = self.stored_state()
        status, body = self.api("POST", "/v1/profiles/p/login/complete", {"redirect_url": run["location"]})
        self.assertEqual(status, 409, body)
        self.assertEqual(self.stored_state(), before)
        self.assertEqual(self.ctl("token", "p").stdout.strip(), token)
        # The code was exchanged once: the provider did not see a reuse.
        self.assertEqual([g for g in self.up.grants() if not g["alive"]], [])

    def test_pkce_mismatch(self):
        before, token = self.with_existing_token()
        flow = self.start_paste_flow()
        state = urllib.parse.parse_qs(urllib.parse.urlsplit(flow["authorize_url"]).query)["state"][0]
        # A code bound to someone else's challenge, delivered with this flow's state.
        _, other_challenge = make_pkce()
        r = self.up.authorize(WEB_ID, self.redirect, state=state, scope="openid offline_access",
                              code_challenge=other_challenge)
        self.assertEqual(r.status, 302)
        status, body = self.api("POST", "/v1/profiles/p/login/complete", {"redirect_url": r.headers["location"]})
        self.assertEqual(status, 400, body)
        self.assertEqual(body["error"]["reason"], "invalid_grant", body)
        self.assertIn("PKCE", body["error"]["message"])
        self.assert_unchanged(before, token)

    def test_denied_consent(self):
        before, token = self.with_existing_token()
        self.up.config(consent="deny")
        r = self.ctl("login", "p")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("access_denied", r.stderr)
        self.assertEqual(self.wait_browser_runs(2)[-1]["callback_status"], 400)
        self.assert_unchanged(before, token)
        status, body = self.api("GET", "/v1/profiles/p/login")
        self.assertEqual(body["error"]["reason"], "access_denied")

    def test_expired_flow(self):
        self.restart("--login-timeout", "1s")
        before, token = self.with_existing_token()
        flow = self.api("POST", "/v1/profiles/p/login", {})[1]
        self.assertTrue(flow["listening"])
        self.assertTrue(port_open(self.port))
        status, body = self.api("GET", "/v1/profiles/p/login?wait=30")
        self.assertEqual(body["state"], "expired", body)
        self.assertIn("in time", body["error"]["message"])
        wait_for(lambda: not port_open(self.port), "the listener to close after expiry")
        self.assert_unchanged(before, token)

    def test_taken_port(self):
        before, token = self.with_existing_token()
        with socket.socket() as squatter:
            # (The last login's connection may linger in TIME_WAIT on the port.)
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", self.port))
            squatter.listen(1)
            status, body = self.api("POST", "/v1/profiles/p/login", {})
            self.assertEqual(status, 409, body)
            self.assertIn(f"127.0.0.1:{self.port}", body["error"]["message"])
            self.assertIn("--redirect-uri", body["error"]["message"])
            r = self.ctl("login", "p")
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn("in use", r.stderr)
        self.assert_unchanged(before, token)

    # -- the loopback listener against other programs -----------

    def raw_get(self, target, host=None, family=socket.AF_INET, address="127.0.0.1"):
        """One GET to the loopback listener; (status, body)."""
        with socket.socket(family) as s:
            s.settimeout(20)
            s.connect((address, self.port))
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{self.port}'}\r\n"
                      "Connection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode(errors="replace")

    def test_foreign_requests_to_the_listener_leave_the_flow_pending(self):
        self.add_generic()
        status, flow = self.api("POST", "/v1/profiles/p/login", {})
        self.assertEqual(status, 200, flow)
        self.assertTrue(flow["listening"])
        location = self.consent(flow["authorize_url"])
        query = urllib.parse.urlsplit(location).query
        state = redirect_params(location)["state"]
        # What any web page can send (an <img src=...>): no state, a wrong one,
        # an error without the state. Each gets a 400; the flow keeps waiting.
        for target in ("/callback", "/callback?code=x", "/callback?error=access_denied",
                       f"/callback?code=x&state={state}x", "/callback?error=access_denied&state=nope"):
            code, body = self.raw_get(target)
            self.assertEqual(code, 400, target)
            self.assertIn("still waiting", body)
            self.assertEqual(self.api("GET", "/v1/profiles/p/login")[1]["state"], "pending", target)
        # The real redirect through a name other than a loopback one (DNS
        # rebinding) is refused too, and does not use up the code.
        code, _ = self.raw_get("/callback?" + query, host=f"attacker.example:{self.port}")
        self.assertEqual(code, 400)
        code, _ = self.raw_get("/callback?" + query, host="127.0.0.1:1")
        self.assertEqual(code, 400)
        code, _ = self.raw_get("/callback?" + query, host=f"127.0.0.1.:{self.port}")  # a DNS name
        self.assertEqual(code, 400)
        self.assertEqual(self.api("GET", "/v1/profiles/p/login")[1]["state"], "pending")
        # Idle connections (another user's) fill the listener; the browser still gets through.
        idle = []
        try:
            for _ in range(20):
                c = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                idle.append(c)
            code, body = self.raw_get("/callback?" + query, host=f"localhost:{self.port}")
        finally:
            for c in idle:
                c.close()
        self.assertEqual(code, 200, body)
        wait_for(lambda: self.api("GET", "/v1/profiles/p/login")[1]["state"] == "succeeded", "the login to succeed")
        self.assert_token_works()

    def ipv6_loopback(self):
        try:
            with socket.socket(socket.AF_INET6) as s:
                s.bind(("::1", 0))
            return True
        except OSError:
            return False

    def test_localhost_redirect_is_served_on_both_loopback_addresses(self):
        if not self.ipv6_loopback():
            self.skipTest("no IPv6 loopback on this machine")
        redirect = f"http://localhost:{self.port}/callback"
        self.up.add_client("local-app", WEB_SECRET, "client_secret_basic", redirect_uris=[redirect])
        self.add_generic(client="local-app", extra=("--client-secret-file", secret_file(self.xdg.root, "ls", WEB_SECRET)),
                         redirect=redirect)
        # Someone else holds [::1]:PORT, where browsers try localhost first: the start fails.
        with socket.socket(socket.AF_INET6) as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("::1", self.port))
            squatter.listen(1)
            status, body = self.api("POST", "/v1/profiles/p/login", {})
            self.assertEqual(status, 409, body)
            self.assertIn(f"[::1]:{self.port}", body["error"]["message"])
        self.assertFalse(port_open(self.port))
        # Free: tokend takes both, and the redirect arrives over ::1.
        status, flow = self.api("POST", "/v1/profiles/p/login", {})
        self.assertEqual(status, 200, flow)
        location = self.consent(flow["authorize_url"])
        self.assertTrue(location.startswith(redirect), location)
        code, body = self.raw_get("/callback?" + urllib.parse.urlsplit(location).query,
                                  host=f"localhost:{self.port}", family=socket.AF_INET6, address="::1")
        self.assertEqual(code, 200, body)
        wait_for(lambda: self.api("GET", "/v1/profiles/p/login")[1]["state"] == "succeeded", "the login to succeed")

    def test_public_client_without_pkce_is_refused(self):
        self.add_generic(client=PUBLIC_ID, extra=("--pkce", "off"))
        status, body = self.api("POST", "/v1/profiles/p/login", {})
        self.assertEqual(status, 400, body)
        self.assertIn("public client", body["error"]["message"])
        self.assertFalse(port_open(self.port))

    def test_cancel(self):
        self.add_generic()
        self.api("POST", "/v1/profiles/p/login", {})
        self.assertTrue(port_open(self.port))
        status, _ = self.api("DELETE", "/v1/profiles/p/login")
        self.assertEqual(status, 204)
        self.assertFalse(port_open(self.port))
        self.assertEqual(self.api("GET", "/v1/profiles/p/login")[1]["state"], "cancelled")

    # -- device flow ----------------------------------------------------------------------

    def test_device_flow_through_slow_down(self):
        self.add_generic(extra=["--device-authorization-url", self.up.device_authorization_url])
        self.up.config(device_interval=1)
        self.up.force_slow_down(count=1)
        proc = subprocess.Popen([TOKENCTL, "login", "p", "--device", "--no-browser"], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            status, flow = None, None

            def pending():
                nonlocal status, flow
                status, flow = self.api("GET", "/v1/profiles/p/login")
                return flow.get("state") == "pending" and "user_code" in flow
            wait_for(pending, "the device flow to start")
            code = flow["user_code"]
            wait_for(lambda: self.up.device(code)["slow_downs"] >= 1, "tokend to be told to slow down")
            self.up.approve_device(code)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        self.assertEqual(proc.returncode, 0, out + err)
        self.assertIn(code, out + err)
        dev = self.up.device(code)
        # After slow_down the poll spacing grew by at least 5 s (RFC 8628 §3.5).
        self.assertGreaterEqual(dev["poll_spacings"][-1], 5.0, dev)
        self.assert_token_works()
        r = self.ctl("renew", "p")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.ctl("logout", "p")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_device_flow_denied(self):
        self.add_generic(extra=["--device-authorization-url", self.up.device_authorization_url])
        self.up.config(device_interval=1)
        status, flow = self.api("POST", "/v1/profiles/p/login", {"flow": "device"})
        self.assertEqual(status, 200, flow)
        self.up.deny_device(flow["user_code"])
        status, body = self.api("GET", "/v1/profiles/p/login?wait=30")
        self.assertEqual(body["state"], "failed", body)
        self.assertEqual(body["error"]["reason"], "access_denied")
        self.assertFalse(self.profile()["has_token"])

    def test_device_flow_needs_an_endpoint(self):
        self.add_generic()
        status, body = self.api("POST", "/v1/profiles/p/login", {"flow": "device"})
        self.assertEqual(status, 400, body)
        self.assertIn("device", body["error"]["message"])

    # -- discovery and providers -------------------------------------------------------------

    def test_issuer_discovery(self):
        for issuer in (self.up.issuer, self.up.tenant_issuer):
            with self.subTest(issuer=issuer):
                r = self.ctl("add", "d", "--kind", "oauth2", "--issuer", issuer, "--client-id", WEB_ID,
                             "--client-secret-file", secret_file(self.xdg.root, "cs", WEB_SECRET),
                             "--redirect-uri", self.redirect, "--scopes", "openid offline_access")
                self.assertEqual(r.returncode, 0, r.stderr)
                r = self.ctl("login", "d")
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assert_token_works("d")
                discovered = self.profile("d")["config"]["discovered"]
                self.assertEqual(discovered["issuer"], issuer)
                self.assertEqual(discovered["token_endpoint"], self.up.token_url)
                r = self.ctl("renew", "d")
                self.assertEqual(r.returncode, 0, r.stderr)
                r = self.ctl("test", "d")
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                r = self.ctl("logout", "d")
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertIn("revoked", r.stdout)  # the discovered revocation endpoint
                self.ctl("remove", "d")

    def test_mcp_discovery_registration_reused_across_restart(self):
        for challenge_only in (False, True):
            with self.subTest(challenge_only=challenge_only):
                self.up.config(prm_via_challenge_only=challenge_only)
                registrations = self.up.stats()["registrations"]
                r = self.ctl("add", "m", "--kind", "oauth2", "--provider", "mcp", "--mcp-server", self.up.mcp_url,
                             "--redirect-uri", self.redirect)
                self.assertEqual(r.returncode, 0, r.stderr)
                r = self.ctl("login", "m")
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                # Same site for the MCP server and its authorization server: no confused-deputy note.
                self.assertNotIn("a different site", r.stderr)
                token = self.assert_token_works("m")
                self.assertEqual(self.up.stats()["registrations"], registrations + 1)
                # The token is for the MCP server (RFC 8707 resource).
                self.assertEqual(self.up.mcp_request(token).status, 200)
                authz = self.authorizations()[-1]
                self.assertEqual(authz.get("resource"), self.up.mcp_url, authz)
                self.assertIn("offline_access", authz.get("scope", ""))
                config = self.profile("m")["config"]
                self.assertTrue(config["client_registered"])
                # Restart, log in again: the registration is reused.
                self.restart()
                r = self.ctl("login", "m")
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertEqual(self.up.stats()["registrations"], registrations + 1)
                self.assertEqual(self.profile("m")["config"]["client_id"], config["client_id"])
                r = self.ctl("renew", "m")
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(self.up.mcp_request(self.assert_token_works("m")).status, 200)
                r = self.ctl("logout", "m")
                self.assertEqual(r.returncode, 0, r.stderr)
                self.ctl("remove", "m")

    # -- client ID metadata documents (MCP 2026-07-28) ------------------------------------

    def metadata_document(self, *docs):
        """An https client ID metadata document served with the test CA; returns its URL.
        `docs` are the answers to the first, second, ... fetch: callables of the URL."""
        server = DocumentServer(self.up.cert_file, self.up.key_file)
        self.addCleanup(server.stop)
        self.docs = server
        url = server.url("/tokend/client.json")
        server.serve("/tokend/client.json", [d(url) for d in docs])
        return url

    def cimd(self, redirect_uris):
        return lambda url: {"client_id": url, "client_name": "tokend", "redirect_uris": redirect_uris,
                            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
                            "token_endpoint_auth_method": "none"}

    def add_mcp_with_document(self, url):
        r = self.ctl("add", "m", "--kind", "oauth2", "--provider", "mcp", "--mcp-server", self.up.mcp_url,
                     "--client-id", url, "--redirect-uri", self.redirect)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_mcp_login_with_a_client_id_metadata_document(self):
        # The authorization server offers both CIMD and dynamic registration: CIMD is used.
        self.up.config(client_id_metadata_documents=True)
        url = self.metadata_document(self.cimd([self.redirect]))
        registrations = self.up.stats()["registrations"]
        self.add_mcp_with_document(url)
        r = self.ctl("login", "m")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(self.up.stats()["registrations"], registrations, "DCR used although CIMD is supported")
        # tokend checked the document before the flow, then the server fetched it itself.
        fetches = self.docs.fetches("/tokend/client.json")
        self.assertEqual(len(fetches), 2, fetches)
        self.assertNotEqual(fetches[0], "fake_upstream")
        self.assertEqual(fetches[1], "fake_upstream")
        authz = [e for e in self.up.log(settle=True) if e.get("authorize")][-1]
        self.assertEqual(authz["client_metadata_document"], {"url": url, "outcome": "accepted"})
        self.assertEqual(authz["authorize"]["params"]["client_id"], url)
        self.assertEqual(authz["authorize"]["params"]["resource"], self.up.mcp_url)
        exchange = [e for e in self.up.log(settle=True) if e.get("grant_type") == "authorization_code"][-1]
        self.assertEqual((exchange["client_id"], exchange["client_auth"]), (url, "none"))
        token = self.assert_token_works("m")
        self.assertEqual(self.up.mcp_request(token).status, 200)
        config = self.profile("m")["config"]
        self.assertEqual(config["client_id"], url)
        self.assertFalse(config.get("client_registered", False))
        # Refreshing as that public client works too.
        r = self.ctl("renew", "m")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotEqual(self.assert_token_works("m"), token)

    def test_mcp_document_url_without_server_support_falls_back_to_registration(self):
        url = self.metadata_document(self.cimd([self.redirect]))
        registrations = self.up.stats()["registrations"]
        self.add_mcp_with_document(url)
        r = self.ctl("login", "m")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(self.up.stats()["registrations"], registrations + 1)
        self.assertEqual(self.docs.fetches("/tokend/client.json"), [])
        config = self.profile("m")["config"]
        self.assertTrue(config["client_registered"])
        self.assertEqual(config["client_id_metadata_document"], url)
        self.assert_token_works("m")
        # The server supports documents later: the next login takes the
        # document (it comes before registration), not the registered client.
        self.up.config(client_id_metadata_documents=True)
        r = self.ctl("login", "m")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(self.up.stats()["registrations"], registrations + 1)
        authz = [e for e in self.up.log(settle=True) if e.get("authorize")][-1]
        self.assertEqual(authz["client_metadata_document"], {"url": url, "outcome": "accepted"})
        config = self.profile("m")["config"]
        self.assertEqual(config["client_id"], url)
        self.assertFalse(config.get("client_registered", False))
        self.assert_token_works("m")

    def test_mcp_document_without_our_redirect_is_refused_before_the_flow(self):
        self.up.config(client_id_metadata_documents=True)
        url = self.metadata_document(self.cimd(["http://127.0.0.1:9/elsewhere"]))
        self.add_mcp_with_document(url)
        before = self.stored_state("m")
        r = self.ctl("login", "m")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn(f"the redirect URI {self.redirect} is not listed in the client ID metadata document {url}; "
                      f"it allows http://127.0.0.1:9/elsewhere", r.stderr)
        self.assertIn("tokenctl add m ... --redirect-uri URI", r.stderr)
        self.assertEqual(self.authorizations(), [], "the flow started anyway")
        self.assertEqual(len(self.docs.fetches("/tokend/client.json")), 1)
        self.assertEqual(self.browser_runs(), [])
        self.assertFalse(port_open(self.port))
        self.assertEqual(self.stored_state("m"), before)
        self.assertEqual(self.up.stats()["registrations"], 0)

    def test_mcp_authorization_server_refuses_a_document_that_does_not_match(self):
        # The document tokend checked is not the one the server fetches (it changed in
        # between): the server refuses on its page, never redirecting, and nothing is stored.
        self.up.config(client_id_metadata_documents=True)
        url = self.metadata_document(self.cimd([self.redirect]), self.cimd(["http://127.0.0.1:9/elsewhere"]))
        self.add_mcp_with_document(url)
        before = self.stored_state("m")
        refusals = self.up.stats()["metadata_document_refusals"]
        flow = self.start_paste_flow("m")
        split = urllib.parse.urlsplit(flow["authorize_url"])
        page = self.up.request("GET", split.path + "?" + split.query)
        self.assertEqual(page.status, 400, page.body[:300])
        self.assertIn("does not list the redirect_uri of this request", page.body.decode())
        self.assertNotIn("location", page.headers)
        self.assertEqual(self.up.stats()["metadata_document_refusals"], refusals + 1)
        self.assertEqual(self.api("DELETE", "/v1/profiles/m/login")[0], 204)
        self.assertEqual(self.stored_state("m"), before)
        self.assertEqual([e for e in self.up.log(settle=True) if e.get("grant_type") == "authorization_code"], [])

    def test_mcp_login_names_an_authorization_server_on_another_site(self):
        # Issue 13, the confused-deputy hint: an MCP server (here a plain-http
        # stub on localhost) that sends the user to sign in somewhere else.
        import http.server
        import threading
        stub_port = free_port()
        mcp = f"http://localhost:{stub_port}/mcp"
        issuer = self.up.issuer

        class Stub(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.startswith("/.well-known/oauth-protected-resource"):
                    body = json.dumps({"resource": mcp, "authorization_servers": [issuer]}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                else:
                    body = b"{}"
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", "Bearer")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", stub_port), Stub)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        r = self.ctl("add", "m", "--kind", "oauth2", "--provider", "mcp", "--mcp-server", mcp,
                     "--redirect-uri", self.redirect)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.ctl("login", "m", "--timeout", "1", env=dict(self.env, BROWSER="/bin/true"))
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        site = issuer.split("://", 1)[1].split("/", 1)[0]
        self.assertIn(f"Note: the MCP server http://localhost:{stub_port} sends you to sign in at https://{site}",
                      r.stderr)
        # Said before the browser opens.
        self.assertLess(r.stderr.index("Note: the MCP server"), r.stderr.index("open"))

    def add_atlassian(self, name="a", site=None):
        args = ["add", name, "--kind", "oauth2", "--provider", "atlassian", "--client-id", ATLASSIAN_ID,
                "--client-secret-file", secret_file(self.xdg.root, "cs", WEB_SECRET),
                "--authorize-url", self.up.authorize_endpoint, "--token-url", self.up.token_url,
                "--api-base", self.up.base_url, "--redirect-uri", self.redirect, "--scopes", "read:jira-work"]
        if site:
            args += ["--site", site]
        r = self.ctl(*args)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_atlassian_preset(self):
        self.up.config(require_offline_access=True)
        self.add_atlassian()
        r = self.ctl("login", "a")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        authz = self.authorizations()[-1]
        self.assertEqual(authz.get("audience"), "api.atlassian.com")
        self.assertEqual(authz.get("prompt"), "consent")
        self.assertIn("offline_access", authz.get("scope", "").split())
        exchange = [e for e in self.up.log(settle=True) if e.get("grant_type") == "authorization_code"][-1]
        self.assertIn("json", exchange["content_type"])  # Atlassian documents a JSON body
        p = self.profile("a")
        self.assertTrue(p["has_refresh_token"])
        self.assertEqual(p["config"]["cloud_id"], "11111111-1111-1111-1111-111111111111")
        self.assert_token_works("a")
        r = self.ctl("renew", "a")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.ctl("test", "a")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("acme", r.stdout)
        r = self.ctl("logout", "a")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.ctl("token", "a").returncode, 4)

    def test_atlassian_several_sites(self):
        sites = [{"id": "c1", "url": "https://one.atlassian.net", "name": "one"},
                 {"id": "c2", "url": "https://two.atlassian.net", "name": "two"}]
        self.up.set_sites(sites)
        self.add_atlassian()
        r = self.ctl("login", "a")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("https://one.atlassian.net", r.stderr)
        self.assertIn("https://two.atlassian.net", r.stderr)
        self.assertNotIn("cloud_id", self.profile("a")["config"])
        # With the site named, the login picks its cloud id.
        self.add_atlassian(site="https://two.atlassian.net")
        r = self.ctl("login", "a")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(self.profile("a")["config"]["cloud_id"], "c2")

    # -- re-authentication -------------------------------------------------------------------

    def test_reauth_notify_and_token_wait(self):
        marker = os.path.join(self.xdg.root, "notified")
        self.restart("--notify-command", f'echo "$TOKEND_PROFILE|$TOKEND_LOGIN_COMMAND" >> {marker}')
        self.add_generic()
        r = self.ctl("login", "p")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for g in self.up.grants():
            self.up.revoke_grant(g["grant_id"])
        r = self.ctl("renew", "p")
        self.assertEqual(r.returncode, 4, r.stderr)
        wait_for(lambda: os.path.exists(marker) and open(marker).read().strip(), "the notify command to run")
        self.assertEqual(open(marker).read().strip(), "p|tokenctl login p")
        status, body = self.api("GET", "/v1/profiles/p/token")
        self.assertEqual(status, 401)
        self.assertEqual(body["error"]["code"], "reauth_required")
        self.assertEqual(body["error"]["command"], "tokenctl login p")
        # A script waiting for the token gets it as soon as the login is done.
        waiter = subprocess.Popen([TOKENCTL, "token", "p", "--wait", "60"], env=self.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: self.metric("tokend_waiting_requests") == 1, "the token request to wait")
            r = self.ctl("login", "p")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            out, err = waiter.communicate(timeout=30)
        finally:
            if waiter.poll() is None:
                waiter.kill()
        self.assertEqual(waiter.returncode, 0, err)
        live = {t["token"] for t in self.up.tokens() if t.get("token")}
        self.assertIn(out.strip(), live)

    def test_database_key_and_other_environment_do_not_reach_the_notify_command(self):
        # Issue 13 finding 5: TOKEND_KEY is wiped once read; the command gets an allow-listed environment.
        with open(self.xdg.key_file, "rb") as f:
            key_hex = f.read().hex()
        self.assertEqual(len(key_hex), 64)
        dump = os.path.join(self.xdg.root, "notify-env")
        self.env.update(TOKEND_KEY=key_hex, AWS_SECRET_ACCESS_KEY="aws-MARKER-secret", LC_ALL="C.UTF-8")
        self.restart("--notify-command", f"env > {dump}.tmp && mv {dump}.tmp {dump}")
        del self.env["TOKEND_KEY"]
        environ_file = f"/proc/{self.daemon.proc.pid}/environ"
        if os.access(environ_file, os.R_OK):
            with open(environ_file, "rb") as f:
                block = f.read()
            self.assertNotIn(key_hex.encode(), block)
            self.assertNotIn(b"TOKEND_KEY=" + key_hex.encode(), block)
        self.add_generic()
        r = self.ctl("login", "p")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for g in self.up.grants():
            self.up.revoke_grant(g["grant_id"])
        r = self.ctl("renew", "p")
        self.assertEqual(r.returncode, 4, r.stderr)
        wait_for(lambda: os.path.exists(dump), "the notify command to run")
        with open(dump) as f:
            text = f.read()
        seen = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        self.assertNotIn(key_hex, text)
        self.assertNotIn("TOKEND_KEY", seen)
        self.assertNotIn("AWS_SECRET_ACCESS_KEY", seen)
        self.assertNotIn("FAKE_BROWSER_LOG", seen)
        self.assertEqual(seen["TOKEND_PROFILE"], "p")
        self.assertEqual(seen["TOKEND_LOGIN_COMMAND"], "tokenctl login p")
        self.assertEqual(seen["HOME"], self.env["HOME"])
        self.assertEqual(seen["LC_ALL"], "C.UTF-8")
        self.assertIn("PATH", seen)

    # -- import -------------------------------------------------------------------------------

    def test_import_dotenv_written_by_python_dotenv(self):
        g = self.up.add_grant(WEB_ID, access_lifetime=3600)
        env_file = os.path.join(self.xdg.root, ".env")
        # python-dotenv's set_key writes KEY='value' lines; scripts add comments.
        with open(env_file, "w") as f:
            f.write("# Jira OAuth (managed by jira_token_manager.py)\n"
                    f"JIRA_OAUTH_CLIENT_ID='{WEB_ID}'\n"
                    f"JIRA_OAUTH_CLIENT_SECRET='{WEB_SECRET}'\n"
                    f"JIRA_OAUTH_REDIRECT_URI='{self.redirect}'\n"
                    "\n"
                    f"JIRA_OAUTH_ACCESS_TOKEN='{g['access_token']}'\n"
                    f"export JIRA_OAUTH_REFRESH_TOKEN=\"{g['refresh_token']}\"\n"
                    "JIRA_URL=https://acme.atlassian.net  # the site\n")
        os.chmod(env_file, 0o600)
        r = self.ctl("import", "j", "--dotenv", env_file, "--provider", "generic", "--token-url", self.up.token_url,
                     "--token-endpoint-auth", "client_secret_basic")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for secret in (WEB_SECRET, g["access_token"], g["refresh_token"]):
            self.assertNotIn(secret, r.stdout + r.stderr)
        p = self.profile("j")
        self.assertTrue(p["has_refresh_token"])
        self.assertEqual(p["config"]["client_id"], WEB_ID)
        r = self.ctl("renew", "j")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotEqual(self.assert_token_works("j"), g["access_token"])

    def test_import_bad_dotenv_changes_nothing(self):
        env_file = os.path.join(self.xdg.root, ".env")
        with open(env_file, "w") as f:
            f.write("JIRA_OAUTH_CLIENT_ID=x\nthis line is not an assignment SECRET-VALUE\n")
        r = self.ctl("import", "j", "--dotenv", env_file)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("line 2", r.stderr)
        self.assertNotIn("SECRET-VALUE", r.stderr)
        status, _ = self.api("GET", "/v1/profiles/j")
        self.assertEqual(status, 404)

    # -- conformance with real authorization servers ---------------------------

    def test_offline_access_brings_prompt_consent_and_a_refresh_token(self):
        # Like a stock OIDC server: offline_access is dropped without prompt=consent.
        self.up.config(require_offline_access=True, offline_needs_consent=True)
        self.add_generic()
        r = self.ctl("login", "p")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        authz = self.authorizations()[-1]
        self.assertEqual(authz.get("prompt"), "consent", authz)
        self.assertTrue(self.profile()["has_refresh_token"])
        self.assertEqual(self.ctl("renew", "p").returncode, 0)

    def test_own_prompt_and_authorize_params(self):
        self.up.config(require_offline_access=True, offline_needs_consent=True)
        self.add_generic(extra=("--prompt", "login", "--authorize-param", "login_hint=me@example.com",
                                "--authorize-param", "access_type=offline"))
        config = self.profile()["config"]
        self.assertEqual(config["prompt"], "login")
        self.assertEqual(config["authorize_params"], {"login_hint": "me@example.com", "access_type": "offline"})
        flow = self.start_paste_flow()
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(flow["authorize_url"]).query)
        self.assertEqual(query["prompt"], ["login"])
        self.assertEqual(query["login_hint"], ["me@example.com"])
        self.assertEqual(query["access_type"], ["offline"])
        # The server drops offline_access without consent: the warning says
        # what was asked, what was granted, and what to try.
        status, body = self.api("POST", "/v1/profiles/p/login/complete",
                                {"redirect_url": self.consent(flow["authorize_url"])})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["state"], "succeeded")
        warning = body["warning"]
        self.assertIn("no refresh token", warning)
        self.assertIn('asked for scope "openid offline_access" with prompt=login', warning)
        self.assertIn('granted "openid"', warning)
        self.assertIn("access_type=offline", warning)
        self.assertFalse(self.profile()["has_refresh_token"])

    def test_bad_prompt_and_authorize_params_are_refused(self):
        for extra, needle, code in ((("--authorize-param", "state=x"), "may not set \"state\"", 1),
                                    (("--authorize-param", "redirect_uri=http://evil"), "redirect_uri", 1),
                                    (("--authorize-param", "novalue"), "NAME=VALUE", 2),
                                    (("--prompt", "consent\nx"), "control character", 1),
                                    (("--prompt", "con;sent"), "prompt", 1)):
            with self.subTest(extra=extra):
                r = self.ctl("add", "bad", "--kind", "oauth2", "--client-id", WEB_ID, "--token-url",
                             self.up.token_url, *extra)
                self.assertEqual(r.returncode, code, r.stderr)
                self.assertIn(needle, r.stderr)
                self.assertEqual(self.api("GET", "/v1/profiles/bad")[0], 404)

    def test_iss_checked_on_the_loopback_and_on_a_paste(self):
        self.up.config(authorization_response_iss=True)
        r = self.ctl("add", "d", "--kind", "oauth2", "--issuer", self.up.issuer, "--client-id", WEB_ID,
                     "--client-secret-file", secret_file(self.xdg.root, "cs", WEB_SECRET),
                     "--redirect-uri", self.redirect, "--scopes", "openid offline_access")
        self.assertEqual(r.returncode, 0, r.stderr)
        # The right iss: accepted through the listener.
        r = self.ctl("login", "d")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("iss=", self.wait_browser_runs(1)[0]["location"])
        before, token = self.stored_state("d"), self.assert_token_works("d")
        exchanges = len([e for e in self.up.log(settle=True) if e.get("grant_type") == "authorization_code"])
        # Another issuer's iss: refused before the code is redeemed, pasted ...
        self.up.config(iss_override="https://evil.example")
        flow = self.start_paste_flow("d")
        status, body = self.api("POST", "/v1/profiles/d/login/complete",
                                {"redirect_url": self.consent(flow["authorize_url"])})
        self.assertEqual(status, 400, body)
        self.assertEqual(body["error"]["reason"], "iss_mismatch")
        self.assertIn("https://evil.example", body["error"]["message"])
        # ... and through the loopback listener.
        r = self.ctl("login", "d")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("RFC 9207", r.stderr)
        runs = self.wait_browser_runs(2)
        self.assertEqual(runs[-1]["callback_status"], 400, runs[-1])
        # The server advertises iss, a redirect without one is refused too.
        self.up.config(iss_override=None, authorization_response_iss=False)
        flow = self.start_paste_flow("d")
        location = self.consent(flow["authorize_url"])
        self.assertNotIn("iss=", location)
        status, body = self.api("POST", "/v1/profiles/d/login/complete", {"redirect_url": location})
        self.assertEqual(status, 400, body)
        self.assertEqual(body["error"]["reason"], "iss_missing")
        self.assertEqual(len([e for e in self.up.log(settle=True) if e.get("grant_type") == "authorization_code"]), exchanges,
                         "a code was redeemed although iss was wrong")
        self.assertEqual(self.stored_state("d"), before)
        self.assertEqual(self.ctl("token", "d").stdout.strip(), token)

    def test_refresh_token_alone_is_refreshed_at_once(self):
        g = self.up.add_grant(WEB_ID, access_lifetime=3600)
        rt = secret_file(self.xdg.root, "rt", g["refresh_token"])
        r = self.ctl("add", "p", "--kind", "oauth2", "--client-id", WEB_ID, "--token-url", self.up.token_url,
                     "--client-secret-file", secret_file(self.xdg.root, "cs", WEB_SECRET), "--refresh-token-file", rt)
        self.assertEqual(r.returncode, 0, r.stderr)
        wait_for(lambda: self.profile()["has_token"], "the refresh token to be refreshed")
        self.assertEqual(self.up.grant(g["grant_id"])["refreshes"], 1)
        self.assertNotEqual(self.assert_token_works(), g["access_token"])
        # A refresh token the provider refuses: reauth_required naming the login.
        self.up.revoke_grant(g["grant_id"])
        g2 = self.up.add_grant(WEB_ID)
        self.up.revoke_grant(g2["grant_id"])
        r = self.ctl("add", "q", "--kind", "oauth2", "--client-id", WEB_ID, "--token-url", self.up.token_url,
                     "--client-secret-file", secret_file(self.xdg.root, "cs", WEB_SECRET),
                     "--refresh-token-file", secret_file(self.xdg.root, "rt2", g2["refresh_token"]))
        self.assertEqual(r.returncode, 0, r.stderr)
        wait_for(lambda: self.profile("q")["state"] == "reauth_required", "the refused refresh to need a login")
        r = self.ctl("token", "q")
        self.assertEqual(r.returncode, 4, r.stderr)
        self.assertIn("tokenctl login q", r.stderr)

    def test_import_refresh_token_alone(self):
        g = self.up.add_grant(WEB_ID, access_lifetime=3600)
        env_file = os.path.join(self.xdg.root, ".env")
        with open(env_file, "w") as f:
            f.write(f"JIRA_OAUTH_CLIENT_ID={WEB_ID}\nJIRA_OAUTH_CLIENT_SECRET={WEB_SECRET}\n"
                    f"JIRA_OAUTH_REDIRECT_URI={self.redirect}\nJIRA_OAUTH_REFRESH_TOKEN={g['refresh_token']}\n")
        os.chmod(env_file, 0o600)
        r = self.ctl("import", "j", "--dotenv", env_file, "--provider", "generic", "--token-url", self.up.token_url,
                     "--token-endpoint-auth", "client_secret_basic")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        r = self.ctl("token", "j", "--wait", "20")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.up.grant(g["grant_id"])["refreshes"], 1)

    def test_short_lived_tokens_serve_token_headers_and_the_proxy(self):
        # Tokens that live 15 s: less than --min-valid's default 60 and the
        # proxy's 30 s; a fresh one must still be served.
        g = self.up.add_grant(WEB_ID, access_lifetime=15)
        r = self.ctl("add", "p", "--kind", "oauth2", "--client-id", WEB_ID, "--token-url", self.up.token_url,
                     "--client-secret-file", secret_file(self.xdg.root, "cs", WEB_SECRET),
                     "--refresh-token-file", secret_file(self.xdg.root, "rt", g["refresh_token"]),
                     "--api-base", self.up.base_url)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.ctl("token", "p")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.ctl("token", "p", "--min-valid", "600")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.ctl("headers", "p")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(json.loads(r.stdout)["Authorization"].startswith("Bearer "))
        r = self.ctl("api", "p", "GET", "/me")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_atlassian_dc_preset_sends_redirect_uri_on_refresh(self):
        self.up.config(data_center=True, pkce_required=True)
        r = self.ctl("add", "dc", "--kind", "oauth2", "--provider", "atlassian-dc", "--site", self.up.base_url,
                     "--client-id", ATLASSIAN_ID, "--client-secret-file", secret_file(self.xdg.root, "cs", WEB_SECRET),
                     "--redirect-uri", self.redirect, "--scopes", "WRITE")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.ctl("login", "dc")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        authz = [e for e in self.up.log(settle=True) if e.get("authorize")][-1]
        self.assertEqual(authz["path"], "/rest/oauth2/latest/authorize", authz)
        self.assertEqual(authz["authorize"]["params"].get("code_challenge_method"), "S256")
        self.assertEqual(self.ctl("renew", "dc").returncode, 0)
        refresh = [e for e in self.up.log(settle=True) if e.get("grant_type") == "refresh_token"][-1]
        self.assertEqual(refresh["path"], "/rest/oauth2/latest/token")
        self.assertEqual(refresh["redirect_uri"], self.redirect)
        self.assert_token_works("dc")
        # Without the preset's redirect_uri the fake refuses, as Data Center does.
        r = self.ctl("add", "dc2", "--kind", "oauth2", "--provider", "atlassian-dc", "--site", self.up.base_url,
                     "--client-id", ATLASSIAN_ID)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("redirect_uri", r.stderr)

    def test_insufficient_scope_step_up_needs_consent_for_the_union(self):
        marker = os.path.join(self.xdg.root, "notified")
        self.restart("--notify-command", f'echo "$TOKEND_PROFILE|$TOKEND_REASON" >> {marker}')
        self.add_generic(extra=("--api-base", self.up.base_url))
        r = self.ctl("login", "p")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.up.fault("insufficient_scope", target="resource", count=1)
        calls = len([e for e in self.up.log(settle=True) if e.get("path") == "/me"])
        r = self.ctl("api", "p", "GET", "/me")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        # Exactly one upstream call: never an automatic retry.
        self.assertEqual(len([e for e in self.up.log(settle=True) if e.get("path") == "/me"]), calls + 1)
        union = ["openid", "offline_access", "read:jira-work", "write:jira-work"]
        self.assertEqual(self.profile()["config"]["step_up_scopes"], union)
        self.assertIn("tokenctl login p", r.stdout + r.stderr)
        def notified():
            if not os.path.exists(marker):
                return False
            with open(marker) as f:
                return "insufficient_scope" in f.read()
        wait_for(notified, "the notify command to run")
        # The token still works for what it can do; the next login asks for the union.
        self.assertEqual(self.ctl("api", "p", "GET", "/me").returncode, 0)
        r = self.ctl("login", "p")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(self.authorizations()[-1]["scope"], " ".join(union))
        self.assertNotIn("step_up_scopes", self.profile()["config"])

    def test_insufficient_scope_over_the_socket_is_a_tokend_error(self):
        self.add_generic(extra=("--api-base", self.up.base_url))
        self.assertEqual(self.ctl("login", "p").returncode, 0)
        self.up.fault("insufficient_scope", target="resource", count=1)
        status, body = self.api("GET", "/v1/proxy/p/me")
        self.assertEqual(status, 403, body)
        self.assertEqual(body["error"]["code"], "insufficient_scope")
        self.assertEqual(body["error"]["command"], "tokenctl login p")
        self.assertIn("write:jira-work", body["error"]["message"])

    def test_put_while_resolving_is_not_reverted(self):
        # The resolver once wrote back a whole stale snapshot.
        import threading
        sink = os.path.join(self.xdg.root, "token.txt")
        for changed_issuer in (False, True):
            with self.subTest(changed_issuer=changed_issuer):
                name = f"d{int(changed_issuer)}"
                base = ["add", name, "--kind", "oauth2", "--client-id", WEB_ID, "--redirect-uri", self.redirect,
                        "--scopes", "openid offline_access"]
                r = self.ctl(*base, "--issuer", self.up.issuer, "--api-base", "https://old.example",
                             "--sink-file", sink)
                self.assertEqual(r.returncode, 0, r.stderr)
                # Discovery answers late: the PUT lands while the login resolves.
                self.up.fault("slow", target="discovery", delay=4.0, count=1)
                result = {}
                t = threading.Thread(target=lambda: result.update(
                    r=self.api("POST", f"/v1/profiles/{name}/login", {"listen": False})))
                t.start()
                wait_for(lambda: self.api("GET", f"/v1/profiles/{name}/login")[1].get("phase") == "starting",
                         "the login to be resolving")
                issuer = self.up.tenant_issuer if changed_issuer else self.up.issuer
                r = self.ctl(*base, "--issuer", issuer, "--api-base", "https://new.example")
                self.assertEqual(r.returncode, 0, r.stderr)
                t.join(30)
                self.assertFalse(t.is_alive())
                status, body = result["r"]
                config = self.profile(name)["config"]
                self.assertEqual(config["api_base"], "https://new.example")
                self.assertNotIn("sinks", config)
                self.assertEqual(config["issuer"], issuer)
                if changed_issuer:
                    self.assertEqual(status, 409, body)
                    self.assertIn("changed while its login was starting", body["error"]["message"])
                    self.assertNotIn("discovered", config)
                else:
                    self.assertEqual(status, 200, body)
                    self.assertEqual(config["discovered"]["issuer"], self.up.issuer)
                    self.api("DELETE", f"/v1/profiles/{name}/login")

if __name__ == "__main__":
    unittest.main()

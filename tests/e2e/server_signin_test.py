"""People sign in to `tokend --server` with OIDC, end to end: the real tokend
with a TLS listener (a CA made at test time), a throwaway PostgreSQL, and a
real OpenID provider nobody on the team wrote (panva's oidc-provider,
tests/interop/server.mjs, whose login and consent answer at once), driven by
a cookie-following "browser".

Shows: sign-in (code + PKCE, state, nonce) and a session cookie; the user's
own profiles and not another user's; the Origin check on requests that
change something; logout, and the provider's logout after it (RP-initiated:
id_token_hint, client_id, post_logout_redirect_uri, state); and each refusal
with its exact status: a bad or replayed state, a callback in another
browser, a wrong issuer, a nonce the sign-in did not send, an expired
session, a sign-in the provider refused, sign-in over the Unix socket. The
ID token's signature: RS256, PS256, ES256 and EdDSA tokens from the provider's
own keys accepted; a tampered signature, an unknown kid (the JWKS fetched
again once, not again within a minute), alg none and alg HS256 refused. The
user from userinfo when the ID token lacks the claim (email). A session
ending after session-lifetime.

    server_signin_test.py --tokend PATH --tokenctl PATH --work-dir DIR
"""
import base64
import hashlib
import time
import http.cookiejar
import json
import os
import queue
import secrets
import ssl
import subprocess
import sys
import threading
import unittest
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
INTEROP = os.path.join(HERE, "..", "interop")
sys.path.insert(0, os.path.join(HERE, "..", "fake_upstream"))

from harness import (Daemon, XdgTree, binaries, free_port, install_packages, stop_process,  # noqa: E402
                     wait_for, work_dir_arg)

TOKEND, TOKENCTL = binaries()
WORK = work_dir_arg(os.path.join(HERE, "..", "..", "build", "tests", "interop"))

from make_ca import make_ca  # noqa: E402
from server_mode_test import PgCluster, exchange, write_private  # noqa: E402

SUB = "interop-user"  # the account the provider signs everyone in as
BOB = "bob@example.org"
OPS_SECRET = "svc-MARKER-ops-" + "o" * 40


class Provider:
    """server.mjs running; its issuer."""

    def __init__(self):
        self.proc = subprocess.Popen(["node", os.path.join(WORK, "server.mjs")], cwd=WORK,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True,
                                     env=dict(os.environ, INTEROP_SIGNING_KEYS="1"))
        lines = queue.Queue()
        self.events = []
        self.lock = threading.Lock()

        def read():
            for line in self.proc.stdout:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if obj.get("ready"):
                    lines.put(obj)
                elif obj.get("event"):
                    with self.lock:
                        self.events.append(obj["event"])
        threading.Thread(target=read, daemon=True).start()
        try:
            self.issuer = lines.get(timeout=30)["issuer"]
        except queue.Empty:
            self.stop()
            raise RuntimeError("the OpenID provider did not start")

    def register(self, redirect_uri, post_logout_uri, alg="RS256"):
        """A web client by dynamic registration: (client_id, client_secret)."""
        body = json.dumps({"redirect_uris": [redirect_uri], "application_type": "web",
                           "grant_types": ["authorization_code"], "response_types": ["code"],
                           "token_endpoint_auth_method": "client_secret_basic",
                           "id_token_signed_response_alg": alg,
                           "post_logout_redirect_uris": [post_logout_uri]}).encode()
        req = urllib.request.Request(self.issuer + "/reg", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as r:
            got = json.loads(r.read())
        return got["client_id"], got["client_secret"]

    def tamper(self, client_id, how):
        """The token endpoint's ID tokens for client_id altered (None: no longer)."""
        req = urllib.request.Request(self.issuer + "/test/tamper", method="POST",
                                     data=json.dumps({"client_id": client_id, "how": how}).encode())
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as r:
            assert r.status == 204

    def count(self, event):
        with self.lock:
            return self.events.count(event)

    def stop(self):
        stop_process(self.proc)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class Browser:
    """Cookies, no automatic redirects, tokend's test CA trusted."""

    def __init__(self, ca_file):
        self.jar = http.cookiejar.CookieJar()
        ctx = ssl.create_default_context(cafile=ca_file)
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect,
                                                  urllib.request.HTTPSHandler(context=ctx),
                                                  urllib.request.HTTPCookieProcessor(self.jar))

    def request(self, url, method="GET", body=None, headers=()):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        for k, v in headers:
            req.add_header(k, v)
        try:
            with self.opener.open(req, timeout=10) as r:
                return r.status, r.headers, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode("utf-8", "replace")

    def through_provider(self, url):
        """Follows the provider's redirects (login, consent) until one leaves it."""
        origin = urllib.parse.urlsplit(url)[:2]
        for _ in range(20):
            status, headers, body = self.request(url)
            location = headers.get("Location") if status in (302, 303) else None
            if not location:
                raise AssertionError(f"the provider stopped at {status}: {body[:300]}")
            location = urllib.parse.urljoin(url, location)
            if urllib.parse.urlsplit(location)[:2] != origin:
                return location
            url = location
        raise AssertionError("too many redirects")

    def cookie(self, name):
        for c in self.jar:
            if c.name == name:
                return c.value
        return None


def with_param(url, name, value):
    parts = urllib.parse.urlsplit(url)
    q = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != name] + [(name, value)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(q)))


def jwt_claims(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def code_of(text):
    try:
        return json.loads(text)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


class ServerSigninTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        why = install_packages(INTEROP, WORK, ("server.mjs",))
        if why:
            raise unittest.SkipTest(why)
        cls.pg = PgCluster()
        cls.ca = make_ca(os.path.join(cls.pg.dir, "ca"), key_type="ec")
        cls.provider = Provider()
        cls.logs = []

    @classmethod
    def tearDownClass(cls):
        cls.provider.stop()
        cls.pg.stop()
        for text in cls.logs:
            assert OPS_SECRET not in text, "a secret appears in tokend's log"

    def setUp(self):
        self.xdg = XdgTree()
        self.dir = self.xdg.root
        self.database = "tokend_" + secrets.token_hex(6)
        self.assertIsNotNone(self.pg.psql("postgres", f"CREATE DATABASE {self.database}"))
        self.port = free_port()
        self.public = f"https://localhost:{self.port}"
        self.socket = os.path.join(self.dir, "srv", "tokend.sock")
        self.kek = secrets.token_hex(32)
        self.daemon = None
        self.start_daemon()

    def start_daemon(self, alg="RS256", extra=""):
        """tokend with a client of its own at the provider (ID tokens signed with alg)."""
        if self.daemon is not None:
            self.assertEqual(self.daemon.stop(), 0, self.daemon.output())
            self.logs.append(self.daemon.output())
        self.client_id, self.client_secret = self.provider.register(self.public + "/auth/callback",
                                                                    self.public, alg)
        conf = os.path.join(self.dir, "server.conf")
        with open(conf, "w") as f:
            f.write(f"database-url-file = {write_private(os.path.join(self.dir, 'db'), self.pg.conninfo(self.database))}\n"
                    f"kek-file = {write_private(os.path.join(self.dir, 'kek'), self.kek)}\n"
                    f"socket = {self.socket}\n"
                    f"listen = 127.0.0.1:{self.port}\n"
                    f"tls-cert-file = {self.ca['cert_file']}\n"
                    f"tls-key-file = {self.ca['key_file']}\n"
                    f"public-url = {self.public}\n"
                    f"oidc-issuer = {self.provider.issuer}\n"
                    f"oidc-client-id = {self.client_id}\n"
                    f"oidc-client-secret-file = {write_private(os.path.join(self.dir, 'oidc'), self.client_secret)}\n"
                    + extra +
                    "[service.ops]\n"
                    f"secret-file = {write_private(os.path.join(self.dir, 'ops'), OPS_SECRET)}\n"
                    "act-for = *\n")
        self.daemon = Daemon(TOKEND, self.xdg.env, ["--server", "--config", conf, "--log-level", "debug"])
        self.daemon.wait_ready(self.socket)

    def tearDown(self):
        if self.daemon.proc.poll() is None:
            self.assertEqual(self.daemon.stop(), 0, self.daemon.output())
        out = self.daemon.output()
        self.logs.append(out)
        self.assertNotIn(self.client_secret, out)
        self.xdg.close()

    def browser(self):
        return Browser(self.ca["ca_file"])

    def start(self, b, return_to="/v1/profiles"):
        """/auth/login: the provider's authorize URL."""
        status, headers, body = b.request(f"{self.public}/auth/login?return_to={urllib.parse.quote(return_to)}")
        self.assertEqual(status, 302, body)
        self.assertIsNotNone(b.cookie("__Host-tokend-signin"))
        location = headers["Location"]
        params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
        self.assertEqual(params["code_challenge_method"], "S256")
        self.assertEqual(params["redirect_uri"], self.public + "/auth/callback")
        for p in ("state", "nonce", "code_challenge"):
            self.assertGreaterEqual(len(params[p]), 32)
        self.last_nonce = params["nonce"]
        return location

    def sign_in(self, b, return_to="/v1/profiles"):
        callback = b.through_provider(self.start(b, return_to))
        status, headers, body = b.request(callback)
        self.assertEqual(status, 303, body)
        self.assertEqual(headers["Location"], return_to)
        set_cookie = " ".join(headers.get_all("Set-Cookie"))
        for attr in ("__Host-tokend-session=", "Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
            self.assertIn(attr, set_cookie)
        return b.cookie("__Host-tokend-session")

    def api(self, b, method, path, body=None, origin=True):
        headers = [("Origin", self.public)] if origin else []
        if body is not None:
            headers.append(("Content-Type", "application/json"))
        status, _, text = b.request(self.public + path, method, body, headers)
        return status, text

    # ---------------------------------------------------------------------------------

    def test_sign_in_own_profiles_only_csrf_and_logout(self):
        b = self.browser()
        session = self.sign_in(b)
        # Only the session id's SHA-256 is stored.
        digest = hashlib.sha256(session.encode()).hexdigest()
        self.assertEqual(self.pg.psql(self.database, f"SELECT count(*) FROM sessions WHERE id_hash = '\\x{digest}' "
                                                     f"AND user_id = '{SUB}'").strip(), "1")
        self.assertEqual(self.pg.psql(self.database, f"SELECT count(*) FROM sessions WHERE id_hash::text LIKE "
                                                     f"'%{session.encode().hex()}%'").strip(), "0")

        profile = {"kind": "pat", "site": "https://jira.example.com", "token": "tok-" + secrets.token_hex(8)}
        status, text = self.api(b, "PUT", "/v1/profiles/jira", profile)
        self.assertIn(status, (200, 201), text)
        status, text = self.api(b, "GET", "/v1/profiles/jira/token")
        self.assertEqual(status, 200, text)
        self.assertEqual(json.loads(text)["token"], profile["token"])
        # Without Origin, or from another site: refused.
        status, text = self.api(b, "DELETE", "/v1/profiles/jira", origin=False)
        self.assertEqual((status, code_of(text)), (403, "cross_origin"), text)
        status, _, text = b.request(self.public + "/v1/profiles/jira", "DELETE", None,
                                    [("Origin", "https://evil.example")])
        self.assertEqual((status, code_of(text)), (403, "cross_origin"), text)

        # Bob's profile, made by a service on the socket, is not the signed-in user's.
        r = exchange(self.socket, "PUT", "/v1/profiles/wiki",
                     [("Authorization", "Bearer " + OPS_SECRET), ("X-Tokend-Act-As", BOB)],
                     {"kind": "pat", "site": "https://wiki.example.com", "token": "tok-bob"})
        self.assertEqual(r.status, 201, r.text)
        status, text = self.api(b, "GET", "/v1/profiles")
        self.assertEqual(status, 200, text)
        self.assertIn("jira", text)
        self.assertNotIn("wiki", text)
        self.assertEqual(self.api(b, "GET", "/v1/profiles/wiki/token")[0], 404)
        # A cookie with a service's header is not one identity.
        status, _, text = b.request(self.public + "/v1/profiles", "GET", None, [("X-Tokend-Act-As", BOB)])
        self.assertEqual((status, code_of(text)), (403, "ambiguous_identity"), text)
        # The cookie means nothing on the Unix socket.
        r = exchange(self.socket, "GET", "/v1/profiles", [("Cookie", f"__Host-tokend-session={session}")])
        self.assertEqual((r.status, r.code), (401, "unauthenticated"), r.text)

        # Logout: an Origin check, then the session is gone for good, and the
        # browser is sent to the provider's end_session_endpoint.
        status, text = self.api(b, "POST", "/auth/logout", origin=False)
        self.assertEqual((status, code_of(text)), (403, "cross_origin"), text)
        nonce = self.last_nonce
        status, headers, text = b.request(self.public + "/auth/logout", "POST", None,
                                          [("Origin", self.public)])
        self.assertEqual(status, 303, text)
        self.assertTrue(json.loads(text)["signed_out"])
        location = headers["Location"]
        self.assertEqual(json.loads(text)["end_session_url"], location)
        parts = urllib.parse.urlsplit(location)
        self.assertEqual(f"{parts.scheme}://{parts.netloc}{parts.path}", self.provider.issuer + "/session/end")
        params = dict(urllib.parse.parse_qsl(parts.query))
        self.assertEqual(sorted(params), ["client_id", "id_token_hint", "post_logout_redirect_uri", "state"])
        self.assertEqual(params["client_id"], self.client_id)
        self.assertEqual(params["post_logout_redirect_uri"], self.public)
        self.assertGreaterEqual(len(params["state"]), 16)
        hint = jwt_claims(params["id_token_hint"])
        self.assertEqual((hint["sub"], hint["aud"], hint["iss"]), (SUB, self.client_id, self.provider.issuer))
        self.assertEqual(hint["nonce"], nonce)
        self.assertIsNone(b.cookie("__Host-tokend-session"))
        self.assertIsNone(b.cookie("__Host-tokend-logout"))
        # The provider takes the request (its confirmation page; a wrong
        # post_logout_redirect_uri or hint would be its error page).
        status, _, page = b.request(location)
        self.assertEqual(status, 200, page)
        self.assertIn("logout", page.lower())
        status, _, text = b.request(self.public + "/v1/profiles", "GET", None,
                                    [("Cookie", f"__Host-tokend-session={session}")])
        self.assertEqual((status, code_of(text)), (401, "session_expired"), text)
        self.assertEqual(self.pg.psql(self.database, "SELECT count(*) FROM sessions").strip(), "0")

    def test_each_signing_algorithm_verifies(self):
        for alg, kid in (("PS256", "rsa-1"), ("ES256", "ec-1"), ("EdDSA", "ed-1"), ("RS256", "rsa-1")):
            with self.subTest(alg=alg):
                self.start_daemon(alg=alg)
                b = self.browser()
                self.sign_in(b)
                self.assertEqual(self.api(b, "GET", "/v1/profiles")[0], 200)
                self.assertIn(f"the ID token's {alg} signature verified with key '{kid}'", self.daemon.output())

    def wait_marker(self):
        """Every provider event before this call has been read."""
        n = self.provider.count("tamper.set")
        self.provider.tamper("marker", None)
        wait_for(lambda: self.provider.count("tamper.set") > n, "the provider's marker event")

    def refused_sign_in(self):
        b = self.browser()
        status, _, text = b.request(b.through_provider(self.start(b)))
        self.assertEqual((status, code_of(text)), (401, "invalid_id_token"), text)
        self.assertIsNone(b.cookie("__Host-tokend-session"))
        return json.loads(text)["error"]["message"]

    def test_tampered_id_tokens_are_refused(self):
        # A good sign-in first: discovery and the JWK Set are in.
        self.sign_in(self.browser())
        cases = (("signature", "the ID token: its RS256 signature does not verify with key 'rsa-1' of the issuer"),
                 ("none", "the ID token: alg 'none': an unsigned token is refused"),
                 ("hs256", "the ID token: alg 'HS256' is refused: tokend verifies RS256, PS256, ES256 and EdDSA"))
        for how, message in cases:
            with self.subTest(how=how):
                self.provider.tamper(self.client_id, how)
                self.assertEqual(self.refused_sign_in(), message)
        # A kid the cached JWK Set lacks: fetched again once (key rotation),
        # then not again within a minute.
        self.provider.tamper(self.client_id, "kid")
        self.wait_marker()
        fetched = self.provider.count("jwks.fetched")
        for _ in range(2):
            self.assertEqual(self.refused_sign_in(), "the ID token: no key 'rotated-away' in the issuer's JWK Set")
            self.wait_marker()
            self.assertEqual(self.provider.count("jwks.fetched"), fetched + 1)
        self.assertEqual(self.daemon.output().count("not in the cached JWK Set: fetching it again"), 1)
        self.assertEqual(self.pg.psql(self.database, "SELECT count(*) FROM sessions").strip(), "1")
        self.provider.tamper(self.client_id, None)
        self.sign_in(self.browser())

    def test_user_from_userinfo_when_the_id_token_lacks_the_claim(self):
        # oidc-provider puts `email` in userinfo only (the code flow), not in
        # the ID token.
        self.start_daemon(extra="oidc-user-claim = email\n")
        b = self.browser()
        self.sign_in(b)
        self.assertIn("the user claim 'email' from the userinfo endpoint", self.daemon.output())
        self.assertEqual(self.pg.psql(self.database, "SELECT user_id FROM sessions").strip(),
                         "interop@example.com")

    def test_the_session_ends_after_session_lifetime(self):
        self.start_daemon(extra="session-lifetime = 5s\n")
        b = self.browser()
        status, headers, body = b.request(b.through_provider(self.start(b)))
        self.assertEqual(status, 303, body)
        set_session = [c for c in headers.get_all("Set-Cookie") if c.startswith("__Host-tokend-session=")]
        self.assertEqual(len(set_session), 1, headers)
        self.assertTrue(set_session[0].endswith("; Max-Age=5"), set_session[0])
        session = b.cookie("__Host-tokend-session")
        # The expiry is taken a moment before the row's created_at.
        self.assertEqual(self.pg.psql(self.database, "SELECT expires_at - created_at BETWEEN 4000 AND 5000 "
                                                     "FROM sessions").strip(), "t")
        cookie = [("Cookie", f"__Host-tokend-session={session}")]
        status, _, text = b.request(self.public + "/v1/profiles", "GET", None, cookie)
        self.assertEqual(status, 200, text)
        deadline = time.monotonic() + 30
        while status == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            status, _, text = b.request(self.public + "/v1/profiles", "GET", None, cookie)
        self.assertEqual((status, code_of(text)), (401, "session_expired"), text)

    def test_each_bad_sign_in_is_refused_with_its_status(self):
        # A state tokend never issued.
        b = self.browser()
        callback = b.through_provider(self.start(b))
        status, _, text = b.request(with_param(callback, "state", secrets.token_urlsafe(32)))
        self.assertEqual((status, code_of(text)), (400, "invalid_state"), text)
        # A wrong state consumed nothing: the genuine callback works once,
        # and not when replayed.
        status, _, text = b.request(callback)
        self.assertEqual(status, 303, text)
        status, _, text = b.request(callback)
        self.assertEqual((status, code_of(text)), (400, "invalid_state"), text)

        # A genuine callback opened in another browser (no sign-in cookie).
        b = self.browser()
        callback = b.through_provider(self.start(b))
        status, _, text = self.browser().request(callback)
        self.assertEqual((status, code_of(text)), (400, "invalid_state"), text)

        # An answer naming another issuer (RFC 9207).
        b = self.browser()
        callback = b.through_provider(self.start(b))
        self.assertIn("iss=", callback)
        status, _, text = b.request(with_param(callback, "iss", "https://evil.example"))
        self.assertEqual((status, code_of(text)), (400, "issuer_mismatch"), text)

        # An ID token whose nonce is not the one tokend sent.
        b = self.browser()
        callback = b.through_provider(with_param(self.start(b), "nonce", secrets.token_urlsafe(24)))
        status, _, text = b.request(callback)
        self.assertEqual((status, code_of(text)), (401, "invalid_id_token"), text)
        self.assertIn("nonce", text)
        self.assertIsNone(b.cookie("__Host-tokend-session"))

        # The provider refused.
        b = self.browser()
        params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.start(b)).query))
        status, _, text = b.request(f"{self.public}/auth/callback?error=access_denied&state={params['state']}")
        self.assertEqual((status, code_of(text)), (401, "signin_denied"), text)

        # An expired session.
        b = self.browser()
        self.sign_in(b)
        self.assertEqual(self.api(b, "GET", "/v1/profiles")[0], 200)
        self.assertIsNotNone(self.pg.psql(self.database, "UPDATE sessions SET expires_at = 0"))
        status, text = self.api(b, "GET", "/v1/profiles")
        self.assertEqual((status, code_of(text)), (401, "session_expired"), text)

        # A return_to that leaves tokend.
        status, _, text = self.browser().request(f"{self.public}/auth/login?return_to=//evil.example/x")
        self.assertEqual((status, code_of(text)), (400, "invalid_request"), text)
        # Sign-in is on the TLS listener only.
        r = exchange(self.socket, "GET", "/auth/login?return_to=/")
        self.assertEqual((r.status, r.code), (403, "tls_only"), r.text)


if __name__ == "__main__":
    unittest.main()

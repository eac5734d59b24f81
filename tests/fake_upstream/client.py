#!/usr/bin/env python3
"""Test-side helper for the fake OAuth provider, and its self-test.

    sys.path.insert(0, "<repo>/tests/fake_upstream"); from client import FakeUpstream
    # or, with <repo>/tests on sys.path: from fake_upstream.client import FakeUpstream

    with FakeUpstream() as up:                 # CA + server process, port from a port file
        up.add_client("cid", "secret", "client_secret_basic")
        g = up.add_grant("cid")                # {"grant_id", "access_token", "refresh_token", ...}
        ...give up.token_url, up.ca_file and g's tokens to tokend...
        up.fault("unavailable_503", count=2, retry_after=3)
        assert up.stats()["refreshes_by_grant"][g["grant_id"]] == 1

    python3 client.py --self-test [--base-url URL --ca-file CA] [--verbose]

The self-test prints one line per check and ends with ``N passed, M failed``;
the exit status is non-zero if anything failed. Without --base-url it starts
its own server (and a second one for the restart/state-file checks).
"""
import argparse
import base64
import hashlib
import http.client
import importlib.util
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_make_ca():
    """make_ca.py next to this file, loaded without touching sys.path."""
    spec = importlib.util.spec_from_file_location("fake_upstream_make_ca",
                                                  os.path.join(HERE, "make_ca.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_ca


make_ca = _load_make_ca()

DEFAULT_DEADLINE = 20.0


class ControlError(Exception):
    """A control-API call answered with a non-2xx status."""

    def __init__(self, status, body):
        super().__init__(f"control API answered {status}: {body!r}")
        self.status = status
        self.body = body


class Reply:
    """A plain HTTP reply: status, lower-cased headers, raw body."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"Reply({self.status}, {self.headers!r}, {self.body[:200]!r})"


def basic_auth(client_id, client_secret):
    """RFC 6749 §2.3.1: both parts form-urlencoded, then Basic."""
    raw = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(raw.encode()).decode()


class UpstreamClient:
    """Talks to a running fake upstream: plain requests and the control API."""

    def __init__(self, base_url, ca_file):
        self.base_url = base_url.rstrip("/")
        self.ca_file = ca_file
        split = urllib.parse.urlsplit(self.base_url)
        self.host, self.port = split.hostname, split.port

    @property
    def token_url(self):
        return self.base_url + "/oauth/token"

    @property
    def userinfo_url(self):
        return self.base_url + "/me"

    def ssl_context(self):
        return ssl.create_default_context(cafile=self.ca_file)

    def connection(self, timeout=10.0, host=None):
        """A new keep-alive capable http.client connection trusting the test CA."""
        return http.client.HTTPSConnection(host or self.host, self.port,
                                           context=self.ssl_context(), timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=10.0, conn=None):
        """One request; reuses `conn` if given (keep-alive), else a fresh connection."""
        own = conn is None
        conn = conn or self.connection(timeout)
        try:
            if isinstance(body, str):
                body = body.encode()
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            if own:
                conn.close()

    def token_request(self, params, auth=None, as_json=False, path="/oauth/token", **kw):
        """POST to the token endpoint; `auth` = (client_id, secret) for client_secret_basic."""
        headers = {}
        if auth is not None:
            headers["Authorization"] = basic_auth(*auth)
        if as_json:
            headers["Content-Type"] = "application/json"
            body = json.dumps(params)
        else:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            body = urllib.parse.urlencode(params)
        return self.request("POST", path, body, headers, **kw)

    # -- control API -------------------------------------------------------------

    def control(self, method, path, obj=None):
        body = json.dumps(obj) if obj is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        reply = self.request(method, "/_control/" + path.lstrip("/"), body, headers)
        if not 200 <= reply.status < 300:
            raise ControlError(reply.status, reply.body)
        return reply.json()

    def health(self):
        return self.control("GET", "health")

    def reset(self):
        return self.control("POST", "reset", {})

    def add_client(self, client_id, client_secret=None, auth_method=None):
        spec = {"client_id": client_id, "client_secret": client_secret}
        if auth_method is not None:
            spec["auth_method"] = auth_method
        return self.control("POST", "clients", spec)

    def add_grant(self, client_id, scope=None, access_lifetime=None, sub=None):
        spec = {"client_id": client_id}
        for k, v in (("scope", scope), ("access_lifetime", access_lifetime), ("sub", sub)):
            if v is not None:
                spec[k] = v
        return self.control("POST", "grants", spec)

    def grant(self, grant_id):
        return self.control("GET", f"grants/{urllib.parse.quote(grant_id)}")

    def grants(self):
        return self.control("GET", "grants")["grants"]

    def revoke_grant(self, grant_id):
        return self.control("POST", f"grants/{urllib.parse.quote(grant_id)}/revoke", {})

    def add_code(self, client_id, **kw):
        return self.control("POST", "codes", dict(kw, client_id=client_id))

    def config(self, **knobs):
        return self.control("POST", "config", knobs)

    def get_config(self):
        return self.control("GET", "config")

    def advance_clock(self, seconds):
        return self.control("POST", "clock", {"advance": seconds})

    def fault(self, mode, count=1, **kw):
        return self.control("POST", "faults", dict(kw, mode=mode, count=count))

    def faults(self):
        return self.control("GET", "faults")["faults"]

    def clear_faults(self):
        return self.control("DELETE", "faults")

    def log(self, since=0):
        return self.control("GET", f"log?since={since}")["entries"]

    def clear_log(self):
        return self.control("DELETE", "log")

    def stats(self):
        return self.control("GET", "stats")

    def clear_stats(self):
        return self.control("DELETE", "stats")

    def tokens(self):
        return self.control("GET", "tokens")["tokens"]

    def wait_for_log(self, predicate, what, deadline=DEFAULT_DEADLINE):
        """Polls the request log until an entry satisfies predicate; returns it."""
        end = time.monotonic() + deadline
        while True:
            for entry in self.log():
                if predicate(entry):
                    return entry
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {deadline}s waiting for log entry: {what}")
            time.sleep(0.02)


class FakeUpstream(UpstreamClient):
    """Creates a CA, runs fake_upstream.py as a child process, talks to it.

    workdir: where the CA, port file and stderr go (a private temp dir by
    default, removed by stop()). ca_dir: reuse an existing make_ca() dir.
    state_file: passed through (--state-file). port: fixed port (0 = ephemeral;
    restart() keeps the port it got).
    """

    def __init__(self, workdir=None, ca_dir=None, state_file=None, host="127.0.0.1", port=0,
                 quiet=False, startup_deadline=DEFAULT_DEADLINE, python=sys.executable,
                 start=True):
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="fake-upstream-")
        os.makedirs(self.workdir, mode=0o700, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        ca_dir = ca_dir or os.path.join(self.workdir, "ca")
        if not os.path.exists(os.path.join(ca_dir, "server.pem")):
            make_ca(ca_dir)
        self.ca_dir = ca_dir
        self.ca_file = os.path.join(ca_dir, "ca.pem")
        self.cert_file = os.path.join(ca_dir, "server.pem")
        self.key_file = os.path.join(ca_dir, "server.key")
        self.state_file = state_file
        self.listen_host = host
        self.requested_port = port
        self.quiet = quiet
        self.startup_deadline = startup_deadline
        self.python = python
        self.port_file = os.path.join(self.workdir, "port")
        self.stderr_path = os.path.join(self.workdir, "stderr.log")
        self.proc = None
        self.base_url = None
        if start:
            self.start()

    def start(self):
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("fake upstream already running")
        if os.path.exists(self.port_file):
            os.unlink(self.port_file)
        args = [self.python, os.path.join(HERE, "fake_upstream.py"),
                "--cert", self.cert_file, "--key", self.key_file,
                "--host", self.listen_host, "--port", str(self.requested_port),
                "--port-file", self.port_file]
        if self.state_file:
            args += ["--state-file", self.state_file]
        if self.quiet:
            args.append("--quiet")
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)
        end = time.monotonic() + self.startup_deadline
        while not os.path.exists(self.port_file):
            if self.proc.poll() is not None:
                raise RuntimeError(f"fake upstream exited ({self.proc.returncode}) before "
                                   f"listening:\n{self.stderr_text()}")
            if time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"fake upstream did not listen within "
                                   f"{self.startup_deadline}s:\n{self.stderr_text()}")
            time.sleep(0.01)
        with open(self.port_file) as f:
            port = int(f.read().strip())
        self.requested_port = port      # a restart binds the same port again
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        UpstreamClient.__init__(self, f"https://{host}:{port}", self.ca_file)
        return self

    def stop(self, deadline=10.0):
        """SIGTERM, wait, SIGKILL after the deadline. Returns the exit code."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=deadline)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"fake upstream ignored SIGTERM for {deadline}s")
        return code

    def restart(self):
        """Stops and starts again on the same port (state survives only with state_file)."""
        self.stop()
        return self.start()

    def close(self):
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def stderr_text(self):
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ===========================================================================
# Self-test


class Check:
    """Collects named checks; prints one line each and the summary."""

    def __init__(self, verbose):
        self.verbose = verbose
        self.passed = 0
        self.failed = 0

    def run(self, name, fn, *args):
        started = time.monotonic()
        try:
            fn(*args)
        except Exception as exc:  # report and go on
            self.failed += 1
            print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
            if self.verbose:
                traceback.print_exc()
        else:
            self.passed += 1
            print(f"ok   {name} ({time.monotonic() - started:.2f}s)", flush=True)


def expect(cond, message, *details):
    if not cond:
        raise AssertionError(message + ("" if not details else " -- " + repr(details)))


def expect_eq(actual, wanted, what):
    if actual != wanted:
        raise AssertionError(f"{what}: wanted {wanted!r}, got {actual!r}")


CID, SECRET = "tokend-test", "s3cr:et+/ &=%"


def seed(up, auth_method="client_secret_basic", access_lifetime=None, **config):
    """Reset, Atlassian-like defaults + config, one client, one grant."""
    up.reset()
    if config:
        up.config(**config)
    secret = None if auth_method == "none" else SECRET
    up.add_client(CID, secret, auth_method)
    return up.add_grant(CID, access_lifetime=access_lifetime)


def refresh(up, rt, method="basic", **kw):
    params = {"grant_type": "refresh_token", "refresh_token": rt}
    if method == "basic":
        return up.token_request(params, auth=(CID, SECRET), **kw)
    if method == "post_json":
        return up.token_request(dict(params, client_id=CID, client_secret=SECRET), as_json=True, **kw)
    if method == "post_form":
        return up.token_request(dict(params, client_id=CID, client_secret=SECRET), **kw)
    return up.token_request(dict(params, client_id=CID), **kw)       # public client


def expect_token_set(reply, lifetime=3600):
    expect_eq(reply.status, 200, "status")
    expect_eq(reply.headers.get("content-type"), "application/json", "content-type")
    expect_eq(reply.headers.get("cache-control"), "no-store", "cache-control")
    expect_eq(reply.headers.get("content-length"), str(len(reply.body)), "content-length")
    body = reply.json()
    expect(body["access_token"].startswith("at-"), "access token prefix", body)
    expect(body["refresh_token"].startswith("rt-"), "refresh token prefix", body)
    expect_eq(body["token_type"], "Bearer", "token_type")
    expect_eq(body["expires_in"], lifetime, "expires_in")
    expect(isinstance(body["scope"], str), "scope", body)
    return body


def expect_unchanged(up, grant_id, before):
    """The grant was not touched: same current refresh token, same rotation count, alive."""
    now = up.grant(grant_id)
    expect_eq(now["current_refresh_token"], before["current_refresh_token"], "current refresh token")
    expect_eq(now["rotations"], before["rotations"], "rotations")
    expect(now["alive"], "grant still alive")


def expect_oauth_error(reply, status, error):
    expect_eq(reply.status, status, "status")
    expect_eq(reply.json().get("error"), error, "error")


# -- the checks ---------------------------------------------------------------------


def t_tls(up):
    url = up.base_url + "/_control/health"
    try:
        urllib.request.urlopen(url, timeout=10)
    except urllib.error.URLError as e:
        expect(isinstance(e.reason, ssl.SSLCertVerificationError), "verification error", e.reason)
    else:
        raise AssertionError("an HTTPS request without the test CA succeeded")
    with urllib.request.urlopen(url, context=up.ssl_context(), timeout=10) as r:
        expect_eq(json.load(r)["ok"], True, "health via urllib")
    if up.host == "127.0.0.1":
        reply = up.request("GET", "/_control/health", conn=up.connection(host="localhost"))
        expect_eq(reply.status, 200, "hostname localhost verifies")
    conn = up.connection()
    conn.connect()
    expect(conn.sock.version() in ("TLSv1.2", "TLSv1.3"), "TLS version", conn.sock.version())
    conn.close()
    tls12 = up.ssl_context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    conn = http.client.HTTPSConnection(up.host, up.port, context=tls12, timeout=10)
    conn.connect()
    expect_eq(conn.sock.version(), "TLSv1.2", "a TLS 1.2-only client connects")
    expect_eq(conn.sock.selected_alpn_protocol(), None, "no ALPN offered, none selected")
    conn.close()


def t_refresh_form_basic(up):
    g = seed(up)
    body = expect_token_set(refresh(up, g["refresh_token"]))
    expect(body["refresh_token"] != g["refresh_token"], "refresh token rotated")
    expect(body["access_token"] != g["access_token"], "new access token")
    state = up.grant(g["grant_id"])
    expect_eq(state["current_refresh_token"], body["refresh_token"], "current refresh token")
    expect_eq(state["rotations"], 1, "rotations")
    entry = up.log()[-1]
    expect_eq(entry["client_auth"], "client_secret_basic", "client_auth")
    expect_eq(entry["refresh_token_status"], "current", "refresh_token_status")
    expect_eq(entry["grant_id"], g["grant_id"], "grant_id in log")
    expect_eq(entry["issued"]["refresh_token"], body["refresh_token"], "issued in log")
    expect(entry["headers"]["authorization"].startswith("Basic "), "log keeps headers")


def t_refresh_json_post(up):
    g = seed(up, auth_method="client_secret_post")
    expect_token_set(refresh(up, g["refresh_token"], "post_json"))
    entry = up.log()[-1]
    expect_eq(entry["content_type"], "application/json", "content type logged")
    expect_eq(entry["body"]["client_secret"], SECRET, "parsed JSON body logged")
    expect_eq(entry["client_auth"], "client_secret_post", "client_auth")


def t_refresh_form_post(up):
    g = seed(up, auth_method=["client_secret_basic", "client_secret_post"])
    b1 = expect_token_set(refresh(up, g["refresh_token"], "post_form"))
    expect_token_set(refresh(up, b1["refresh_token"], "basic"))


def t_public_client(up):
    g = seed(up, auth_method="none")
    expect_token_set(refresh(up, g["refresh_token"], "public"))
    expect_eq(up.log()[-1]["client_auth"], "none", "client_auth")


def t_client_auth_errors(up):
    g = seed(up)
    before = up.grant(g["grant_id"])
    rt = g["refresh_token"]
    params = {"grant_type": "refresh_token", "refresh_token": rt}
    r = up.token_request(params, auth=(CID, "wrong"))
    expect_oauth_error(r, 401, "invalid_client")
    expect(r.headers.get("www-authenticate", "").startswith("Basic"), "WWW-Authenticate", r.headers)
    expect_oauth_error(up.token_request(dict(params, client_id=CID)), 401, "invalid_client")
    expect_oauth_error(up.token_request(dict(params, client_id=CID, client_secret=SECRET)),
                       401, "invalid_client")      # registered for basic only
    expect_oauth_error(up.token_request(dict(params, client_secret=SECRET), auth=(CID, SECRET)),
                       400, "invalid_request")     # two methods at once
    expect_oauth_error(up.token_request(params, auth=("nobody", SECRET)), 401, "invalid_client")
    raw = {"Authorization": "Basic " + base64.b64encode(f"{CID}:{SECRET}".encode()).decode(),
           "Content-Type": "application/x-www-form-urlencoded"}   # not form-encoded: '+' -> ' '
    expect_oauth_error(up.request("POST", "/oauth/token", urllib.parse.urlencode(params), raw),
                       401, "invalid_client")
    expect_unchanged(up, g["grant_id"], before)
    up.add_client("public", None, "none")
    expect_oauth_error(up.token_request(dict(params, client_id="public", client_secret="x")),
                       401, "invalid_client")


def t_request_errors(up):
    g = seed(up)
    before = up.grant(g["grant_id"])
    auth = (CID, SECRET)
    expect_oauth_error(up.token_request({"grant_type": "password"}, auth=auth),
                       400, "unsupported_grant_type")
    expect_oauth_error(up.token_request({"grant_type": "refresh_token"}, auth=auth),
                       400, "invalid_request")
    expect_oauth_error(up.token_request({"refresh_token": g["refresh_token"]}, auth=auth),
                       400, "invalid_request")
    headers = {"Authorization": basic_auth(*auth), "Content-Type": "text/plain"}
    expect_oauth_error(up.request("POST", "/oauth/token", "grant_type=refresh_token", headers),
                       400, "invalid_request")
    headers["Content-Type"] = "application/json"
    expect_oauth_error(up.request("POST", "/oauth/token", '{"grant_type":', headers),
                       400, "invalid_request")
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    dup = f"grant_type=refresh_token&refresh_token={g['refresh_token']}&refresh_token=x"
    expect_oauth_error(up.request("POST", "/oauth/token", dup, headers), 400, "invalid_request")
    r = up.request("GET", "/oauth/token")
    expect_eq(r.status, 405, "GET token endpoint")
    expect_eq(r.headers.get("allow"), "POST", "Allow")
    expect_eq(up.request("GET", "/nowhere").status, 404, "unknown path")
    expect_unchanged(up, g["grant_id"], before)
    expect_token_set(refresh(up, g["refresh_token"], path="/oauth2/token"))


def t_invalid_grant_styles(up):
    g = seed(up, invalid_grant_style="standard")
    r = refresh(up, "rt-unknown")
    expect_oauth_error(r, 400, "invalid_grant")
    expect_eq(r.headers.get("cache-control"), "no-store", "cache-control on errors")
    expect_eq(up.log()[-1]["refresh_token_status"], "unknown", "status unknown")
    up.config(invalid_grant_style="atlassian")
    r = refresh(up, "rt-unknown")
    expect_oauth_error(r, 403, "invalid_grant")
    expect_eq(r.json()["error_description"], "Unknown or invalid refresh token.", "description")
    expect(up.grant(g["grant_id"])["alive"], "unknown token revokes nothing")


def t_reuse_within_window(up):
    g = seed(up, reuse_window=600)
    rt0 = g["refresh_token"]
    b1 = expect_token_set(refresh(up, rt0))
    b2 = expect_token_set(refresh(up, rt0))          # the client lost b1
    expect(b2["refresh_token"] not in (rt0, b1["refresh_token"]), "a fresh pair")
    expect_eq(up.log()[-1]["refresh_token_status"], "previous_within_window", "status")
    state = up.grant(g["grant_id"])
    expect(state["alive"], "alive")
    expect_eq(state["current_refresh_token"], b2["refresh_token"], "newest is current")
    expect_eq(state["rotations"], 2, "rotations")
    statuses = {t["token"]: t["status"] for t in state["refresh_tokens"]}
    expect_eq(statuses[b1["refresh_token"]], "previous_within_window", "b1 superseded")
    expect_token_set(refresh(up, b1["refresh_token"]))    # b1 too, within its own window
    expect_eq(up.stats()["reuse_detections"], 0, "no reuse detection")


def expect_family_dead(up, g, tokens, access_tokens):
    state = up.grant(g["grant_id"])
    expect(not state["alive"], "grant revoked", state["state"])
    expect_eq(state["revoked_reason"], "reuse_detected", "revoked_reason")
    for rt in tokens:
        expect_oauth_error(refresh(up, rt), 403, "invalid_grant")
        expect_eq(up.log()[-1]["refresh_token_status"], "grant_revoked", "status after revocation")
    for at in access_tokens:
        r = up.request("GET", "/me", headers={"Authorization": "Bearer " + at})
        expect_eq(r.status, 401, "revoked access token")
        expect('error="invalid_token"' in r.headers["www-authenticate"], "invalid_token", r.headers)


def t_reuse_strict(up):
    g = seed(up, reuse_window=0)
    b1 = expect_token_set(refresh(up, g["refresh_token"]))
    expect_oauth_error(refresh(up, g["refresh_token"]), 403, "invalid_grant")
    expect_eq(up.log()[-1]["refresh_token_status"], "reused_outside_window", "status")
    expect_family_dead(up, g, [b1["refresh_token"], g["refresh_token"]],
                       [g["access_token"], b1["access_token"]])
    s = up.stats()
    expect_eq((s["reuse_detections"], s["revoked_grants"]), (1, 1), "stats")


def t_reuse_window_clock(up):
    g = seed(up, reuse_window=600)
    b1 = expect_token_set(refresh(up, g["refresh_token"]))
    up.advance_clock(599)
    b2 = expect_token_set(refresh(up, g["refresh_token"]))   # 599 s after rotation: fine
    up.advance_clock(2)
    expect_oauth_error(refresh(up, g["refresh_token"]), 403, "invalid_grant")  # 601 s: reuse
    expect_family_dead(up, g, [b2["refresh_token"]], [b1["access_token"], b2["access_token"]])


def t_resource_api(up):
    g = seed(up, access_lifetime=100)
    at = g["access_token"]
    for path in ("/me", "/oauth/userinfo"):
        r = up.request("GET", path, headers={"Authorization": "Bearer " + at})
        expect_eq(r.status, 200, path)
        expect_eq(r.json()["grant_id"], g["grant_id"], "grant_id")
        expect_eq(r.json()["sub"], g["sub"], "sub")
    r = up.request("GET", "/me")
    expect_eq(r.status, 401, "no token")
    expect("error=" not in r.headers["www-authenticate"], "no error code without a token", r.headers)
    r = up.request("GET", "/me", headers={"Authorization": "Bearer at-nope"})
    expect_eq(r.status, 401, "unknown token")
    expect('Bearer realm="fake-upstream", error="invalid_token"' in r.headers["www-authenticate"],
           "challenge", r.headers)
    b1 = expect_token_set(refresh(up, g["refresh_token"]), lifetime=100)
    expect_eq(up.request("GET", "/me", headers={"Authorization": "Bearer " + at}).status, 200,
              "old access token still valid after a refresh")
    up.advance_clock(101)
    for token in (at, b1["access_token"]):
        r = up.request("GET", "/me", headers={"Authorization": "Bearer " + token})
        expect_eq(r.status, 401, "expired")
        expect("expired" in r.json()["error_description"], "says expired", r.body)
    b2 = expect_token_set(refresh(up, b1["refresh_token"]), lifetime=100)
    up.revoke_grant(g["grant_id"])
    expect_eq(up.request("GET", "/me", headers={"Authorization": "Bearer " + b2["access_token"]})
              .status, 401, "revoked grant")


def t_keep_alive(up):
    g = seed(up)
    conn = up.connection()
    try:
        rt = g["refresh_token"]
        for _ in range(3):
            r = refresh(up, rt, conn=conn)
            rt = expect_token_set(r)["refresh_token"]
            expect("close" not in r.headers.get("connection", ""), "kept alive", r.headers)
    finally:
        conn.close()
    entries = up.log()[-3:]
    expect_eq(len({e["connection"] for e in entries}), 1, "one connection")
    expect_eq([e["request_on_connection"] for e in entries], [1, 2, 3], "request numbers")


def t_chunked(up):
    g = seed(up)
    body = urllib.parse.urlencode({"grant_type": "refresh_token",
                                   "refresh_token": g["refresh_token"]}).encode()
    conn = up.connection()
    try:
        conn.putrequest("POST", "/oauth/token")
        conn.putheader("Authorization", basic_auth(CID, SECRET))
        conn.putheader("Content-Type", "application/x-www-form-urlencoded")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        half = len(body) // 2
        for part in (body[:half], body[half:]):
            conn.send(b"%x\r\n%s\r\n" % (len(part), part))
        conn.send(b"0\r\n\r\n")
        r = conn.getresponse()
        expect_token_set(Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()))
    finally:
        conn.close()


# -- faults

ERROR_FAULTS = {
    # mode: (status, content type prefix, check of the body)
    "invalid_grant_standard": (400, "application/json", lambda b: json.loads(b)["error"] == "invalid_grant"),
    "invalid_grant_atlassian": (403, "application/json",
                                lambda b: json.loads(b) == {"error": "invalid_grant", "error_description":
                                                            "Unknown or invalid refresh token."}),
    "invalid_client": (401, "application/json", lambda b: json.loads(b)["error"] == "invalid_client"),
    "server_error_500": (500, "text/html", lambda b: b.startswith(b"<html>")),
    "bad_gateway_502": (502, "text/html", lambda b: b.startswith(b"<html>")),
    "unavailable_503": (503, "text/html", lambda b: b.startswith(b"<html>")),
    "html_200": (200, "text/html", lambda b: b"<html" in b and b"password" in b),
}


def _check_fault_then_normal(up, g, mode, check):
    """Queues `mode` once; check(reply) must pass; the grant is unchanged; the token still works."""
    before = up.grant(g["grant_id"])
    since = up.control("GET", "log")["last_seq"]
    up.fault(mode)
    check(refresh(up, before["current_refresh_token"]))
    expect_unchanged(up, g["grant_id"], before)
    entry = up.log(since)[0]
    expect_eq(entry["fault"], mode, "fault logged")
    expect_eq(entry["refresh_token_status"], "current", "token classified in the log")
    expect_token_set(refresh(up, before["current_refresh_token"]))


def t_error_faults(up):
    g = seed(up)
    for mode, (status, ctype, body_ok) in ERROR_FAULTS.items():
        def check(r, mode=mode, status=status, ctype=ctype, body_ok=body_ok):
            expect_eq(r.status, status, mode)
            expect(r.headers.get("content-type", "").startswith(ctype), mode + " content type", r.headers)
            expect_eq(r.headers.get("content-length"), str(len(r.body)), mode + " content-length")
            expect(body_ok(r.body), mode + " body", r.body[:200])
            if mode == "invalid_client":
                expect("www-authenticate" in r.headers, "WWW-Authenticate", r.headers)
            if status == 503:
                expect("retry-after" not in r.headers, "no Retry-After unless asked", r.headers)
        _check_fault_then_normal(up, g, mode, check)
    up.fault("unavailable_503", retry_after=3)
    r = refresh(up, up.grant(g["grant_id"])["current_refresh_token"])
    expect_eq((r.status, r.headers.get("retry-after")), (503, "3"), "503 with Retry-After")


def t_rate_limited(up):
    g = seed(up)
    rt = g["refresh_token"]
    before = up.grant(g["grant_id"])
    up.fault("rate_limited", retry_after=7)
    r = refresh(up, rt)
    expect_eq((r.status, r.headers.get("retry-after")), (429, "7"), "429 + Retry-After")
    expect_eq(r.json()["error"], "rate_limited", "JSON body")
    up.fault("rate_limited", retry_after=2, body="empty")
    r = refresh(up, rt)
    expect_eq((r.status, r.body, r.headers.get("content-length")), (429, b"", "0"), "empty body")
    up.fault("rate_limited", retry_after="Wed, 21 Oct 2015 07:28:00 GMT")
    expect_eq(refresh(up, rt).headers.get("retry-after"), "Wed, 21 Oct 2015 07:28:00 GMT",
              "HTTP-date Retry-After verbatim")
    up.fault("rate_limited")
    expect("retry-after" not in refresh(up, rt).headers, "no Retry-After when not asked")
    expect_unchanged(up, g["grant_id"], before)


def t_malformed_200_faults(up):
    g = seed(up)

    def truncated(r):
        expect_eq(r.status, 200, "status")
        expect_eq(r.headers["content-type"], "application/json", "content type")
        expect_eq(r.headers["content-length"], str(len(r.body)), "content-length of the cut body")
        expect(r.body.startswith(b'{"access_token": "at-'), "looks like a token response", r.body)
        try:
            json.loads(r.body)
        except ValueError:
            return
        raise AssertionError("truncated body parsed as JSON")

    def missing(r):
        b = r.json()
        expect_eq(r.status, 200, "status")
        expect("access_token" not in b and b["refresh_token"].startswith("rt-"), "no access_token", b)
        expect_oauth_error(refresh(up, b["refresh_token"]), 403, "invalid_grant")  # bogus

    def expires(value_ok):
        def check(r):
            b = r.json()
            expect_eq(r.status, 200, "status")
            expect(b["access_token"].startswith("at-"), "has an access token", b)
            expect(value_ok(b), "expires_in", b.get("expires_in", "(absent)"))
        return check

    _check_fault_then_normal(up, g, "truncated_json", truncated)
    _check_fault_then_normal(up, g, "missing_access_token", missing)
    _check_fault_then_normal(up, g, "expires_in_string", expires(lambda b: b["expires_in"] == "3600"))
    _check_fault_then_normal(up, g, "expires_in_negative", expires(lambda b: b["expires_in"] == -5))
    _check_fault_then_normal(up, g, "expires_in_absent", expires(lambda b: "expires_in" not in b))
    _check_fault_then_normal(up, g, "expires_in_garbage", expires(lambda b: b["expires_in"] == "soon"))
    bogus = [t for t in up.tokens() if t["source"].startswith("fault:")]
    expect(len(bogus) >= 10 and not any(t["valid"] for t in bogus), "bogus tokens listed, never valid")
    for t in bogus:
        if t["kind"] == "access":
            r = up.request("GET", "/me", headers={"Authorization": "Bearer " + t["token"]})
            expect_eq(r.status, 401, "bogus access token rejected")


def t_slow(up):
    g = seed(up)
    rt = g["refresh_token"]
    up.fault("slow", delay=1.5)
    try:
        refresh(up, rt, timeout=0.5)
    except (TimeoutError, OSError):
        pass
    else:
        raise AssertionError("the slow response arrived before the client timeout")
    entry = up.wait_for_log(lambda e: e["fault"] == "slow", "the slow request finishing")
    expect_eq((entry["status"], entry["delivered"]), (200, False), "processed, not delivered")
    state = up.grant(g["grant_id"])
    expect_eq(state["rotations"], 1, "the token WAS rotated")
    expect_eq(state["current_refresh_token"], entry["issued"]["refresh_token"], "lost token is current")
    expect_token_set(refresh(up, rt))          # the reuse window saves the client
    expect_eq(up.log()[-1]["refresh_token_status"], "previous_within_window", "status")


def t_drop(up):
    g = seed(up)
    before = up.grant(g["grant_id"])
    for rst in (False, True):
        up.fault("drop", rst=rst)
        try:
            r = refresh(up, g["refresh_token"])
        except (http.client.HTTPException, OSError):
            pass
        else:
            raise AssertionError(f"drop(rst={rst}) answered {r!r}")
        entry = up.log()[-1]
        expect_eq((entry["fault"], entry["status"], entry["delivered"]), ("drop", None, False), "log")
    expect_unchanged(up, g["grant_id"], before)
    expect_token_set(refresh(up, g["refresh_token"]))


def t_reset_mid_body(up):
    g = seed(up)
    before = up.grant(g["grant_id"])
    up.fault("reset_mid_body")
    conn = up.connection()
    try:
        conn.request("POST", "/oauth/token", urllib.parse.urlencode(
            {"grant_type": "refresh_token", "refresh_token": g["refresh_token"]}),
            {"Authorization": basic_auth(CID, SECRET),
             "Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        expect_eq(resp.status, 200, "headers arrive")
        length = int(resp.getheader("Content-Length"))
        try:
            data = resp.read()
        except http.client.IncompleteRead as e:
            data = e.partial
        except OSError:
            data = b""
        expect(len(data) < length, "body cut short", len(data), length)
    finally:
        conn.close()
    expect_unchanged(up, g["grant_id"], before)
    expect_token_set(refresh(up, g["refresh_token"]))


def t_drop_after_rotate(up):
    g = seed(up)
    up.fault("drop_after_rotate")
    try:
        refresh(up, g["refresh_token"])
    except (http.client.HTTPException, OSError):
        pass
    else:
        raise AssertionError("drop_after_rotate answered")
    entry = up.log()[-1]
    expect(entry["issued"] and not entry["delivered"], "issued but not delivered", entry["issued"])
    expect_eq(up.grant(g["grant_id"])["rotations"], 1, "rotated")


def t_fault_queue(up):
    g = seed(up)
    rt = g["refresh_token"]
    up.fault("unavailable_503", count=2)
    expect_eq([refresh(up, rt).status for _ in range(2)], [503, 503], "count=2")
    rt = expect_token_set(refresh(up, rt))["refresh_token"]
    up.fault("rate_limited", count=None, retry_after=1)
    expect_eq([refresh(up, rt).status for _ in range(3)], [429] * 3, "persistent")
    expect_eq(len(up.faults()), 1, "persistent fault stays queued")
    up.clear_faults()
    rt = expect_token_set(refresh(up, rt))["refresh_token"]
    up.fault("invalid_client")
    up.fault("server_error_500")
    expect_eq([refresh(up, rt).status for _ in range(2)], [401, 500], "FIFO")
    up.fault("rate_limited", target="resource")
    expect_eq(refresh(up, rt).status, 200, "resource fault leaves the token endpoint alone")
    expect_eq(up.request("GET", "/me").status, 429, "resource fault")
    for bad in ({"mode": "nope"}, {"mode": "slow", "count": 0}, {"mode": "truncated_json",
                                                                  "target": "resource"}):
        try:
            up.control("POST", "faults", bad)
        except ControlError as e:
            expect_eq(e.status, 400, f"rejects {bad}")
        else:
            raise AssertionError(f"accepted {bad}")
    s = up.stats()
    expect_eq(s["faults_injected"].get("unavailable_503"), 2, "faults_injected")


def t_concurrency(up, n=500):
    seed(up)
    up.fault("slow", count=None, delay=1.5)          # hold every token request for 1.5 s
    results, lock = [], threading.Lock()

    def one():
        try:
            status = refresh(up, "rt-unknown", timeout=60).status
        except Exception as e:  # collected and reported below
            status = type(e).__name__
        with lock:
            results.append(status)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    up.clear_faults()
    bad = [s for s in results if s != 403]
    expect(not bad, f"{len(bad)} of {n} requests failed", bad[:5])
    s = up.stats()
    expect_eq(s["token_requests"], n, "token_requests")
    expect_eq(s["in_flight_token_requests"], 0, "nothing in flight afterwards")
    expect(s["max_concurrent_token_requests"] >= min(n, 50), "overlap seen",
           s["max_concurrent_token_requests"])
    print(f"     {n} concurrent connections: max_concurrent_token_requests="
          f"{s['max_concurrent_token_requests']}", flush=True)


def t_concurrent_same_grant(up, n=20):
    """What the single-flight assertion sees when a client does NOT single-flight."""
    g = seed(up, token_latency=0.3)
    replies = []
    threads = [threading.Thread(target=lambda: replies.append(refresh(up, g["refresh_token"])))
               for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expect_eq(sorted(r.status for r in replies), [200] * n, "all within the reuse window")
    s = up.stats()
    expect_eq(s["refreshes_by_grant"][g["grant_id"]], n, "refreshes_by_grant")
    expect(s["max_concurrent_by_grant"][g["grant_id"]] > 1, "per-grant overlap detected",
           s["max_concurrent_by_grant"])


def _pkce():
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    return verifier, challenge.decode()


def t_authorization_code(up):
    seed(up)
    verifier, challenge = _pkce()
    code = up.add_code(CID, redirect_uri="http://127.0.0.1:8765/callback", code_challenge=challenge,
                       code_challenge_method="S256")["code"]
    params = {"grant_type": "authorization_code", "code": code,
              "redirect_uri": "http://127.0.0.1:8765/callback", "code_verifier": "wrong" * 10}
    auth = (CID, SECRET)
    expect_oauth_error(up.token_request(params, auth=auth), 400, "invalid_grant")
    expect_oauth_error(up.token_request(dict(params, code_verifier=verifier, redirect_uri="http://x/"),
                                        auth=auth), 400, "invalid_grant")
    body = expect_token_set(up.token_request(dict(params, code_verifier=verifier), auth=auth))
    gid = up.log()[-1]["grant_id"]
    expect_eq(up.grant(gid)["current_refresh_token"], body["refresh_token"], "new grant")
    expect_oauth_error(up.token_request(dict(params, code_verifier=verifier), auth=auth),
                       400, "invalid_grant")
    expect_eq(up.grant(gid)["revoked_reason"], "code_reuse", "code reuse revokes")


def t_non_rotating(up):
    g = seed(up, rotate_refresh_tokens=False)
    for _ in range(2):
        r = refresh(up, g["refresh_token"])
        expect_eq(r.status, 200, "status")
        expect("refresh_token" not in r.json(), "no new refresh token", r.json())
    state = up.grant(g["grant_id"])
    expect_eq((state["rotations"], state["refreshes"]), (0, 2), "rotations/refreshes")


def t_refresh_lifetime_and_scope(up):
    g = seed(up, refresh_lifetime=100)
    params = {"grant_type": "refresh_token", "refresh_token": g["refresh_token"]}
    expect_oauth_error(up.token_request(dict(params, scope="admin"), auth=(CID, SECRET)),
                       400, "invalid_scope")
    r = up.token_request(dict(params, scope="read:jira-work"), auth=(CID, SECRET))
    expect_eq(expect_token_set(r)["scope"], "read:jira-work", "narrowed scope")
    up.advance_clock(101)
    expect_oauth_error(refresh(up, r.json()["refresh_token"]), 403, "invalid_grant")
    expect_eq(up.log()[-1]["refresh_token_status"], "expired", "expired")
    expect(up.grant(g["grant_id"])["alive"], "expiry revokes nothing")


def t_control_api(up):
    g = seed(up)
    b = expect_token_set(refresh(up, g["refresh_token"]))
    issued = {t["token"]: t for t in up.tokens()}
    for token in (g["access_token"], g["refresh_token"], b["access_token"], b["refresh_token"]):
        expect(token in issued, "listed in /_control/tokens")
        expect_eq(issued[token]["grant_id"], g["grant_id"], "grant id")
    expect(issued[g["refresh_token"]]["valid"] and issued[b["refresh_token"]]["valid"],
           "previous token still valid within the window")
    cfg = up.get_config()
    expect_eq((cfg["reuse_window"], cfg["invalid_grant_style"]), (600, "atlassian"), "defaults")
    try:
        up.config(reuse_window="ten")
    except ControlError as e:
        expect_eq(e.status, 400, "bad knob value")
    else:
        raise AssertionError("accepted a bad knob")
    try:
        up.grant("grant-does-not-exist")
    except ControlError as e:
        expect_eq(e.status, 404, "unknown grant")
    expect(all(not e["path"].startswith("/_control") for e in up.log()), "control calls not logged")
    since = up.control("GET", "log")["last_seq"]
    refresh(up, b["refresh_token"])
    expect_eq(len(up.log(since)), 1, "log?since=")
    up.clear_stats()
    expect_eq(up.stats()["token_requests"], 0, "stats cleared")
    up.reset()
    expect_eq((up.grants(), up.tokens(), up.log()), ([], [], []), "reset forgets everything")


def t_restart_with_state(up_unused, workdir, ca_dir):
    state_file = os.path.join(workdir, "state.json")
    with FakeUpstream(workdir=os.path.join(workdir, "restart"), ca_dir=ca_dir,
                      state_file=state_file, quiet=True) as up:
        g = seed(up)
        b = expect_token_set(refresh(up, g["refresh_token"]))
        port = up.port
        expect_eq(up.stop(), 0, "exit code after SIGTERM")
        up.start()
        expect_eq(up.port, port, "same port after restart")
        state = up.grant(g["grant_id"])
        expect_eq(state["current_refresh_token"], b["refresh_token"], "state survived")
        expect_token_set(refresh(up, g["refresh_token"]))   # still within the window
        expect_eq(up.stop(), 0, "exit code")


def t_no_secrets_on_stderr(up, secrets_seen):
    text = up.stderr_text()
    expect("listening on" in text, "stderr has the operational log")
    leaked = [s for s in secrets_seen if s in text]
    expect(not leaked, f"{len(leaked)} secrets on stderr")


def self_test(base_url=None, ca_file=None, verbose=False):
    check = Check(verbose)
    workdir = tempfile.mkdtemp(prefix="fake-upstream-selftest-")
    own = None
    try:
        if base_url:
            up = UpstreamClient(base_url, ca_file)
        else:
            started = time.monotonic()
            own = up = FakeUpstream(workdir=os.path.join(workdir, "main"))
            print(f"     server on {up.base_url} (CA + start {time.monotonic() - started:.2f}s)")
        checks = [
            ("tls verification", t_tls), ("refresh: form + client_secret_basic", t_refresh_form_basic),
            ("refresh: JSON + client_secret_post (Atlassian)", t_refresh_json_post),
            ("refresh: form + client_secret_post", t_refresh_form_post),
            ("refresh: public client", t_public_client),
            ("client authentication errors", t_client_auth_errors),
            ("malformed requests", t_request_errors),
            ("invalid_grant standard/atlassian", t_invalid_grant_styles),
            ("reuse within the window", t_reuse_within_window),
            ("reuse detection, strict window", t_reuse_strict),
            ("reuse detection, window edge via clock", t_reuse_window_clock),
            ("resource API /me", t_resource_api), ("keep-alive", t_keep_alive),
            ("chunked request body", t_chunked),
            ("faults: error statuses and HTML", t_error_faults),
            ("faults: rate_limited", t_rate_limited),
            ("faults: malformed 200 responses", t_malformed_200_faults),
            ("faults: slow rotates", t_slow), ("faults: drop", t_drop),
            ("faults: reset_mid_body", t_reset_mid_body),
            ("faults: drop_after_rotate", t_drop_after_rotate),
            ("faults: count, persistent, FIFO, target", t_fault_queue),
            ("500 concurrent connections", t_concurrency),
            ("concurrent refreshes of one grant are counted", t_concurrent_same_grant),
            ("authorization_code + PKCE", t_authorization_code),
            ("non-rotating provider", t_non_rotating),
            ("refresh_lifetime and scope", t_refresh_lifetime_and_scope),
            ("control API", t_control_api),
        ]
        secrets_seen = set()
        for name, fn in checks:
            check.run(name, fn, up)
            try:
                secrets_seen.update(t["token"] for t in up.tokens())
            except Exception:  # the check above already reported the problem
                pass
        if own is not None:
            secrets_seen.add(SECRET)
            check.run("restart with --state-file, SIGTERM exit 0", t_restart_with_state, up,
                      workdir, own.ca_dir)
            check.run("no secrets on stderr", t_no_secrets_on_stderr, up, secrets_seen)
            code = own.stop()
            check.run("SIGTERM stops the server with exit code 0",
                      lambda: expect_eq(code, 0, "exit code"))
    finally:
        if own is not None:
            own.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{check.passed} passed, {check.failed} failed", flush=True)
    return 0 if check.failed == 0 else 1


def main(argv=None):
    parser = argparse.ArgumentParser(description="Fake upstream test helper.")
    parser.add_argument("--self-test", action="store_true", help="run the self-test")
    parser.add_argument("--base-url", help="test an already running server instead of starting one")
    parser.add_argument("--ca-file", help="CA for --base-url")
    parser.add_argument("--verbose", action="store_true", help="tracebacks for failures")
    args = parser.parse_args(argv)
    if not args.self_test:
        parser.print_help()
        return 2
    if bool(args.base_url) != bool(args.ca_file):
        parser.error("--base-url and --ca-file go together")
    return self_test(args.base_url, args.ca_file, args.verbose)


if __name__ == "__main__":
    sys.exit(main())

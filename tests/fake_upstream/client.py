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
import re
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

    @property
    def location(self):
        return self.headers.get("location")

    def __repr__(self):
        return f"Reply({self.status}, {self.headers!r}, {self.body[:200]!r})"


def basic_auth(client_id, client_secret):
    """RFC 6749 §2.3.1: both parts form-urlencoded, then Basic."""
    raw = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(raw.encode()).decode()


DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def pkce_challenge(verifier):
    """RFC 7636 S256: base64url(SHA-256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def make_pkce():
    """A fresh (code_verifier, S256 code_challenge) pair."""
    verifier = secrets.token_urlsafe(48)
    return verifier, pkce_challenge(verifier)


def redirect_params(location):
    """The query parameters of a redirect Location (last value wins), e.g. {"code", "state"}."""
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query,
                                       keep_blank_values=True))


# -- the fake Atlassian REST API ------------------------------------------------------------

def bearer(token):
    """Authorization header value for an OAuth access token (/ex) or a PAT (/dc)."""
    return "Bearer " + token


def api_token_auth(email, token):
    """Authorization header value for a Cloud API token (/site): Basic base64(email:token),
    NOT form-urlencoded (unlike basic_auth for OAuth clients)."""
    return "Basic " + base64.b64encode(f"{email}:{token}".encode()).decode()


def fingerprint(secret):
    """What the fake's log and echo show instead of a credential (first 12 hex of SHA-256)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


PATTERN_PERIOD = 65537
_PATTERNS = {}


def _pattern(seed):
    p = _PATTERNS.get(seed)
    if p is None:
        one = b"".join(hashlib.sha256(f"fake-upstream-download:{seed}:{k}".encode()).digest()
                       for k in range((PATTERN_PERIOD + 31) // 32))[:PATTERN_PERIOD]
        p = _PATTERNS[seed] = one + one
    return p


def download_chunks(seed, size, offset=0, chunk=65536):
    """The deterministic content the fake streams for `seed` (bytes offset..offset+size), in
    pieces: byte i is pattern[i % 65537], the pattern being the SHA-256 digests of
    "fake-upstream-download:{seed}:{k}" for k = 0, 1, ... Also the content of Blob uploads."""
    pattern = _pattern(seed)
    end = offset + size
    while offset < end:
        n = min(chunk, end - offset, PATTERN_PERIOD)
        i = offset % PATTERN_PERIOD
        yield pattern[i:i + n]
        offset += n


def download_bytes(seed, size, offset=0):
    """download_chunks joined (for small sizes)."""
    return b"".join(download_chunks(seed, size, offset))


def download_sha256(seed, size):
    """Hex SHA-256 of `size` bytes of the content for `seed` (what a download must hash to)."""
    h = hashlib.sha256()
    for piece in download_chunks(seed, size):
        h.update(piece)
    return h.hexdigest()


class Blob:
    """`size` bytes of deterministic content (download_chunks(seed, size)), generated while
    being sent: lets a test upload hundreds of MB without holding them."""

    def __init__(self, seed, size):
        self.seed, self.size = seed, size

    def chunks(self):
        return download_chunks(self.seed, self.size)

    def sha256(self):
        return download_sha256(self.seed, self.size)


class MultipartBody:
    """A multipart/form-data body built from parts, sent as a stream.

    parts: (name, filename, data[, content_type]) tuples; filename None makes a plain form
    field; data is bytes, str or a Blob. Attributes: content_type, length, boundary,
    expected (for each part with a filename: {"filename", "size", "sha256"}, what the fake
    answers). chunks() yields the body; sha256() hashes all of it.
    """

    def __init__(self, parts, boundary=None):
        self.boundary = boundary or "----fake-upstream-" + secrets.token_hex(12)
        self.content_type = f"multipart/form-data; boundary={self.boundary}"
        self.segments, self.expected = [], []
        for part in parts:
            name, filename, data = part[:3]
            ctype = part[3] if len(part) > 3 else ("application/octet-stream" if filename
                                                   is not None else None)
            if isinstance(data, str):
                data = data.encode()
            head = f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"'
            if filename is not None:
                head += f'; filename="{filename}"'
            head += "\r\n" + (f"Content-Type: {ctype}\r\n" if ctype else "") + "\r\n"
            self.segments += [head.encode(), data, b"\r\n"]
            if filename is not None:
                size = data.size if isinstance(data, Blob) else len(data)
                digest = data.sha256() if isinstance(data, Blob) else hashlib.sha256(data).hexdigest()
                self.expected.append({"filename": filename, "size": size, "sha256": digest})
        self.segments.append(f"--{self.boundary}--\r\n".encode())
        self.length = sum(s.size if isinstance(s, Blob) else len(s) for s in self.segments)

    def chunks(self):
        for seg in self.segments:
            if isinstance(seg, Blob):
                yield from seg.chunks()
            else:
                yield seg

    def sha256(self):
        h = hashlib.sha256()
        for piece in self.chunks():
            h.update(piece)
        return h.hexdigest()


class Download:
    """A streamed GET: status, lower-case headers, size and SHA-256 of what arrived, and
    whether the body was complete (False: the connection ended early)."""

    def __init__(self, status, headers, size, sha256, complete):
        self.status, self.headers, self.size, self.sha256 = status, headers, size, sha256
        self.complete = complete

    def __repr__(self):
        return f"Download({self.status}, size={self.size}, complete={self.complete})"


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

    @property
    def issuer(self):
        return self.base_url

    @property
    def tenant_issuer(self):
        return self.base_url + "/tenant"

    @property
    def authorize_endpoint(self):
        return self.base_url + "/authorize"

    @property
    def device_authorization_url(self):
        return self.base_url + "/oauth/device/code"

    @property
    def revocation_url(self):
        return self.base_url + "/oauth/revoke"

    @property
    def registration_url(self):
        return self.base_url + "/register"

    @property
    def mcp_url(self):
        return self.base_url + "/mcp"

    @property
    def prm_url(self):
        return self.base_url + "/.well-known/oauth-protected-resource/mcp"

    @property
    def accessible_resources_url(self):
        return self.base_url + "/oauth/token/accessible-resources"

    # the fake Atlassian REST API: what tokend is configured with

    @property
    def api_base(self):
        """tokend's api_base for the atlassian preset (3LO calls go to api_base/ex/...)."""
        return self.base_url

    @property
    def dc_url(self):
        """A Data Center "site" (jira_base / confluence_base) for PAT profiles."""
        return self.base_url + "/dc"

    def site_url(self, name="acme"):
        """A Cloud "site" for API-token profiles: Jira at SITE/..., Confluence at SITE/wiki/..."""
        return f"{self.base_url}/site/{name}"

    def ex_url(self, product="jira", cloud_id=None):
        """BASE/ex/{product}/{cloud_id} (default: the first configured site's id)."""
        cloud_id = cloud_id or self.sites()[0]["id"]
        return f"{self.base_url}/ex/{product}/{cloud_id}"

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

    @staticmethod
    def client_auth(params, client_id, client_secret=None, auth_method=None):
        """(params, auth) for token_request: client_secret_basic (default with a secret),
        client_secret_post, or none (client_id in the body)."""
        params = dict(params)
        if auth_method is None:
            auth_method = "none" if client_secret is None else "client_secret_basic"
        if auth_method == "client_secret_basic":
            return params, (client_id, client_secret)
        params["client_id"] = client_id
        if auth_method == "client_secret_post":
            params["client_secret"] = client_secret
        return params, None

    def _client_post(self, path, params, client_id, client_secret=None, auth_method=None,
                     as_json=False, **kw):
        params, auth = self.client_auth(params, client_id, client_secret, auth_method)
        return self.token_request(params, auth=auth, as_json=as_json, path=path, **kw)

    # -- authorization code ------------------------------------------------------

    def authorize_url(self, client_id, redirect_uri=None, state=None, scope=None,
                      code_challenge=None, code_challenge_method="S256", resource=None,
                      path="/authorize", **extra):
        """An authorization-request URL; None values are left out; `resource` may be a list."""
        params = [("response_type", "code")]
        for k, v in (("client_id", client_id), ("redirect_uri", redirect_uri), ("state", state), ("scope", scope),
                     ("code_challenge", code_challenge)):
            if v is not None:
                params.append((k, v))
        if code_challenge is not None and code_challenge_method is not None:
            params.append(("code_challenge_method", code_challenge_method))
        for r in ([resource] if isinstance(resource, str) else resource or []):
            params.append(("resource", r))
        params += [(k, v) for k, v in extra.items() if v is not None]
        return self.base_url + path + "?" + urllib.parse.urlencode(params)

    def authorize(self, client_id, redirect_uri=None, **kw):
        """GET the authorization endpoint (redirects are not followed). Reply (.location)."""
        url = self.authorize_url(client_id, redirect_uri, **kw)
        split = urllib.parse.urlsplit(url)
        return self.request("GET", split.path + "?" + split.query)

    def exchange_code(self, code, redirect_uri, client_id, client_secret=None, auth_method=None,
                      code_verifier=None, resource=None, as_json=False, **kw):
        """grant_type=authorization_code at the token endpoint. Reply."""
        params = {"grant_type": "authorization_code", "code": code}
        for k, v in (("redirect_uri", redirect_uri), ("code_verifier", code_verifier),
                     ("resource", resource)):
            if v is not None:
                params[k] = v
        return self._client_post("/oauth/token", params, client_id, client_secret, auth_method,
                                 as_json, **kw)

    def code_login(self, client_id, redirect_uri, client_secret=None, auth_method=None,
                   scope=None, resource=None, pkce=True, **authorize_params):
        """A whole code flow (authorize, then exchange, PKCE S256 by default) -> token response
        dict. Raises AssertionError when a step does not succeed."""
        verifier, challenge = make_pkce() if pkce else (None, None)
        state = secrets.token_urlsafe(12)
        r = self.authorize(client_id, redirect_uri, state=state, scope=scope,
                           code_challenge=challenge, resource=resource, **authorize_params)
        if r.status != 302:
            raise AssertionError(f"authorize answered {r.status}: {r.body[:200]!r}")
        got = redirect_params(r.headers["location"])
        if "code" not in got or got.get("state") != state:
            raise AssertionError(f"authorize redirected with {sorted(got)}")
        r = self.exchange_code(got["code"], redirect_uri, client_id, client_secret, auth_method,
                               code_verifier=verifier,
                               resource=resource if isinstance(resource, str) else None)
        if r.status != 200:
            raise AssertionError(f"code exchange answered {r.status}: {r.body[:200]!r}")
        return r.json()

    # -- device authorization grant (RFC 8628) ---------------------------------------

    def device_authorize(self, client_id, client_secret=None, auth_method=None, scope=None,
                         resource=None, as_json=False, **kw):
        """POST /oauth/device/code. Reply (200: device_code, user_code, verification_uri, ...)."""
        params = {k: v for k, v in (("scope", scope), ("resource", resource)) if v is not None}
        return self._client_post("/oauth/device/code", params, client_id, client_secret,
                                 auth_method, as_json, **kw)

    def device_poll(self, device_code, client_id, client_secret=None, auth_method=None, **kw):
        """One device-code poll at the token endpoint. Reply."""
        return self._client_post("/oauth/token", {"grant_type": DEVICE_GRANT,
                                                  "device_code": device_code},
                                 client_id, client_secret, auth_method, **kw)

    # -- other endpoints -------------------------------------------------------------

    def revoke(self, token, client_id, client_secret=None, auth_method=None, token_type_hint=None,
               **kw):
        """POST /oauth/revoke (RFC 7009). Reply (200, empty body)."""
        params = {"token": token}
        if token_type_hint is not None:
            params["token_type_hint"] = token_type_hint
        return self._client_post("/oauth/revoke", params, client_id, client_secret, auth_method,
                                 **kw)

    def register(self, metadata):
        """POST /register (RFC 7591) with a metadata dict. Reply (201 on success)."""
        return self.request("POST", "/register", json.dumps(metadata),
                            {"Content-Type": "application/json"})

    def discovery(self, kind="oauth", tenant=False, form=None):
        """GET a discovery document. kind "oauth" (RFC 8414) or "oidc"; tenant: the issuer
        BASE/tenant, in RFC 8414 path-insert form for oauth and path-append form for oidc
        (form="insert" asks for /.well-known/openid-configuration/tenant). Reply."""
        if kind == "oauth":
            path = "/.well-known/oauth-authorization-server" + ("/tenant" if tenant else "")
        elif not tenant:
            path = "/.well-known/openid-configuration"
        elif form == "insert":
            path = "/.well-known/openid-configuration/tenant"
        else:
            path = "/tenant/.well-known/openid-configuration"
        return self.request("GET", path)

    def mcp_request(self, token=None, method="POST", body=None):
        """A request to the MCP server (BASE/mcp). Reply."""
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = "Bearer " + token
        if body is None and method == "POST":
            body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"})
        return self.request(method, "/mcp", body, headers)

    def accessible_resources(self, token=None):
        """GET /oauth/token/accessible-resources. Reply."""
        headers = {"Authorization": "Bearer " + token} if token is not None else {}
        return self.request("GET", "/oauth/token/accessible-resources", headers=headers)

    # -- the fake Atlassian REST API, called directly ----------------------------------

    def _path(self, url_or_path):
        if url_or_path.startswith(("https://", "http://")):
            split = urllib.parse.urlsplit(url_or_path)
            return split.path + ("?" + split.query if split.query else "")
        return url_or_path

    def api_request(self, method, path, auth=None, body=None, headers=None, **kw):
        """A request under /ex, /site or /dc (a path or a full URL). `auth`: an Authorization
        value (bearer(), api_token_auth()); a dict/list body is sent as JSON. Reply."""
        headers = dict(headers or {})
        if auth is not None:
            headers["Authorization"] = auth
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        return self.request(method, self._path(path), body, headers, **kw)

    def upload(self, path, parts, auth=None, chunked=False, xsrf=True, headers=None, conn=None,
               timeout=120.0):
        """POSTs a streamed multipart body (see MultipartBody; Blob parts are generated on the
        fly) with Content-Length, or chunked. xsrf: send X-Atlassian-Token: no-check. Reply;
        reply.multipart is the MultipartBody (its .expected is what the fake should answer)."""
        mp = parts if isinstance(parts, MultipartBody) else MultipartBody(parts)
        hdrs = {"Content-Type": mp.content_type}
        if xsrf:
            hdrs["X-Atlassian-Token"] = "no-check"
        if auth is not None:
            hdrs["Authorization"] = auth
        if not chunked:
            hdrs["Content-Length"] = str(mp.length)
        hdrs.update(headers or {})
        own = conn is None
        conn = conn or self.connection(timeout)
        try:
            conn.request("POST", self._path(path), body=mp.chunks(), headers=hdrs,
                         encode_chunked=chunked)
            resp = conn.getresponse()
            reply = Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
            reply.multipart = mp
            return reply
        finally:
            if own:
                conn.close()

    def download(self, path, auth=None, headers=None, conn=None, timeout=120.0):
        """A GET whose body is hashed as it arrives, never held. Download."""
        hdrs = dict(headers or {})
        if auth is not None:
            hdrs["Authorization"] = auth
        own = conn is None
        conn = conn or self.connection(timeout)
        try:
            conn.request("GET", self._path(path), headers=hdrs)
            resp = conn.getresponse()
            h, size, complete = hashlib.sha256(), 0, True
            try:
                while True:
                    piece = resp.read(65536)
                    if not piece:
                        break
                    h.update(piece)
                    size += len(piece)
            except (http.client.IncompleteRead, OSError) as e:
                partial = getattr(e, "partial", b"") or b""
                h.update(partial)
                size += len(partial)
                complete = False
            if resp.length not in (None, 0):
                complete = False
            return Download(resp.status, {k.lower(): v for k, v in resp.getheaders()}, size,
                            h.hexdigest(), complete)
        finally:
            if own:
                conn.close()

    # -- control API -------------------------------------------------------------

    def control(self, method, path, obj=None, timeout=10.0):
        body = json.dumps(obj) if obj is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        reply = self.request(method, "/_control/" + path.lstrip("/"), body, headers, timeout=timeout)
        if not 200 <= reply.status < 300:
            raise ControlError(reply.status, reply.body)
        return reply.json()

    def health(self):
        return self.control("GET", "health")

    def reset(self):
        return self.control("POST", "reset", {})

    def open_gate(self, name):
        """Lets a gated stream (?gate=NAME on /events and downloads) send the rest."""
        return self.control("POST", f"gates/{name}", {})

    def add_client(self, client_id, client_secret=None, auth_method=None, redirect_uris=None):
        spec = {"client_id": client_id, "client_secret": client_secret}
        if auth_method is not None:
            spec["auth_method"] = auth_method
        if redirect_uris is not None:
            spec["redirect_uris"] = redirect_uris
        return self.control("POST", "clients", spec)

    def clients(self):
        return self.control("GET", "clients")["clients"]

    def add_grant(self, client_id, scope=None, access_lifetime=None, sub=None, resource=None):
        spec = {"client_id": client_id}
        for k, v in (("scope", scope), ("access_lifetime", access_lifetime), ("sub", sub),
                     ("resource", resource)):
            if v is not None:
                spec[k] = v
        return self.control("POST", "grants", spec)

    def grant(self, grant_id):
        return self.control("GET", f"grants/{urllib.parse.quote(grant_id)}")

    def grants(self, timeout=10.0):
        return self.control("GET", "grants", timeout=timeout)["grants"]

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

    def log(self, since=0, settle=False):
        """Request-log entries after `since`. settle=True first waits until every request
        that began before this call has been logged (the fake logs a request after its
        answer went out, so a caller that has just read the answer may be ahead of it)."""
        return self.control("GET", f"log?since={since}" + ("&settle=1" if settle else ""))["entries"]

    def clear_log(self):
        return self.control("DELETE", "log")

    def stats(self, timeout=10.0):
        return self.control("GET", "stats", timeout=timeout)

    def clear_stats(self):
        return self.control("DELETE", "stats")

    def tokens(self):
        return self.control("GET", "tokens")["tokens"]

    def device_codes(self):
        """Every device authorization: status, interval, polls, slow_downs, poll_times
        (time.monotonic()), poll_spacings, answers, grant_id, ..."""
        return self.control("GET", "device")["device_codes"]

    def device(self, user_code):
        return self.control("GET", f"device/{urllib.parse.quote(user_code)}")

    def approve_device(self, user_code=None, sub=None):
        """The user approves (user_code None: the newest pending device authorization)."""
        spec = {} if user_code is None else {"user_code": user_code}
        if sub is not None:
            spec["sub"] = sub
        return self.control("POST", "device/approve", spec)

    def deny_device(self, user_code=None):
        return self.control("POST", "device/deny", {} if user_code is None else
                            {"user_code": user_code})

    def force_slow_down(self, user_code=None, count=1):
        """The next `count` polls of that device code (None: of any device code) get slow_down."""
        spec = {"count": count}
        if user_code is not None:
            spec["user_code"] = user_code
        return self.control("POST", "device/slow_down", spec)

    def set_sites(self, sites):
        """Sites for /oauth/token/accessible-resources: [{"id", "url", "name"}, ...]."""
        return self.control("POST", "sites", {"sites": sites})["sites"]

    def sites(self):
        return self.control("GET", "sites")["sites"]

    def add_api_token(self, email, token, account_id=None, display_name=None):
        """A Cloud API token valid at every /site/NAME as Basic email:token."""
        spec = {"email": email, "token": token}
        for k, v in (("account_id", account_id), ("display_name", display_name)):
            if v is not None:
                spec[k] = v
        return self.control("POST", "api_tokens", spec)

    def api_tokens(self):
        return self.control("GET", "api_tokens")["api_tokens"]

    def revoke_api_token(self, token):
        return self.control("POST", "api_tokens/revoke", {"token": token})

    def add_pat(self, token, user=None, display_name=None):
        """A Data Center personal access token valid at /dc as Bearer."""
        spec = {"token": token}
        for k, v in (("user", user), ("display_name", display_name)):
            if v is not None:
                spec[k] = v
        return self.control("POST", "pats", spec)

    def pats(self):
        return self.control("GET", "pats")["pats"]

    def revoke_pat(self, token):
        return self.control("POST", "pats/revoke", {"token": token})

    def store(self):
        """The API resource store: {namespace: {"issues", "pages", "attachments", ...}},
        namespaces "site:NAME" (/site/NAME and /ex/.../CLOUDID of that site) and "dc"."""
        return self.control("GET", "store")["store"]

    def api_log(self, since=0, prefix=None, settle=False):
        """Request-log entries of API calls (entry["api"] set), optionally of one prefix
        ("ex", "site", "dc")."""
        return [e for e in self.log(since, settle) if e.get("api")
                and (prefix is None or e["api"]["prefix"] == prefix)]

    def api_log_at_least(self, since, count, deadline=None):
        """api_log(since) once it holds `count` entries: the fake logs a call after
        its answer has gone out, so a caller may see the answer first."""
        end = time.monotonic() + (DEFAULT_DEADLINE if deadline is None else deadline)
        while True:
            entries = self.api_log(since)
            if len(entries) >= count or time.monotonic() > end:
                return entries
            time.sleep(0.01)

    def last_seq(self):
        """The log's newest sequence number (for log(since=...))."""
        return self.control("GET", "log?since=999999999999")["last_seq"]

    def wait_for_log(self, predicate, what, deadline=DEFAULT_DEADLINE, since=0):
        """Polls the request log (entries after `since`) until an entry satisfies
        predicate; returns it. The fake logs a request after its answer has gone out (or
        its connection was dropped), so a caller may see the outcome first."""
        end = time.monotonic() + deadline
        while True:
            for entry in self.log(since):
                if predicate(entry):
                    return entry
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {deadline}s waiting for log entry: {what}")
            time.sleep(0.02)


class DocumentServer:
    """A small HTTPS server for documents an authorization server fetches by URL, such as
    client ID metadata documents: ``serve(path, doc)`` (a dict is sent as JSON), or
    ``serve(path, [doc1, doc2, ...])`` to answer the n-th fetch with the n-th document (the last
    one after that). Its certificate is the fake upstream's (same test CA, SAN 127.0.0.1), so
    tokend (``--ca-bundle``) and the fake upstream (``--ca-file``) both trust it.
    ``fetches(path)`` lists the User-Agent of each fetch, in order."""

    def __init__(self, cert_file, key_file, host="127.0.0.1"):
        import http.server
        outer = self
        self._docs = {}
        self._fetches = {}
        self._lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                with outer._lock:
                    answers = outer._docs.get(self.path)
                    seen = outer._fetches.setdefault(self.path, [])
                    seen.append(self.headers.get("User-Agent", ""))
                    answer = None if answers is None else answers[min(len(seen), len(answers)) - 1]
                if answer is None:
                    body, status = b'{"error": "not_found"}', 404
                else:
                    body, status = json.dumps(answer).encode() if not isinstance(answer, bytes) else answer, 200
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer((host, 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.base_url = f"https://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path):
        return self.base_url + path

    def serve(self, path, docs):
        with self._lock:
            self._docs[path] = docs if isinstance(docs, list) else [docs]
            self._fetches[path] = []

    def fetches(self, path):
        with self._lock:
            return list(self._fetches.get(path, []))

    def stop(self):
        self._server.shutdown()
        self._server.server_close()


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
                "--port-file", self.port_file, "--ca-file", self.ca_file]
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
    entry = up.log(settle=True)[-1]
    expect_eq(entry["client_auth"], "client_secret_basic", "client_auth")
    expect_eq(entry["refresh_token_status"], "current", "refresh_token_status")
    expect_eq(entry["grant_id"], g["grant_id"], "grant_id in log")
    expect_eq(entry["issued"]["refresh_token"], body["refresh_token"], "issued in log")
    expect(entry["headers"]["authorization"].startswith("Basic "), "log keeps headers")


def t_refresh_json_post(up):
    g = seed(up, auth_method="client_secret_post")
    expect_token_set(refresh(up, g["refresh_token"], "post_json"))
    entry = up.log(settle=True)[-1]
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
    expect_eq(up.log(settle=True)[-1]["client_auth"], "none", "client_auth")


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
    expect_eq(up.log(settle=True)[-1]["refresh_token_status"], "unknown", "status unknown")
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
    expect_eq(up.log(settle=True)[-1]["refresh_token_status"], "previous_within_window", "status")
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
        expect_eq(up.log(settle=True)[-1]["refresh_token_status"], "grant_revoked", "status after revocation")
    for at in access_tokens:
        r = up.request("GET", "/me", headers={"Authorization": "Bearer " + at})
        expect_eq(r.status, 401, "revoked access token")
        expect('error="invalid_token"' in r.headers["www-authenticate"], "invalid_token", r.headers)


def t_reuse_strict(up):
    g = seed(up, reuse_window=0)
    b1 = expect_token_set(refresh(up, g["refresh_token"]))
    expect_oauth_error(refresh(up, g["refresh_token"]), 403, "invalid_grant")
    expect_eq(up.log(settle=True)[-1]["refresh_token_status"], "reused_outside_window", "status")
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
    entries = up.log(settle=True)[-3:]
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


# -- the fake Atlassian REST API

EMAIL, API_TOKEN, PAT = "dev@example.com", "ATATT3x-fake-api-token-1", "NjM-fake-pat-1"


def api_seed(up, **config):
    """seed() plus an API token (dev@example.com) and a PAT (user jdoe); -> (grant, cloud id)."""
    g = seed(up, **config)
    up.add_api_token(EMAIL, API_TOKEN, display_name="Dev")
    up.add_pat(PAT, user="jdoe")
    return g, up.sites()[0]["id"]


def _vm_hwm_kib(pid):
    """Peak resident set size of a process (Linux), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def t_api_auth(up):
    g, cid = api_seed(up)
    at = g["access_token"]
    basic = api_token_auth(EMAIL, API_TOKEN)
    cases = [   # (prefix, path, good credential, challenge scheme, wrong credential)
        ("ex", f"/ex/jira/{cid}/rest/api/3/myself", bearer(at), "Bearer", bearer("at-nope")),
        ("ex", f"/ex/confluence/{cid}/rest/api/user/current", bearer(at), "Bearer", basic),
        ("ex", f"/ex/confluence/{cid}/wiki/rest/api/user/current", bearer(at), "Bearer", bearer(PAT)),
        ("site", "/site/acme/rest/api/2/myself", basic, "Basic", api_token_auth(EMAIL, "wrong")),
        ("site", "/site/acme/rest/api/3/myself", basic, "Basic",
         api_token_auth("other@example.com", API_TOKEN)),
        ("site", "/site/acme/wiki/rest/api/user/current", basic, "Basic", bearer(API_TOKEN)),
        ("dc", "/dc/rest/api/2/myself", bearer(PAT), "Bearer", bearer(at)),
        ("dc", "/dc/confluence/rest/api/user/current", bearer(PAT), "Bearer", "Basic " + PAT),
    ]
    since = up.last_seq()
    for prefix, path, good, scheme, wrong in cases:
        r = up.api_request("GET", path, good)
        expect_eq(r.status, 200, path)
        body = r.json()
        expect_eq(body["fakeUpstream"]["credential_kind"],
                  {"ex": "oauth", "site": "api_token", "dc": "pat"}[prefix], "credential kind")
        for auth, what in ((None, "no credential"), (wrong, "wrong credential")):
            r = up.api_request("GET", path, auth)
            expect_eq(r.status, 401, f"{path}: {what}")
            expect(r.headers.get("www-authenticate", "").startswith(scheme + " "), "challenge",
                   r.headers)
            expect(isinstance(r.json(), dict), "JSON body", r.body)
    r = up.api_request("GET", cases[0][1], bearer(at)).json()
    expect_eq((r["accountId"], r["emailAddress"]), (g["sub"], g["sub"] + "@example.test"), "3LO me")
    r = up.api_request("GET", "/site/acme/rest/api/2/myself", basic).json()
    expect_eq((r["emailAddress"], r["displayName"]), (EMAIL, "Dev"), "API-token me")
    r = up.api_request("GET", "/dc/rest/api/2/myself", bearer(PAT)).json()
    expect_eq((r["name"], r["key"]), ("jdoe", "jdoe"), "PAT me (Data Center)")
    for url, auth in ((up.ex_url() + "/rest/api/3/myself", bearer(at)),
                      (up.ex_url("confluence", cid) + "/rest/api/user/current", bearer(at)),
                      (up.site_url() + "/rest/api/2/myself", basic),
                      (up.site_url("acme") + "/wiki/rest/api/user/current", basic),
                      (up.dc_url + "/rest/api/2/myself", bearer(PAT))):
        expect(url.startswith(up.api_base + "/"), "URL helpers", url)
        expect_eq(up.api_request("GET", url, auth).status, 200, url)
    r = up.api_request("GET", "/ex/jira/not-a-cloud-id/rest/api/3/myself", bearer(at))
    expect_eq((r.status, r.json()["code"]), (404, 404), "unknown cloud id")
    entries = up.api_log(since)
    expect(entries and all(e["auth"]["expected"] for e in entries), "auth in every entry")
    ok = [e for e in entries if e["status"] == 200]
    expect_eq({e["credential_kind"] for e in ok}, {"oauth", "api_token", "pat"}, "kinds")
    expect(all(e["credential_kind"] is None for e in entries if e["status"] == 401), "401: no kind")
    site_entry = next(e for e in ok if e["api"]["prefix"] == "site")
    expect_eq((site_entry["auth"]["scheme"], site_entry["auth"]["fingerprint"],
               site_entry["auth"]["email"]), ("Basic", fingerprint(API_TOKEN), EMAIL), "auth summary")
    for e in entries:
        text = json.dumps(e["auth"])
        expect(at not in text and API_TOKEN not in text and PAT not in text, "no secret in auth")
    s = up.stats()
    expect_eq(s["api_requests_by_prefix"], {"ex": 13, "site": 12, "dc": 8}, "requests by prefix")
    expect_eq(s["api_unauthorized_by_prefix"], {"ex": 6, "site": 6, "dc": 4}, "401s by prefix")
    expect_eq(s["api_requests_by_credential"]["pat"], 4, "by credential")
    # expiry and revocation
    up.advance_clock(3601)
    r = up.api_request("GET", cases[0][1], bearer(at))
    expect_eq(r.status, 401, "expired access token")
    expect('error="invalid_token"' in r.headers["www-authenticate"], "invalid_token", r.headers)
    expect_eq(up.api_log(settle=True)[-1]["auth"]["status"], "expired", "status in the log")
    up.revoke_api_token(API_TOKEN)
    expect_eq(up.api_request("GET", "/site/acme/rest/api/2/myself", basic).status, 401,
              "revoked API token")
    up.revoke_pat(PAT)
    expect_eq(up.api_request("GET", "/dc/rest/api/2/myself", bearer(PAT)).status, 401, "revoked PAT")
    expect_eq([t["revoked"] for t in up.api_tokens() + up.pats()], [True, True], "listed revoked")
    kinds = {t["kind"]: t["valid"] for t in up.tokens() if t["kind"] in ("api_token", "pat")}
    expect_eq(kinds, {"api_token": False, "pat": False}, "in /_control/tokens")
    for bad in ({"email": "x@y"}, {"token": "t"}):
        try:
            up.control("POST", "api_tokens", bad)
        except ControlError as e:
            expect_eq(e.status, 400, f"rejects {bad}")
        else:
            raise AssertionError(f"accepted {bad}")


def t_api_resources(up):
    g, cid = api_seed(up)
    ex, oauth = f"/ex/jira/{cid}", bearer(g["access_token"])
    basic = api_token_auth(EMAIL, API_TOKEN)
    fields = {"project": {"key": "ABC"}, "summary": "first", "issuetype": {"name": "Task"}}
    r = up.api_request("POST", ex + "/rest/api/3/issue", oauth, {"fields": fields})
    expect_eq(r.status, 201, "create")
    created = r.json()
    expect_eq((created["key"], created["fields"]), ("ABC-1", fields), "key, fields echoed")
    expect(created["self"] == f"{up.base_url}{ex}/rest/api/3/issue/{created['id']}", "self",
           created)
    r = up.api_request("GET", "/site/acme/rest/api/2/issue/ABC-1", basic)
    expect_eq((r.status, r.json()["fields"]["summary"]), (200, "first"), "same site via API token")
    r = up.api_request("PUT", ex + "/rest/api/3/issue/ABC-1", oauth,
                       {"fields": {"summary": "second"}})
    expect_eq((r.status, r.body, "content-length" in r.headers), (204, b"", False), "update")
    r = up.api_request("GET", f"{ex}/rest/api/3/issue/{created['id']}", oauth)
    expect_eq(r.json()["fields"]["summary"], "second", "updated, found by id")
    expect_eq(up.api_request("GET", "/dc/rest/api/2/issue/ABC-1", bearer(PAT)).status, 404,
              "Data Center has its own store")
    r = up.api_request("PATCH", ex + "/rest/api/3/issue/ABC-1", oauth, {})
    expect_eq((r.status, r.headers.get("allow")), (405, "DELETE, GET, HEAD, PUT"), "405")
    expect_eq(up.api_request("DELETE", ex + "/rest/api/3/issue/ABC-1", oauth).status, 204, "delete")
    r = up.api_request("GET", ex + "/rest/api/3/issue/ABC-1", oauth)
    expect_eq((r.status, r.json()["errorMessages"]),
              (404, ["Issue does not exist or you do not have permission to see it."]), "gone")
    r = up.api_request("POST", ex + "/rest/api/3/issue", oauth, {"fields": {"project": {"key": "A"}}})
    expect_eq((r.status, list(r.json()["errors"])), (400, ["summary"]), "summary required")
    r = up.api_request("POST", ex + "/rest/api/3/issue", oauth, "{nope",
                       headers={"Content-Type": "application/json"})
    expect_eq(r.status, 400, "malformed JSON")
    r = up.api_request("POST", ex + "/rest/api/3/issue", oauth, {"fields": fields})
    expect_eq(r.json()["key"], "ABC-2", "keys keep counting")
    # Confluence pages
    wiki = "/site/acme/wiki"
    page = {"type": "page", "title": "Notes", "space": {"key": "SP"},
            "body": {"storage": {"value": "<p>x</p>", "representation": "storage"}}}
    r = up.api_request("POST", wiki + "/rest/api/content", basic, page)
    expect_eq(r.status, 200, "create page")
    pid = r.json()["id"]
    expect_eq((r.json()["version"], r.json()["space"]), ({"number": 1}, {"key": "SP"}), "page")
    expect_eq(up.api_request("POST", wiki + "/rest/api/content", basic, page).status, 400,
              "duplicate title")
    r = up.api_request("GET", f"/ex/confluence/{cid}/rest/api/content/{pid}", oauth)
    expect_eq((r.status, r.json()["title"]), (200, "Notes"), "same site via 3LO")
    r = up.api_request("GET", wiki + "/rest/api/content?spaceKey=SP&limit=10", basic)
    expect_eq([p["id"] for p in r.json()["results"]], [pid], "list by space")
    expect_eq(up.api_request("GET", wiki + "/rest/api/content?spaceKey=XX", basic).json()["size"],
              0, "other space empty")
    r = up.api_request("PUT", f"{wiki}/rest/api/content/{pid}", basic,
                       {"title": "Notes 2", "version": {"number": 2}, "type": "page"})
    expect_eq((r.status, r.json()["version"]["number"], r.json()["title"]), (200, 2, "Notes 2"),
              "update")
    r = up.api_request("PUT", f"{wiki}/rest/api/content/{pid}", basic, {"version": {"number": 2}})
    expect_eq((r.status, r.json()["statusCode"]), (409, 409), "stale version")
    expect_eq(up.api_request("DELETE", f"{wiki}/rest/api/content/{pid}", basic).status, 204, "delete")
    r = up.api_request("GET", f"{wiki}/rest/api/content/{pid}", basic)
    expect_eq((r.status, r.json()["statusCode"]), (404, 404), "page gone")
    r = up.api_request("POST", "/dc/confluence/rest/api/content", bearer(PAT), page)
    expect_eq(r.status, 200, "Data Center page")
    store = up.store()
    expect_eq(sorted(store), ["dc", "site:acme"], "namespaces")
    expect_eq([i["key"] for i in store["site:acme"]["issues"].values()], ["ABC-2"], "stored issues")
    ops = up.stats()["api_operations"]
    expect_eq((ops["jira.issue_create"], ops["confluence.content"]), (4, 5), "operations")


def t_api_echo(up):
    g, cid = api_seed(up)
    basic = api_token_auth(EMAIL, API_TOKEN)
    since = up.last_seq()
    path = "/site/acme/rest/api/3/search"
    r = up.api_request("POST", path + "?jql=project%20%3D%20ABC&maxResults=5&x=1&x=2", basic,
                       "héllo", headers={"X-Custom": "v1", "Content-Type": "text/plain",
                                         "Cookie": "a=b"})
    expect_eq(r.status, 200, "echo")
    e = r.json()
    expect_eq((e["method"], e["path"], e["prefix"], e["product"], e["site"], e["rest"]),
              ("POST", path, "site", "jira", "acme", "rest/api/3/search"), "where")
    expect_eq(e["query"], "jql=project%20%3D%20ABC&maxResults=5&x=1&x=2", "raw query")
    expect_eq(e["args"], {"jql": ["project = ABC"], "maxResults": ["5"], "x": ["1", "2"]}, "args")
    expect_eq((e["headers"]["x-custom"], e["headers"]["cookie"]), ("v1", "a=b"), "headers")
    expect("authorization" not in e["headers"], "no Authorization in the echo", e["headers"])
    expect_eq({k: e["authorization"][k] for k in ("scheme", "valid", "kind")},
              {"scheme": "Basic", "valid": True, "kind": "api_token"}, "authorization summary")
    raw = "héllo".encode()
    expect_eq((e["body"], e["body_size"], e["body_sha256"]),
              ("héllo", len(raw), hashlib.sha256(raw).hexdigest()), "body")
    entry = up.api_log(since)[-1]
    expect_eq((entry["path"], entry["query"]["maxResults"], entry["body_size"],
               entry["credential_kind"], entry["api"]["operation"]),
              (path, "5", len(raw), "api_token", "echo"), "log entry")
    r = up.request("HEAD", f"/ex/jira/{cid}/rest/api/3/whatever",
                   headers={"Authorization": bearer(g["access_token"])})
    expect_eq((r.status, r.body), (200, b""), "HEAD")
    r = up.api_request("GET", "/dc/jira/rest/agile/1.0/board", bearer(PAT)).json()
    expect_eq((r["product"], r["rest"]), ("jira", "rest/agile/1.0/board"), "/dc/jira pins Jira")
    up.config(api_auth_required=False)
    r = up.api_request("GET", "/dc/rest/x").json()
    expect_eq((r["authorization"]["present"], r["authorization"]["valid"]), (False, False),
              "let through without a credential")
    r = up.api_request("GET", "/dc/rest/x", "Bearer bogus").json()
    expect_eq((r["authorization"]["scheme"], r["authorization"]["valid"],
               r["authorization"]["status"]), ("Bearer", False, "unknown"), "invalid, let through")
    expect_eq(up.api_request("GET", "/dc/rest/api/2/myself").status, 401, "myself still needs one")
    up.config(api_auth_required=True)


def t_api_keep_alive(up):
    g, cid = api_seed(up)
    ex, oauth = f"/ex/jira/{cid}", bearer(g["access_token"])
    since = up.last_seq()
    conn = up.connection()
    try:
        statuses = [up.api_request("GET", ex + "/rest/api/3/myself", oauth, conn=conn).status]
        r = up.api_request("POST", ex + "/rest/api/3/issue", oauth,
                           {"fields": {"summary": "s", "project": {"key": "K"}}}, conn=conn)
        statuses.append(r.status)
        statuses.append(up.upload(ex + "/rest/api/3/issue/K-1/attachments",
                                  [("file", "a.txt", b"abc")], oauth, conn=conn).status)
        statuses.append(up.upload(ex + "/rest/api/3/issue/K-1/attachments",
                                  [("file", "a.txt", b"abc")], oauth, xsrf=False, conn=conn).status)
        statuses.append(up.upload(ex + "/rest/api/3/issue/K-1/attachments",
                                  [("file", "b", Blob("k", 300000))], oauth, chunked=True,
                                  conn=conn).status)
        d = up.download(ex + "/rest/api/3/attachment/content/x?size=300000", oauth, conn=conn)
        statuses.append(d.status)
        d = up.download(ex + "/rest/api/3/attachment/content/x?size=300000&chunked=1", oauth,
                        conn=conn)
        statuses.append(d.status)
        statuses.append(up.api_request("PUT", ex + "/rest/api/3/anything", oauth, b"z" * 100000,
                                       conn=conn).status)
        statuses.append(up.api_request("GET", ex + "/rest/api/3/issue/NOPE-1", oauth,
                                       conn=conn).status)
        statuses.append(up.api_request("GET", ex + "/rest/api/3/myself", None, conn=conn).status)
        statuses.append(up.api_request("DELETE", ex + "/rest/api/3/issue/K-1", oauth,
                                       conn=conn).status)
    finally:
        conn.close()
    expect_eq(statuses, [200, 201, 200, 403, 200, 200, 200, 200, 404, 401, 204], "statuses")
    entries = up.api_log(since)
    expect_eq(len({e["connection"] for e in entries}), 1, "one connection")
    expect_eq([e["request_on_connection"] for e in entries], list(range(1, 12)), "request numbers")


def t_api_uploads(up):
    g, cid = api_seed(up)
    ex, oauth = f"/ex/jira/{cid}", bearer(g["access_token"])
    key = up.api_request("POST", ex + "/rest/api/3/issue", oauth,
                         {"fields": {"summary": "s", "project": {"key": "UP"}}}).json()["key"]
    path = f"{ex}/rest/api/3/issue/{key}/attachments"
    parts = [("file", "a.txt", b"hello", "text/plain"), ("file", "b.bin", Blob("b", 100000)),
             ("comment", None, "a plain field"), ("file", "résumé ü.txt", b"\r\n--not-a-boundary")]
    for chunked in (False, True):
        since = up.last_seq()
        r = up.upload(path, parts, oauth, chunked=chunked)
        expect_eq(r.status, 200, f"upload (chunked={chunked})")
        got = [{k: a[k] for k in ("filename", "size", "sha256")} for a in r.json()]
        expect_eq(got, r.multipart.expected, "filename, size, sha256 of each file part")
        expect_eq(r.json()[0]["mimeType"], "text/plain", "mimeType")
        entry = up.api_log(since)[-1]
        up_info = entry["upload"]
        expect_eq((up_info["bytes"], up_info["sha256"], up_info["complete"], up_info["chunked"]),
                  (r.multipart.length, r.multipart.sha256(), True, chunked), "log: upload")
        expect_eq([p["name"] for p in up_info["parts"]], ["file", "file", "comment", "file"], "parts")
        expect_eq((entry["body_size"], entry["body_chunked"], entry["raw_body"]),
                  (r.multipart.length, chunked, None), "log: streamed body")
    issue = up.api_request("GET", f"{ex}/rest/api/3/issue/{key}", oauth).json()
    expect_eq(len(issue["fields"]["attachment"]), 6, "attachments listed on the issue")
    att = r.json()[1]
    meta = up.api_request("GET", f"{ex}/rest/api/3/attachment/{att['id']}", oauth).json()
    expect_eq((meta["filename"], meta["size"]), ("b.bin", 100000), "attachment metadata")
    r = up.upload(path, parts, oauth, xsrf=False)
    expect_eq((r.status, r.body), (403, b"XSRF check failed"), "X-Atlassian-Token required")
    r = up.api_request("POST", path, oauth, b"not multipart",
                       headers={"X-Atlassian-Token": "no-check", "Content-Type": "text/plain"})
    expect_eq(r.status, 415, "not multipart")
    mp = MultipartBody([("file", "x", b"data")])
    cut = b"".join(mp.chunks())[:-10]
    r = up.api_request("POST", path, oauth, cut, headers={"X-Atlassian-Token": "no-check",
                                                          "Content-Type": mp.content_type})
    expect_eq((r.status, up.api_log(settle=True)[-1]["error"]), (400, "malformed_multipart"), "cut multipart")
    r = up.upload(path, [("comment", None, "x")], oauth)
    expect_eq(r.status, 400, "no file part")
    r = up.upload(path, [("file", "e.txt", Blob("e", 70000))], oauth,
                  headers={"Expect": "100-continue"})
    expect_eq((r.status, r.json()[0]["size"]), (200, 70000), "Expect: 100-continue")
    # Confluence
    page = up.api_request("POST", "/site/acme/wiki/rest/api/content", api_token_auth(EMAIL, API_TOKEN),
                          {"title": "P", "space": {"key": "S"}}).json()["id"]
    cpath = f"/site/acme/wiki/rest/api/content/{page}/child/attachment"
    r = up.upload(cpath, [("file", "c.pdf", Blob("c", 5000), "application/pdf"),
                          ("minorEdit", None, "true")], api_token_auth(EMAIL, API_TOKEN))
    expect_eq(r.status, 200, "Confluence upload")
    res = r.json()["results"]
    expect_eq([(a["title"], a["size"], a["sha256"], a["mediaType"]) for a in res],
              [("c.pdf", 5000, Blob("c", 5000).sha256(), "application/pdf")], "Confluence result")
    r = up.api_request("GET", cpath, api_token_auth(EMAIL, API_TOKEN))
    expect_eq(r.json()["size"], 1, "Confluence attachment list")
    # a big upload is streamed: the server's peak RSS must not grow by the body's size
    pid = getattr(getattr(up, "proc", None), "pid", None)
    before = _vm_hwm_kib(pid) if pid else None
    big = 64 * 1024 * 1024
    r = up.upload(path, [("file", "big.bin", Blob("big", big))], oauth)
    expect_eq((r.status, r.json()[0]["size"], r.json()[0]["sha256"]),
              (200, big, Blob("big", big).sha256()), "64 MiB upload")
    if before is not None:
        grown = _vm_hwm_kib(pid) - before
        expect(grown < 24 * 1024, f"server peak RSS grew by {grown} KiB for a 64 MiB upload")
        print(f"     64 MiB upload: server peak RSS grew by {grown} KiB", flush=True)
    s = up.stats()
    expect_eq((s["uploads"], s["upload_bytes"] > big), (5, True), "upload stats")
    # over the cap: 413 (the connection is closed, the client may see only that)
    up.config(max_upload_bytes=1024 * 1024)
    for chunked in (False, True):
        try:
            r = up.upload(path, [("file", "c", Blob("c", 3 * 1024 * 1024))], oauth, chunked=chunked)
            expect_eq(r.status, 413, "over the cap")
        except (OSError, http.client.HTTPException):
            pass
        entry = up.wait_for_log(lambda e: e["path"] == path and e["status"] == 413
                                and e["body_chunked"] == chunked, "the 413")
        expect(entry["body_size"] <= 1024 * 1024, "stopped reading at the cap", entry["body_size"])
    up.config(max_upload_bytes=200 * 1024 * 1024)
    expect_eq(up.api_request("GET", ex + "/rest/api/3/myself", oauth).status, 200, "still serving")


def t_api_downloads(up):
    g, cid = api_seed(up)
    ex, oauth = f"/ex/jira/{cid}", bearer(g["access_token"])
    size = 5 * 1000 * 1000 + 7
    url = f"{ex}/rest/api/3/attachment/content/blob1?size={size}"
    d = up.download(url, oauth)
    expect_eq((d.status, d.size, d.headers["content-length"], d.complete), (200, size, str(size), True),
              "download")
    expect_eq(d.sha256, download_sha256("blob1", size), "content")
    entry = up.api_log(settle=True)[-1]
    expect_eq((entry["response_bytes"], entry["response_sha256"]), (size, d.sha256), "log")
    d = up.download(url + "&chunked=1", oauth)
    expect_eq((d.headers.get("transfer-encoding"), d.size, d.sha256, d.complete),
              ("chunked", size, download_sha256("blob1", size), True), "chunked download")
    d = up.download(url + "&cut=1000000", oauth)
    expect_eq((d.status, d.complete, d.size <= 1000000), (200, False, True), "cut short")
    expect_eq(up.api_log(settle=True)[-1]["delivered"], False, "logged as not delivered")
    r = up.request("HEAD", url, headers={"Authorization": oauth})
    expect_eq((r.status, r.headers["content-length"], r.body), (200, str(size), b""), "HEAD")
    started = time.monotonic()
    d = up.download(f"{ex}/rest/api/3/attachment/content/s?size=300000&chunk_delay=0.1", oauth)
    expect(time.monotonic() - started >= 0.4 and d.size == 300000, "chunk_delay trickles")
    d = up.download("/site/acme/wiki/download/attachments/123/file.bin?size=1000",
                    api_token_auth(EMAIL, API_TOKEN))
    expect_eq(d.sha256, download_sha256("123/file.bin", 1000), "Confluence download")
    r = up.upload(f"{ex}/rest/api/3/issue/X-1/attachments", [("file", "f", Blob("f", 4321))], oauth)
    aid = r.json()[0]["id"]
    d = up.download(f"{ex}/rest/api/3/attachment/content/{aid}", oauth)
    expect_eq((d.size, d.headers["content-disposition"]), (4321, 'attachment; filename="f"'),
              "a known attachment's size and name")
    expect_eq(up.download(f"{ex}/rest/api/3/attachment/content/x", oauth).size, 1024 * 1024,
              "default size")
    expect_eq(up.api_request("GET", f"{ex}/rest/api/3/attachment/content/x?size=-1", oauth).status,
              400, "bad size")
    expect_eq(download_bytes("z", 10, offset=65537), download_bytes("z", 10), "period")
    s = up.stats()
    expect_eq(s["downloads"], 8, "downloads counted")


def t_api_faults(up):
    g, cid = api_seed(up)
    ex_me, oauth = f"/ex/jira/{cid}/rest/api/3/myself", bearer(g["access_token"])
    site_me, basic = "/site/acme/rest/api/2/myself", api_token_auth(EMAIL, API_TOKEN)
    up.fault("invalid_token", count=2, target="api_ex")
    got = [up.api_request("GET", ex_me, oauth) for _ in range(3)]
    expect_eq([r.status for r in got], [401, 401, 200], "401 twice with a valid token, then 200")
    expect('error="invalid_token"' in got[0].headers["www-authenticate"], "challenge", got[0].headers)
    e = up.api_log(settle=True)[-2]
    expect_eq((e["fault"], e["auth"]["valid"], e["status"]), ("invalid_token", True, 401), "logged")
    up.fault("invalid_token", target="api")
    r = up.api_request("GET", site_me, basic)
    expect_eq((r.status, r.headers["www-authenticate"]), (401, 'Basic realm="fake-upstream"'),
              "target api hits /site too, with its own challenge")
    up.fault("rate_limited", target="api_site", retry_after=3)
    expect_eq(up.api_request("GET", ex_me, oauth).status, 200, "api_site fault leaves /ex alone")
    r = up.api_request("GET", site_me, basic)
    expect_eq((r.status, r.headers.get("retry-after")), (429, "3"), "429 + Retry-After")
    up.fault("unavailable_503", target="api", retry_after=2)
    r = up.api_request("GET", "/dc/rest/api/2/myself", bearer(PAT))
    expect_eq((r.status, r.headers.get("retry-after"), r.body.startswith(b"<html>")),
              (503, "2", True), "503 HTML + Retry-After")
    up.fault("bad_gateway_502", target="api")
    r = up.api_request("GET", ex_me, oauth)
    expect_eq((r.status, r.headers["content-type"].startswith("text/html")), (502, True), "502 HTML")
    up.fault("server_error_500", target="api", path=r"/attachments$")
    expect_eq(up.api_request("GET", ex_me, oauth).status, 200, "path filter: other paths pass")
    conn = up.connection()
    try:
        r = up.upload(f"/ex/jira/{cid}/rest/api/3/issue/A-1/attachments",
                      [("file", "f", Blob("f", 200000))], oauth, conn=conn)
        expect_eq(r.status, 500, "path filter: the upload gets the fault")
        expect_eq(up.api_request("GET", ex_me, oauth, conn=conn).status, 200,
                  "the faulted upload's body was drained: the connection goes on")
    finally:
        conn.close()
    expect_eq(up.api_log(settle=True)[-2]["body_size"], r.multipart.length, "drained body counted")
    up.fault("rate_limited", target="api", method="POST", count=None)
    expect_eq(up.api_request("GET", ex_me, oauth).status, 200, "method filter: GET passes")
    expect_eq(up.api_request("POST", ex_me.replace("myself", "x"), oauth, {}).status, 429, "POST")
    up.clear_faults()
    up.fault("slow", target="api_dc", delay=0.6)
    started = time.monotonic()
    r = up.api_request("GET", "/dc/rest/api/2/myself", bearer(PAT))
    expect(r.status == 200 and time.monotonic() - started >= 0.6, "slow, then processed")
    up.config(api_latency=0.3)
    started = time.monotonic()
    expect_eq(up.api_request("GET", ex_me, oauth).status, 200, "api_latency")
    expect(time.monotonic() - started >= 0.3, "api_latency waited")
    up.config(api_latency=0)
    up.fault("html_200", target="api")
    r = up.api_request("GET", ex_me, oauth)
    expect_eq((r.status, b"password" in r.body), (200, True), "SSO page")
    up.fault("drop", target="api")
    try:
        up.api_request("GET", ex_me, oauth)
    except (http.client.HTTPException, OSError):
        pass
    else:
        raise AssertionError("drop answered")
    try:
        up.fault("truncated_json", target="api")
    except ControlError as e:
        expect_eq(e.status, 400, "token-only mode refused for api")
    else:
        raise AssertionError("accepted truncated_json for api")
    s = up.stats()
    expect_eq(s["api_responses_by_prefix"]["ex"]["401"], 2, "per-prefix responses")
    expect_eq(s["faults_injected"]["invalid_token"], 3, "faults_injected")


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
    expect_eq(up.log(settle=True)[-1]["refresh_token_status"], "previous_within_window", "status")


def t_drop(up):
    g = seed(up)
    before = up.grant(g["grant_id"])
    for rst in (False, True):
        since = up.last_seq()
        up.fault("drop", rst=rst)
        try:
            r = refresh(up, g["refresh_token"])
        except (http.client.HTTPException, OSError):
            pass
        else:
            raise AssertionError(f"drop(rst={rst}) answered {r!r}")
        entry = up.wait_for_log(lambda e: e.get("fault"), "the dropped request", since=since)
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
    since = up.last_seq()
    up.fault("drop_after_rotate")
    try:
        refresh(up, g["refresh_token"])
    except (http.client.HTTPException, OSError):
        pass
    else:
        raise AssertionError("drop_after_rotate answered")
    entry = up.wait_for_log(lambda e: e.get("fault"), "the dropped request", since=since)
    expect_eq(entry["fault"], "drop_after_rotate", "fault")
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
    gid = up.log(settle=True)[-1]["grant_id"]
    expect_eq(up.grant(gid)["current_refresh_token"], body["refresh_token"], "new grant")
    expect_oauth_error(up.token_request(dict(params, code_verifier=verifier), auth=auth),
                       400, "invalid_grant")
    expect_eq(up.grant(gid)["revoked_reason"], "code_reuse", "code reuse revokes")


# -- authorization endpoint, device flow, discovery, MCP, registration, revocation

REDIRECT = "http://127.0.0.1:8765/callback"
REDIRECT_Q = "http://127.0.0.1:8765/cb?profile=jira"


def _authorize_ok(up, client_id, redirect_uri, **kw):
    r = up.authorize(client_id, redirect_uri, **kw)
    expect_eq(r.status, 302, "authorize status")
    expect_eq(r.headers.get("cache-control"), "no-store", "authorize cache-control")
    return r.location, redirect_params(r.location)


def _description(reply):
    return reply.json().get("error_description", "")


def _bearer_get(up, path, token):
    return up.request("GET", path, headers={"Authorization": "Bearer " + token})


def t_client_id_metadata_documents(up, cert_file, key_file):
    """An https client_id is a client ID metadata document when the server supports them:
    fetched over TLS at /authorize, checked (its own URL as client_id, the request's redirect
    URI listed, a public client), refused with an error page otherwise."""
    seed(up)
    docs = DocumentServer(cert_file, key_file)
    try:
        url = docs.url("/client.json")
        good = {"client_id": url, "client_name": "tokend", "redirect_uris": [REDIRECT],
                "grant_types": ["authorization_code", "refresh_token"], "token_endpoint_auth_method": "none"}
        docs.serve("/client.json", good)
        r = up.authorize(url, REDIRECT, state="s")
        expect_eq(r.status, 400, "unsupported: an unknown client")
        expect_eq(docs.fetches("/client.json"), [], "unsupported: nothing fetched")
        up.config(client_id_metadata_documents=True)
        expect_eq(up.discovery().json().get("client_id_metadata_document_supported"), True, "advertised")
        verifier, challenge = make_pkce()
        loc, got = _authorize_ok(up, url, REDIRECT, state="s", code_challenge=challenge)
        expect_eq(docs.fetches("/client.json"), ["fake_upstream"], "fetched once, by the server")
        expect_eq(up.log(settle=True)[-1].get("client_metadata_document"), {"url": url, "outcome": "accepted"}, "log")
        body = expect_token_set(up.exchange_code(got["code"], REDIRECT, url, code_verifier=verifier))
        expect_eq((up.log(settle=True)[-1]["client_id"], up.log(settle=True)[-1]["client_auth"]), (url, "none"), "a public client")
        expect_eq(_bearer_get(up, "/me", body["access_token"]).status, 200, "its token works")
        refused = {
            "another redirect": (dict(good, redirect_uris=["https://elsewhere.example/cb"]),
                                 "does not list the redirect_uri"),
            "another client_id": (dict(good, client_id=docs.url("/other.json")), "names another client_id"),
            "a secret": (dict(good, client_secret="s3cret"), "holds a client_secret"),
            "a confidential client": (dict(good, token_endpoint_auth_method="client_secret_basic"),
                                      "token_endpoint_auth_method"),
            "not JSON": (b"<html>", "is not JSON"),
        }
        for what, (doc, says) in refused.items():
            docs.serve("/client.json", doc)
            r = up.authorize(url, REDIRECT, state="s", code_challenge=challenge)
            expect_eq(r.status, 400, f"{what}: shown, not redirected")
            expect(says in r.body.decode(errors="replace"), f"{what}: the page says why", r.body[:300])
            expect(says in up.log(settle=True)[-1]["client_metadata_document"]["outcome"], f"{what}: logged",
                   up.log(settle=True)[-1].get("client_metadata_document"))
        r = up.authorize(docs.url("/missing.json"), REDIRECT, state="s")
        expect_eq(r.status, 400, "a missing document")
        expect("could not be fetched (HTTP 404)" in r.body.decode(), "404 described", r.body[:300])
        expect_eq(up.stats()["metadata_document_refusals"], len(refused) + 1, "refusals counted")
    finally:
        docs.stop()


def t_code_flow(up):
    seed(up)
    up.add_client(CID, SECRET, "client_secret_basic", redirect_uris=[REDIRECT, REDIRECT_Q])
    verifier, challenge = make_pkce()
    loc, got = _authorize_ok(up, CID, REDIRECT, state="st-1", scope="read:jira-work offline_access",
                             code_challenge=challenge, audience="api.atlassian.com",
                             prompt="consent", resource="https://api.example.test/")
    expect(loc.startswith(REDIRECT + "?code=code-"), "Location", loc)
    expect_eq(got["state"], "st-1", "state echoed")
    info = up.log(settle=True)[-1]["authorize"]
    for k, v in (("audience", "api.atlassian.com"), ("prompt", "consent"), ("state", "st-1"),
                 ("code_challenge", challenge), ("code_challenge_method", "S256"),
                 ("resource", "https://api.example.test/")):
        expect_eq(info["params"].get(k), v, f"log: {k}")
    expect_eq(info["outcome"], "code", "log: outcome")
    code = got["code"]
    r = up.exchange_code(code, REDIRECT, CID, SECRET, code_verifier=make_pkce()[0])
    expect_oauth_error(r, 400, "invalid_grant")
    expect("does not match" in _description(r), "PKCE mismatch described", r.body)
    r = up.exchange_code(code, REDIRECT, CID, SECRET)
    expect_oauth_error(r, 400, "invalid_grant")
    expect("code_verifier required" in _description(r), "missing verifier described", r.body)
    expect_oauth_error(up.exchange_code(code, REDIRECT_Q, CID, SECRET, code_verifier=verifier),
                       400, "invalid_grant")
    expect_oauth_error(up.exchange_code(code, REDIRECT, CID, SECRET, code_verifier=verifier,
                                        resource="https://elsewhere.example/"), 400, "invalid_target")
    body = expect_token_set(up.exchange_code(code, REDIRECT, CID, SECRET, code_verifier=verifier,
                                             resource="https://api.example.test/", as_json=True))
    expect_eq(body["scope"], "read:jira-work offline_access", "scope")
    gid = up.log(settle=True)[-1]["grant_id"]
    g = up.grant(gid)
    expect_eq((g["source"], g["resource"], g["scope"]),
              ("code", "https://api.example.test/", "read:jira-work offline_access"), "grant")
    expect_eq(_bearer_get(up, "/me", body["access_token"]).status, 200, "access token works")
    b2 = expect_token_set(refresh(up, body["refresh_token"]))      # the usual grant machinery
    r = up.exchange_code(code, REDIRECT, CID, SECRET, code_verifier=verifier)
    expect_oauth_error(r, 400, "invalid_grant")
    expect("already used" in _description(r), "reuse described", r.body)
    g = up.grant(gid)
    expect_eq((g["alive"], g["revoked_reason"]), (False, "code_reuse"), "reused code revokes the grant")
    expect_eq(_bearer_get(up, "/me", b2["access_token"]).status, 401, "its access tokens die")
    expect_oauth_error(refresh(up, b2["refresh_token"]), 403, "invalid_grant")
    loc, got = _authorize_ok(up, CID, REDIRECT_Q, state="s2", code_challenge=challenge,
                             path="/oauth/authorize")
    expect(loc.startswith(REDIRECT_Q + "&code="), "appended with & to a query", loc)
    up.add_client("other", "other-secret", "client_secret_post")
    expect_oauth_error(up.exchange_code(got["code"], REDIRECT_Q, "other", "other-secret",
                                        "client_secret_post", code_verifier=verifier),
                       400, "invalid_grant")
    up.advance_clock(600)
    r = up.exchange_code(got["code"], REDIRECT_Q, CID, SECRET, code_verifier=verifier)
    expect_oauth_error(r, 400, "invalid_grant")
    expect("expired" in _description(r), "expiry described", r.body)
    up.config(code_lifetime=30)
    _, got = _authorize_ok(up, CID, REDIRECT, code_challenge=challenge)
    up.advance_clock(31)
    expect_oauth_error(up.exchange_code(got["code"], REDIRECT, CID, SECRET, code_verifier=verifier),
                       400, "invalid_grant")
    expect(up.stats()["authorizations"] >= 3, "authorizations counted")


def _page_error(up, client_id, redirect_uri, what, **kw):
    r = up.authorize(client_id, redirect_uri, **kw)
    expect_eq(r.status, 400, what)
    expect("location" not in r.headers, what + ": no redirect", r.headers)
    expect(r.headers.get("content-type", "").startswith("text/html"), what + ": HTML", r.headers)


def _redirect_error(up, error, *args, **kw):
    loc, got = _authorize_ok(up, *args, **kw)
    expect_eq(got.get("error"), error, "redirected error")
    expect("code" not in got, "no code with an error", got)
    return loc, got


def t_authorize_errors(up):
    up.reset()
    up.add_client("reg", None, "none", redirect_uris=[REDIRECT])
    up.add_client("any", None, "none")
    verifier, challenge = make_pkce()
    kw = {"state": "s", "code_challenge": challenge}
    _page_error(up, "nobody", REDIRECT, "unknown client", **kw)
    _page_error(up, None, REDIRECT, "no client_id", **kw)
    _page_error(up, "reg", "http://127.0.0.1:9999/other", "unregistered redirect_uri", **kw)
    for bad in ("http://example.com/cb", "ftp://127.0.0.1/cb", REDIRECT + "#frag", "cb"):
        _page_error(up, "any", bad, f"redirect_uri {bad}", **kw)
    for good in ("http://[::1]:1/cb", "http://localhost:2/cb", "http://127.1.2.3/cb",
                 "https://app.example.com/cb"):
        loc, got = _authorize_ok(up, "any", good, **kw)
        expect(loc.startswith(good + "?code="), good, loc)
    loc, got = _authorize_ok(up, "reg", None, **kw)
    expect(loc.startswith(REDIRECT + "?code="), "the one registered redirect_uri is the default", loc)
    _, got = _redirect_error(up, "invalid_request", "reg", REDIRECT, state="s",
                             code_challenge=verifier, code_challenge_method="plain")
    expect_eq(got.get("state"), "s", "state on errors")
    _redirect_error(up, "invalid_request", "reg", REDIRECT, state="s", code_challenge=challenge,
                    code_challenge_method=None)
    _redirect_error(up, "invalid_request", "reg", REDIRECT, code_challenge="short",
                    code_challenge_method="S256")
    r = up.request("GET", "/authorize?" + urllib.parse.urlencode(
        {"response_type": "token", "client_id": "reg", "redirect_uri": REDIRECT, "state": "s"}))
    expect_eq(redirect_params(r.location).get("error"), "unsupported_response_type", "response_type")
    up.config(consent="deny")
    loc, got = _redirect_error(up, "access_denied", "reg", REDIRECT, **kw)
    expect(loc.endswith("?error=access_denied&error_description=The+user+denied+consent&state=s"),
           "deny Location", loc)
    expect_eq(up.log(settle=True)[-1]["authorize"]["outcome"], "access_denied", "log outcome")
    up.config(consent="approve", pkce_required=True)
    _redirect_error(up, "invalid_request", "reg", REDIRECT, state="s")
    _authorize_ok(up, "reg", REDIRECT, **kw)
    up.config(pkce_required=False)
    _, got = _authorize_ok(up, "reg", REDIRECT, state="s")
    expect_oauth_error(up.exchange_code(got["code"], REDIRECT, "reg", code_verifier=verifier),
                       400, "invalid_grant")     # a verifier without a challenge: downgrade refused
    expect_token_set(up.exchange_code(got["code"], REDIRECT, "reg"))
    s = up.stats()
    expect_eq(s["consent_denied"], 1, "consent_denied")
    expect_eq(s["requests_by_target"].get("authorize"), 20, "requests_by_target")


def t_offline_access(up):
    up.reset()
    up.add_client("pub", None, "none", redirect_uris=[REDIRECT])
    body = up.code_login("pub", REDIRECT, scope="read:jira-work")
    expect("refresh_token" in body, "default: refresh token without offline_access", body)
    up.config(require_offline_access=True)
    body = up.code_login("pub", REDIRECT, scope="read:jira-work")
    expect("refresh_token" not in body and body["access_token"].startswith("at-"),
           "no refresh token without offline_access", body)
    body = up.code_login("pub", REDIRECT, scope="read:jira-work offline_access")
    expect(body.get("refresh_token", "").startswith("rt-"), "refresh token with offline_access", body)


def t_device_flow(up):
    up.reset()
    up.add_client("dev", None, "none")
    up.config(device_interval=0, device_slow_down_increment=0.5)
    r = up.device_authorize("dev", scope="read:jira-work offline_access", resource=up.mcp_url)
    expect_eq(r.status, 200, "device authorization")
    expect_eq(r.headers.get("cache-control"), "no-store", "cache-control")
    d = r.json()
    uc = d["user_code"]
    expect(re.fullmatch(r"[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}", uc), "user_code", uc)
    expect(d["device_code"].startswith("dc-"), "device_code", d)
    expect_eq(d["verification_uri"], up.base_url + "/device", "verification_uri")
    expect_eq(d["verification_uri_complete"], f"{up.base_url}/device?user_code={uc}",
              "verification_uri_complete")
    expect_eq((d["expires_in"], d["interval"]), (600, 0), "expires_in, interval")
    expect_eq(up.request("GET", "/device?user_code=" + uc).status, 200, "verification page")
    dc = d["device_code"]
    poll = lambda: up.device_poll(dc, "dev")   # noqa: E731
    expect_oauth_error(poll(), 400, "authorization_pending")
    expect_oauth_error(poll(), 400, "authorization_pending")          # interval 0: any spacing
    up.force_slow_down(uc)
    expect_oauth_error(poll(), 400, "slow_down")                      # forced, one-shot
    expect_oauth_error(poll(), 400, "slow_down")                      # too soon: 0.5 s required now
    time.sleep(1.05)                                                  # 1.0 s required now
    expect_oauth_error(poll(), 400, "authorization_pending")
    expect_oauth_error(up.device_poll(dc, "nobody"), 401, "invalid_client")
    up.approve_device(uc.lower().replace("-", ""))                    # case and dash insensitive
    time.sleep(1.05)
    body = expect_token_set(poll())
    expect_oauth_error(poll(), 400, "invalid_grant")                  # one-shot
    rec = up.device(uc)
    expect_eq((rec["status"], rec["polls"], rec["slow_downs"], rec["interval"]),
              ("consumed", 7, 2, 1.0), "device record")
    expect_eq(rec["answers"], ["authorization_pending", "authorization_pending", "slow_down",
                               "slow_down", "authorization_pending", "tokens", "invalid_grant"],
              "answers")
    sp = rec["poll_spacings"]
    expect(max(sp[:3]) < 0.5 and min(sp[3:5]) >= 1.0, "spacing grew after slow_down", sp)
    expect_eq(len(rec["poll_times"]), 7, "poll times")
    g = up.grant(rec["grant_id"])
    expect_eq((g["source"], g["resource"], g["client_id"]), ("device", up.mcp_url, "dev"), "grant")
    expect_eq(up.mcp_request(body["access_token"]).status, 200, "device token is bound to the MCP URL")
    entry = [e for e in up.log() if e.get("device") and e["device"].get("answer") == "tokens"][-1]
    expect_eq((entry["device"]["user_code"], entry["device"]["poll"]), (uc, 6), "log")

    up.config(device_interval=1, device_slow_down_increment=5)      # the RFC's 5 s
    d2 = up.device_authorize("dev").json()
    expect_eq(d2["interval"], 1, "interval announced")
    expect_oauth_error(up.device_poll(d2["device_code"], "dev"), 400, "authorization_pending")
    expect_oauth_error(up.device_poll(d2["device_code"], "dev"), 400, "slow_down")
    expect_eq(up.device(d2["user_code"])["interval"], 6, "interval grew by 5 s")
    d3 = up.device_authorize("dev").json()
    up.deny_device(d3["user_code"])
    expect_oauth_error(up.device_poll(d3["device_code"], "dev"), 400, "access_denied")
    try:
        up.approve_device(d3["user_code"])
    except ControlError as e:
        expect_eq(e.status, 409, "approve after deny")
    else:
        raise AssertionError("approved a denied device code")
    d4 = up.device_authorize("dev").json()
    up.advance_clock(600)
    expect_oauth_error(up.device_poll(d4["device_code"], "dev"), 400, "expired_token")
    up.config(device_interval=0, device_auto_approve_after=2)
    d5 = up.device_authorize("dev").json()
    expect_oauth_error(up.device_poll(d5["device_code"], "dev"), 400, "authorization_pending")
    expect_token_set(up.device_poll(d5["device_code"], "dev"))
    expect_eq(up.device(d5["user_code"])["approved_by"], "auto", "auto-approved")
    up.config(device_auto_approve_after=0, device_slow_down_increment=0.2)
    up.force_slow_down()                                   # armed before the device code exists
    up.add_client("conf", SECRET, "client_secret_basic")
    d6 = up.device_authorize("conf", SECRET).json()
    expect_oauth_error(up.device_poll(d6["device_code"], "conf", SECRET), 400, "slow_down")
    up.approve_device()                                    # the newest pending one
    time.sleep(0.25)
    expect_token_set(up.device_poll(d6["device_code"], "conf", SECRET))
    expect_oauth_error(up.device_poll(d6["device_code"], "dev"), 400, "invalid_grant")  # other client
    expect_eq(up.device_authorize("conf", "wrong").status, 401, "device endpoint authenticates")
    try:
        up.device("ZZZZ-ZZZZ")
    except ControlError as e:
        expect_eq(e.status, 404, "unknown user code")
    s = up.stats()
    expect_eq((s["device_authorizations"], s["slow_downs"], s["device_grants"]), (6, 4, 3), "stats")
    expect_eq(s["device_polls"], 15, "device_polls")


def t_discovery(up):
    up.reset()
    base = up.base_url
    cases = [("oauth", False, None, base), ("oauth", True, None, base + "/tenant"),
             ("oidc", False, None, base), ("oidc", True, None, base + "/tenant"),
             ("oidc", True, "insert", base + "/tenant")]
    for kind, tenant, form, issuer in cases:
        r = up.discovery(kind, tenant, form)
        expect_eq(r.status, 200, f"{kind} tenant={tenant}")
        doc = r.json()
        expect_eq(doc["issuer"], issuer, "issuer")
        for k, v in (("authorization_endpoint", base + "/authorize"),
                     ("token_endpoint", base + "/oauth/token"),
                     ("device_authorization_endpoint", base + "/oauth/device/code"),
                     ("revocation_endpoint", base + "/oauth/revoke"),
                     ("registration_endpoint", base + "/register"),
                     ("userinfo_endpoint", base + "/me"),
                     ("code_challenge_methods_supported", ["S256"]),
                     ("response_types_supported", ["code"]),
                     ("scopes_supported", ["openid", "profile", "email", "offline_access",
                                           "read:jira-work"])):
            expect_eq(doc.get(k), v, k)
        expect_eq(set(doc["grant_types_supported"]),
                  {"authorization_code", "refresh_token", DEVICE_GRANT}, "grant types")
        expect_eq(set(doc["token_endpoint_auth_methods_supported"]),
                  {"client_secret_basic", "client_secret_post", "none"}, "auth methods")
        expect(("jwks_uri" in doc) == (kind == "oidc"), "jwks_uri only in OIDC", doc)
    expect_eq(up.request("GET", "/.well-known/jwks.json").json(), {"keys": []}, "jwks")
    expect_eq(up.request("GET", "/tenant/.well-known/oauth-authorization-server").status, 404,
              "RFC 8414 is path-insert, not path-append")
    expect_eq(up.request("GET", "/.well-known/oauth-authorization-server/other").status, 404,
              "unknown tenant")
    for mode, oauth, oidc in (("oauth_only", 200, 404), ("oidc_only", 404, 200), ("none", 404, 404)):
        up.config(discovery=mode)
        for tenant in (False, True):
            expect_eq(up.discovery("oauth", tenant).status, oauth, f"{mode}: oauth")
            expect_eq(up.discovery("oidc", tenant).status, oidc, f"{mode}: oidc")
    up.config(discovery="both", omit_endpoints=["device_authorization_endpoint", "revocation_endpoint"],
              scopes_supported=["read:me"], issuer_override="https://evil.example")
    doc = up.discovery("oauth").json()
    expect("device_authorization_endpoint" not in doc and "revocation_endpoint" not in doc,
           "omitted", doc)
    expect(DEVICE_GRANT not in doc["grant_types_supported"], "no device grant type", doc)
    expect_eq((doc["scopes_supported"], doc["issuer"]), (["read:me"], "https://evil.example"),
              "scopes_supported, issuer_override")
    try:
        up.config(omit_endpoints=["nope"])
    except ControlError as e:
        expect_eq(e.status, 400, "unknown endpoint name")
    else:
        raise AssertionError("accepted omit_endpoints=['nope']")
    up.fault("unavailable_503", target="discovery")
    expect_eq(up.discovery("oidc").status, 503, "discovery fault")


def t_mcp_resource(up):
    up.reset()
    up.add_client("mcp-client", None, "none")
    challenge = f'Bearer resource_metadata="{up.prm_url}"'
    r = up.mcp_request()
    expect_eq((r.status, r.headers.get("www-authenticate")), (401, challenge), "challenge")
    for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
        doc = up.request("GET", path).json()
        expect_eq((doc["resource"], doc["authorization_servers"], doc["bearer_methods_supported"]),
                  (up.mcp_url, [up.base_url], ["header"]), path)
        expect(isinstance(doc["scopes_supported"], list), "scopes_supported", doc)
    body = up.code_login("mcp-client", REDIRECT, scope="openid offline_access", resource=up.mcp_url)
    r = up.mcp_request(body["access_token"])
    expect_eq((r.status, r.json()), (200, {"jsonrpc": "2.0", "id": 1, "result": {"ok": True}}), "MCP")
    r = up.mcp_request(body["access_token"], method="GET")
    expect_eq((r.status, r.json()), (200, {"jsonrpc": "2.0", "result": {"ok": True}}), "any method")
    r = up.token_request({"grant_type": "refresh_token", "refresh_token": body["refresh_token"],
                          "client_id": "mcp-client"})
    expect_eq(up.mcp_request(expect_token_set(r)["access_token"]).status, 200,
              "refreshed tokens keep the resource")
    for what, grant in (("no resource", up.add_grant("mcp-client")),
                        ("another resource", up.add_grant("mcp-client",
                                                          resource="https://other.example/mcp"))):
        r = up.mcp_request(grant["access_token"])
        h = r.headers.get("www-authenticate", "")
        expect_eq(r.status, 401, what)
        expect(h.startswith('Bearer error="invalid_token"') and h.endswith(
            f'resource_metadata="{up.prm_url}"'), what + ": challenge", h)
    expect_eq(up.mcp_request("at-unknown").status, 401, "unknown token")
    listed = up.add_grant("mcp-client", resource=["https://x.example/", up.mcp_url])
    expect_eq(up.mcp_request(listed["access_token"]).status, 200, "one of several resources")
    up.config(prm_via_challenge_only=True, prm_authorization_server="tenant")
    for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
        expect_eq(up.request("GET", path).status, 404, path + " hidden")
    h = up.mcp_request().headers["www-authenticate"]
    url = h.split('resource_metadata="', 1)[1].rstrip('"')
    expect(url != up.prm_url and url.startswith(up.base_url + "/"), "challenge points elsewhere", h)
    doc = up.request("GET", urllib.parse.urlsplit(url).path).json()
    expect_eq((doc["resource"], doc["authorization_servers"]), (up.mcp_url, [up.tenant_issuer]),
              "PRM via the challenge, tenant issuer")
    up.revoke_grant(listed["grant_id"])
    expect_eq(up.mcp_request(listed["access_token"]).status, 401, "revoked")


def t_dynamic_registration(up):
    up.reset()
    r = up.register({"redirect_uris": [REDIRECT], "client_name": "tokend",
                     "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"]})
    expect_eq(r.status, 201, "registered")
    pub = r.json()
    expect(pub["client_id"].startswith("dcr-") and "client_secret" not in pub, "public client", pub)
    expect_eq((pub["client_name"], pub["redirect_uris"], pub["token_endpoint_auth_method"]),
              ("tokend", [REDIRECT], "none"), "metadata echoed")
    expect(isinstance(pub["client_id_issued_at"], int), "client_id_issued_at", pub)
    r = up.register({"redirect_uris": ["http://localhost:9/cb", "https://app.example/cb"],
                     "token_endpoint_auth_method": "client_secret_basic"})
    conf = r.json()
    expect_eq(r.status, 201, "registered")
    expect(conf["client_secret"].startswith("cs-") and conf["client_secret_expires_at"] == 0,
           "confidential client", conf)
    clients = {c["client_id"]: c for c in up.clients()}
    expect_eq((clients[pub["client_id"]]["registered"], clients[pub["client_id"]]["redirect_uris"]),
              (True, [REDIRECT]), "listed")
    tokens = up.code_login(conf["client_id"], "http://localhost:9/cb", conf["client_secret"])
    expect_token_set(up.token_request({"grant_type": "refresh_token",
                                       "refresh_token": tokens["refresh_token"]},
                                      auth=(conf["client_id"], conf["client_secret"])))
    up.code_login(pub["client_id"], REDIRECT)
    _page_error(up, pub["client_id"], "http://127.0.0.1:1/elsewhere", "unregistered redirect_uri")
    for meta, error in (({"redirect_uris": ["http://example.com/cb"]}, "invalid_redirect_uri"),
                        ({"client_name": "x"}, "invalid_redirect_uri"),
                        ({"redirect_uris": []}, "invalid_redirect_uri"),
                        ({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "private_key_jwt"},
                         "invalid_client_metadata"),
                        ({"redirect_uris": [REDIRECT], "grant_types": ["password"]},
                         "invalid_client_metadata"),
                        ({"redirect_uris": [REDIRECT], "response_types": ["token"]},
                         "invalid_client_metadata")):
        expect_oauth_error(up.register(meta), 400, error)
    expect_oauth_error(up.request("POST", "/register", "not json",
                                  {"Content-Type": "application/json"}), 400, "invalid_client_metadata")
    expect_eq(up.stats()["registrations"], 2, "registrations")
    listed = [t for t in up.tokens() if t["kind"] == "client_secret"]
    expect_eq([(t["token"], t["valid"]) for t in listed], [(conf["client_secret"], True)],
              "client secret in /_control/tokens")


def t_revocation(up):
    g = seed(up)
    r = up.revoke(g["refresh_token"], CID, SECRET, token_type_hint="refresh_token")
    expect_eq((r.status, r.body), (200, b""), "revoked")
    state = up.grant(g["grant_id"])
    expect_eq((state["alive"], state["revoked_reason"]), (False, "client_revocation"), "grant revoked")
    expect_eq(_bearer_get(up, "/me", g["access_token"]).status, 401, "access token dead")
    expect_oauth_error(refresh(up, g["refresh_token"]), 403, "invalid_grant")
    entry = [e for e in up.log() if e["path"] == "/oauth/revoke"][-1]
    expect_eq((entry["revocation"]["token_kind"], entry["grant_id"], entry["status"]),
              ("refresh", g["grant_id"], 200), "log")
    expect_eq(up.revoke("rt-never-issued", CID, SECRET).status, 200, "unknown token: 200")
    g2 = up.add_grant(CID)
    expect_eq(up.revoke(g2["access_token"], CID, SECRET, token_type_hint="access_token").status, 200,
              "access token")
    expect(not up.grant(g2["grant_id"])["alive"], "revoking an access token revokes the grant")
    g3 = up.add_grant(CID)
    expect_oauth_error(up.revoke(g3["refresh_token"], CID, "wrong"), 401, "invalid_client")
    up.add_client("other", None, "none")
    expect_oauth_error(up.revoke(g3["refresh_token"], "other"), 400, "unauthorized_client")
    expect_oauth_error(up.token_request({"client_id": "other"}, path="/oauth/revoke"),
                       400, "invalid_request")
    up.fault("unavailable_503", target="revoke")
    expect_eq(up.revoke(g3["refresh_token"], CID, SECRET).status, 503, "revoke fault")
    expect(up.grant(g3["grant_id"])["alive"], "a failed revocation revokes nothing")
    expect_eq(up.revoke(g3["refresh_token"], CID, SECRET, as_json=True).status, 200, "JSON body")
    expect_eq(up.stats()["revocations"], 4, "revocations")


def t_accessible_resources(up):
    g = seed(up)
    r = up.accessible_resources(g["access_token"])
    expect_eq(r.status, 200, "status")
    sites = r.json()
    expect_eq([(s["id"], s["url"], s["name"]) for s in sites],
              [("11111111-1111-1111-1111-111111111111", "https://acme.atlassian.net", "acme")],
              "default site")
    expect_eq(sites[0]["scopes"], g["scope"].split(), "scopes")
    expect(sites[0]["avatarUrl"].startswith("https://"), "avatarUrl", sites[0])
    expect_eq(up.accessible_resources().status, 401, "no token")
    expect_eq(up.accessible_resources("at-unknown").status, 401, "unknown token")
    two = [{"id": "a1", "url": "https://a.atlassian.net", "name": "a"},
           {"id": "b2", "url": "https://b.atlassian.net", "name": "b"}]
    expect_eq(up.set_sites(two), two, "set")
    expect_eq([s["name"] for s in up.accessible_resources(g["access_token"]).json()], ["a", "b"],
              "two sites")
    expect_eq(up.sites(), two, "get")
    try:
        up.set_sites([{"id": 1}])
    except ControlError as e:
        expect_eq(e.status, 400, "bad site")
    else:
        raise AssertionError("accepted a bad site")
    up.revoke_grant(g["grant_id"])
    expect_eq(up.accessible_resources(g["access_token"]).status, 401, "revoked")
    up.reset()
    expect_eq([s["name"] for s in up.sites()], ["acme"], "reset restores the default site")


class _CallbackServer:
    """A plain-http loopback callback, like tokend's, counting the requests it gets."""

    def __init__(self):
        import http.server

        hits = self.hits = []
        codes = set()

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                code = redirect_params(self.path).get("code")
                fresh = code is not None and code not in codes
                codes.add(code)
                body = (b"<html><body>Login complete; you can close this tab.</body></html>"
                        if fresh else b"<html><body>This login link was already used.</body></html>")
                self.send_response(200 if fresh else 400)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/callback"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _run_browser(up, url, mode, log):
    env = dict(os.environ, FAKE_BROWSER_CA=up.ca_file, FAKE_BROWSER_LOG=log, FAKE_BROWSER_MODE=mode,
               FAKE_BROWSER_TIMEOUT="5")
    started = time.monotonic()
    p = subprocess.run([sys.executable, FAKE_BROWSER, url], env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=30)
    expect(time.monotonic() - started < 10, "returns quickly")
    with open(log) as f:
        record = json.loads(f.read().splitlines()[-1])
    return p, record


FAKE_BROWSER = os.path.join(HERE, "..", "e2e", "fake_browser.py")


def t_fake_browser(up):
    if not os.path.exists(FAKE_BROWSER):
        print("     (tests/e2e/fake_browser.py not found; skipped)")
        return
    up.reset()
    cb = _CallbackServer()
    workdir = tempfile.mkdtemp(prefix="fake-browser-")
    try:
        up.add_client("browser", None, "none", redirect_uris=[cb.url])
        verifier, challenge = make_pkce()
        url = up.authorize_url("browser", cb.url, state="st", code_challenge=challenge)
        log = os.path.join(workdir, "browser.jsonl")
        p, rec = _run_browser(up, url, "follow", log)
        expect_eq(p.returncode, 0, "exit status")
        expect_eq((rec["authorize_status"], rec["callback_status"]), (302, 200), "statuses")
        expect(rec["location"].startswith(cb.url + "?code="), "location", rec["location"])
        expect("close this tab" in rec["callback_body_excerpt"], "body excerpt", rec)
        expect_eq(len(cb.hits), 1, "callback called once")
        expect_eq(redirect_params(cb.hits[0])["state"], "st", "state reached the callback")
        code = redirect_params(cb.hits[0])["code"]
        expect(code not in p.stderr.decode(), "no code on stderr")
        expect_token_set(up.exchange_code(code, cb.url, "browser", code_verifier=verifier))
        p, rec = _run_browser(up, url, "authorize_only", log)
        expect_eq((p.returncode, rec["callback_status"], len(cb.hits)), (0, None, 1), "no callback")
        expect_eq(p.stdout.decode().strip(), rec["location"], "Location on stdout")
        p, rec = _run_browser(up, url, "replay", log)
        expect_eq((rec["callback_status"], rec["replay_status"], len(cb.hits)), (200, 400, 3), "replay")
        up.config(consent="deny")
        p, rec = _run_browser(up, url, "follow", log)
        expect_eq(redirect_params(rec["location"])["error"], "access_denied", "denied")
        up.config(consent="approve")
        p, rec = _run_browser(up, up.authorize_url("nobody", cb.url), "follow", log)
        expect_eq((p.returncode, rec["authorize_status"], rec["location"]), (0, 400, None),
                  "error page, nothing followed")
        cb.close()
        p, rec = _run_browser(up, url, "follow", log)
        expect_eq((p.returncode, rec["authorize_status"], rec["callback_status"]), (0, 302, None),
                  "callback down: exit 0")
        expect(rec["error"].startswith("callback: "), "error logged", rec)
        expect_eq(subprocess.run([sys.executable, FAKE_BROWSER], capture_output=True).returncode, 2,
                  "usage error")
        env = dict(os.environ, FAKE_BROWSER_MODE="bogus")
        expect_eq(subprocess.run([sys.executable, FAKE_BROWSER, url], env=env,
                                 capture_output=True).returncode, 2, "bad mode")
    finally:
        cb.close()
        shutil.rmtree(workdir, ignore_errors=True)


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
    expect_eq(up.log(settle=True)[-1]["refresh_token_status"], "expired", "expired")
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
        reg = up.register({"redirect_uris": [REDIRECT]}).json()
        up.add_api_token(EMAIL, API_TOKEN)
        up.add_pat(PAT)
        key = up.api_request("POST", "/dc/rest/api/2/issue", bearer(PAT),
                             {"fields": {"summary": "kept"}}).json()["key"]
        up.config(device_interval=0)
        d = up.device_authorize(reg["client_id"], resource=up.mcp_url).json()
        expect_oauth_error(up.device_poll(d["device_code"], reg["client_id"]), 400,
                           "authorization_pending")
        port = up.port
        expect_eq(up.stop(), 0, "exit code after SIGTERM")
        up.start()
        expect_eq(up.port, port, "same port after restart")
        state = up.grant(g["grant_id"])
        expect_eq(state["current_refresh_token"], b["refresh_token"], "state survived")
        expect_token_set(refresh(up, g["refresh_token"]))   # still within the window
        expect_eq(up.stats()["registrations"], 1, "registrations survived")
        body = up.code_login(reg["client_id"], REDIRECT, resource=up.mcp_url)
        expect_eq(up.mcp_request(body["access_token"]).status, 200, "registered client survived")
        up.approve_device(d["user_code"])
        expect_token_set(up.device_poll(d["device_code"], reg["client_id"]))
        expect_eq(up.device(d["user_code"])["polls"], 2, "device code survived")
        expect_eq(up.api_request("GET", "/site/acme/rest/api/2/myself",
                                 api_token_auth(EMAIL, API_TOKEN)).status, 200, "API token survived")
        r = up.api_request("GET", f"/dc/rest/api/2/issue/{key}", bearer(PAT))
        expect_eq((r.status, r.json()["fields"]["summary"]), (200, "kept"), "PAT and store survived")
        r = up.api_request("POST", "/dc/rest/api/2/issue", bearer(PAT), {"fields": {"summary": "n"}})
        expect_eq(r.json()["key"], "TEST-2", "issue numbering survived")
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
            ("API: credentials per prefix (3LO, API token, PAT), 401s", t_api_auth),
            ("API: Jira issues, Confluence pages, one store per site", t_api_resources),
            ("API: echo of method, path, query, headers, body", t_api_echo),
            ("API: keep-alive across uploads, downloads, errors", t_api_keep_alive),
            ("API: streamed multipart uploads, XSRF, cap", t_api_uploads),
            ("API: streamed downloads", t_api_downloads),
            ("API: faults (401 with a valid token, 429/503, filters)", t_api_faults),
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
            ("authorize + code exchange, PKCE, code reuse revokes", t_code_flow),
            ("authorize: error page vs redirect, consent, pkce_required", t_authorize_errors),
            ("require_offline_access", t_offline_access),
            ("device authorization grant, slow_down", t_device_flow),
            ("discovery: RFC 8414 / OIDC, tenant issuer, knobs", t_discovery),
            ("MCP protected resource: PRM, challenge, resource binding", t_mcp_resource),
            ("dynamic client registration", t_dynamic_registration),
            ("revocation", t_revocation),
            ("accessible resources (Atlassian)", t_accessible_resources),
            ("fake browser (tests/e2e/fake_browser.py)", t_fake_browser),
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
            check.run("client ID metadata documents", t_client_id_metadata_documents, up, own.cert_file,
                      own.key_file)
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

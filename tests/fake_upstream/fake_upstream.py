#!/usr/bin/env python3
"""A fake OAuth 2.0 provider that behaves like Atlassian's, for tokend's tests.

    python3 fake_upstream.py --cert CERT --key KEY [--host 127.0.0.1] [--port 0]
                             [--port-file FILE] [--state-file FILE] [--quiet]

Serves HTTPS (TLS 1.2+, HTTP/1.1 keep-alive) on one port:

* ``POST /oauth/token`` (and ``/oauth2/token``): the token endpoint, with
  rotating refresh tokens, a reuse window and reuse detection; grant types
  ``refresh_token``, ``authorization_code`` (PKCE S256) and
  ``urn:ietf:params:oauth:grant-type:device_code`` (RFC 8628);
* ``GET /authorize`` (and ``/oauth/authorize``): the authorization endpoint,
  consent decided by a knob (no user interface);
* ``POST /oauth/device/code``: device authorization (RFC 8628);
* ``POST /oauth/revoke``: revocation (RFC 7009); ``POST /register``: dynamic
  client registration (RFC 7591);
* ``/.well-known/...``: RFC 8414 / OIDC discovery (also for the issuer
  ``BASE/tenant``) and RFC 9728 protected-resource metadata for ``BASE/mcp``;
* ``GET /me`` (and ``/oauth/userinfo``): a resource that checks Bearer tokens;
  ``GET /oauth/token/accessible-resources`` (Atlassian); ``/mcp``: an MCP
  server that wants tokens bound (RFC 8707) to its URL;
* a fake Atlassian REST API (Jira + Confluence) behind three prefixes, one
  per way of reaching Atlassian: ``/ex/{jira|confluence}/{cloudid}/...``
  (OAuth 3LO through the gateway, Bearer access token), ``/site/{name}/...``
  and ``/site/{name}/wiki/...`` (Cloud API token, Basic email:token) and
  ``/dc/...`` (Data Center personal access token, Bearer); a small resource
  store (issues, pages, attachments), streamed multipart uploads and
  streamed downloads, and an echo for everything else;
* ``/_control/...``: JSON control API for tests (seeding, knobs, fault
  injection, request log, statistics).

It is an independent oracle: standard library only, no tokend code. See
README.md next to this file for the full contract. Secrets never go to
stderr; the in-memory request log (``GET /_control/log``) keeps everything.
"""
import argparse
import base64
import binascii
import copy
import email.message
import email.utils
import hashlib
import hmac
import html
import http.server
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field

SERVER_NAME = "fake-upstream"
MAX_BODY = 10 * 1024 * 1024            # bodies read into memory (token endpoint, JSON resources)
MAX_UPLOAD = 200 * 1024 * 1024         # default cap of streamed API bodies (knob max_upload_bytes)
STREAM_CHUNK = 64 * 1024               # read/write unit of streamed bodies
ECHO_BODY_KEPT = 64 * 1024             # the echo returns a body's text only up to this size
#: Download content repeats a pattern of this many bytes (a prime above STREAM_CHUNK).
PATTERN_PERIOD = 65537
IDLE_TIMEOUT = 120.0
DEFAULT_SCOPE = "read:jira-work read:jira-user offline_access"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"   # RFC 8628 §6.1: no vowels, no look-alikes
#: RFC 7636 §4.1: code_verifier (and an S256 code_challenge) alphabet and length.
PKCE_RE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
#: Metadata members that the knob ``omit_endpoints`` may drop from discovery documents.
ENDPOINT_NAMES = ("authorization_endpoint", "token_endpoint", "device_authorization_endpoint",
                  "revocation_endpoint", "registration_endpoint", "userinfo_endpoint", "jwks_uri")
#: Authorization-request parameters copied into the request log (none of them is a secret).
AUTHORIZE_LOGGED = ("response_type", "client_id", "redirect_uri", "state", "scope", "code_challenge",
                    "code_challenge_method", "audience", "prompt", "resource", "response_mode",
                    "login_hint", "nonce")
DEFAULT_SITES = [{"id": "11111111-1111-1111-1111-111111111111",
                  "url": "https://acme.atlassian.net", "name": "acme"}]
SITE_AVATAR = "https://site-admin-avatar-cdn.prod.public.atl-paas.net/avatars/240/rocket.png"

DEFAULT_CONFIG = {
    "reuse_window": 600,              # seconds a rotated refresh token stays usable (Atlassian: 600)
    "access_lifetime": 3600,          # default access-token lifetime (per-grant override possible)
    "refresh_lifetime": None,         # seconds from issuance after which a refresh token expires; None = never
    "invalid_grant_style": "atlassian",  # "atlassian" (403) or "standard" (400)
    "rotate_refresh_tokens": True,    # False = non-rotating provider (no refresh_token in refresh responses)
    "token_latency": 0.0,             # seconds every token-endpoint request waits before being processed
    "log_limit": 100000,              # request-log entries kept (oldest dropped first)
    # authorization endpoint and codes
    "consent": "approve",             # "approve" or "deny": what the (absent) user answers at /authorize
    "pkce_required": False,           # True: an authorization request without code_challenge is refused
    "code_lifetime": 600,             # seconds an authorization code stays valid (fake clock)
    "require_offline_access": False,  # True: a refresh token only when the scope has offline_access
    # device authorization grant (RFC 8628)
    "device_expires_in": 600,         # device-code lifetime (fake clock)
    "device_interval": 1,             # polling interval announced (and enforced, on the real clock)
    "device_slow_down_increment": 5,  # seconds added to the required interval by each slow_down
    "device_auto_approve_after": 0,   # N > 0: the N-th poll of a device code approves it
    # discovery (RFC 8414 / OIDC) and protected-resource metadata (RFC 9728)
    "discovery": "both",              # "both" | "oauth_only" | "oidc_only" | "none"
    "omit_endpoints": [],             # metadata members left out of the discovery documents
    "scopes_supported": ["openid", "profile", "email", "offline_access", "read:jira-work"],
    "issuer_override": None,          # a string: the documents claim this issuer (mismatch tests)
    "prm_via_challenge_only": False,  # True: the well-known PRM paths 404; only the challenge's URL works
    "prm_authorization_server": "root",  # "root" (BASE) or "tenant" (BASE/tenant) in the PRM document
    "authorization_response_iss": False,  # True: redirects carry iss (RFC 9207), metadata says so
    "iss_override": None,             # a string: the iss the redirects carry (mix-up tests)
    "offline_needs_consent": False,   # True: offline_access is dropped without prompt=consent (OIDC §11)
    "client_id_metadata_documents": False,  # True: metadata says client_id_metadata_document_supported, and an
                                      # https client_id is a client ID metadata document fetched and checked at
                                      # /authorize (MCP 2026-07-28; draft-ietf-oauth-client-id-metadata-document)
    # Atlassian Data Center OAuth 2.0 (/rest/oauth2/latest/...)
    "data_center": False,             # True: a refresh without the client's redirect_uri is a bare invalid_grant
    # the fake Atlassian REST API (/ex, /site, /dc)
    "api_latency": 0.0,               # seconds every API request waits before being processed
    "max_upload_bytes": MAX_UPLOAD,   # cap of a streamed request body (413 beyond, connection closed)
    "api_auth_required": True,        # False: missing/invalid credentials are let through (echo shows them)
}

ATLASSIAN_INVALID_GRANT = "Unknown or invalid refresh token."
#: The scope an ``insufficient_scope`` fault's challenge asks for.
INSUFFICIENT_SCOPE_NEEDED = "read:jira-work write:jira-work"

#: Fault targets: which endpoints a queued fault applies to (see App.ROUTES).
#: Route targets of the API prefixes -> prefix name; "api" targets a fault at all three.
API_PREFIXES = {"api_ex": "ex", "api_site": "site", "api_dc": "dc"}
API_TARGETS = {"api"} | set(API_PREFIXES)
FAULT_TARGETS = {"token", "resource", "mcp", "authorize", "device", "revoke", "register",
                 "discovery"} | API_TARGETS

#: Fault modes; value = targets the mode may be queued for.
FAULT_MODES = {
    "invalid_grant_standard": {"token"},
    "invalid_grant_atlassian": {"token"},
    "invalid_client": {"token"},
    "rate_limited": FAULT_TARGETS,
    "server_error_500": FAULT_TARGETS,
    "bad_gateway_502": FAULT_TARGETS,
    "unavailable_503": FAULT_TARGETS,
    "truncated_json": {"token"},
    "missing_access_token": {"token"},
    "expires_in_string": {"token"},
    "expires_in_negative": {"token"},
    "expires_in_absent": {"token"},
    "expires_in_garbage": {"token"},
    "html_200": FAULT_TARGETS,
    "slow": FAULT_TARGETS,
    "drop": FAULT_TARGETS,
    "reset_mid_body": FAULT_TARGETS,
    "drop_after_rotate": {"token"},
    "invalid_token": {"resource", "mcp"} | API_TARGETS,
    "insufficient_scope": {"resource", "mcp"} | API_TARGETS,
    "huge_body": FAULT_TARGETS,
}

#: Modes after which the request is processed normally (the grant DOES change).
PROCESSING_FAULTS = {"slow", "drop_after_rotate"}

AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")


def new_token(prefix):
    """A random opaque token, e.g. ``at-Q2x...``."""
    return prefix + secrets.token_urlsafe(32)


def fingerprint(secret):
    """What logs show instead of a credential: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()[:12]


_PATTERNS = {}
_PATTERNS_LOCK = threading.Lock()


def download_pattern(seed):
    """Two periods of the deterministic content for `seed` (see download_chunks)."""
    with _PATTERNS_LOCK:
        p = _PATTERNS.get(seed)
        if p is None:
            blocks = (PATTERN_PERIOD + 31) // 32
            one = b"".join(hashlib.sha256(f"fake-upstream-download:{seed}:{k}".encode()).digest()
                           for k in range(blocks))[:PATTERN_PERIOD]
            if len(_PATTERNS) > 64:
                _PATTERNS.clear()
            p = _PATTERNS[seed] = one + one
        return p


def gated(chunks, gate):
    """The first chunk at once, the rest after `gate` (a threading.Event) is set."""
    for i, chunk in enumerate(chunks):
        if i == 1 and gate is not None:
            gate.wait(60)
        yield chunk


def download_chunks(seed, size, delay=0.0):
    """`size` bytes of deterministic content in STREAM_CHUNK pieces: byte i is
    pattern[i % PATTERN_PERIOD], the pattern being the SHA-256 blocks of
    "fake-upstream-download:{seed}:{k}" for k = 0, 1, ... (client.py has the same)."""
    pattern = download_pattern(seed)
    off = 0
    while off < size:
        n = min(STREAM_CHUNK, size - off)
        i = off % PATTERN_PERIOD
        yield pattern[i:i + n]
        off += n
        if delay and off < size:
            time.sleep(delay)


# --------------------------------------------------------------------------
# Errors and responses


class ApiError(Exception):
    """An error answered as JSON: OAuth style ``{"error", "error_description"}``."""

    def __init__(self, status, error, description=None, headers=None):
        super().__init__(error)
        self.status = status
        self.error = error
        self.description = description
        self.headers = list(headers or [])

    def response(self, no_store=True):
        body = {"error": self.error}
        if self.description is not None:
            body["error_description"] = self.description
        resp = Response.json(self.status, body, headers=self.headers, no_store=no_store)
        resp.error = self.error
        return resp


def invalid_client(description):
    return ApiError(401, "invalid_client", description,
                    headers=[("WWW-Authenticate", f'Basic realm="{SERVER_NAME}"')])


def invalid_request(description):
    return ApiError(400, "invalid_request", description)


@dataclass
class Response:
    """What the HTTP layer writes.

    action: None (send normally), "drop" (send nothing, close) or
    "truncate" (send headers + ``body[:send_bytes]``, close; with a stream: send
    what the stream yields, then close).

    stream: an iterable of byte chunks sent instead of ``body``, with
    ``Content-Length: stream_length``, or chunked when that is None.
    """
    status: int
    body: bytes = b""
    headers: list = field(default_factory=list)
    action: str | None = None
    send_bytes: int | None = None
    rst: bool = False
    error: str | None = None
    stream: object = None
    stream_length: int | None = None
    sent_bytes: int | None = None      # body bytes really written (streams)
    sent_sha256: str | None = None     # their SHA-256 (streams)

    @classmethod
    def json(cls, status, obj, headers=None, no_store=False):
        hdrs = [("Content-Type", "application/json")]
        if no_store:
            hdrs += [("Cache-Control", "no-store"), ("Pragma", "no-cache")]
        return cls(status, json.dumps(obj).encode(), hdrs + list(headers or []))

    @classmethod
    def html(cls, status, text, headers=None):
        return cls(status, text.encode(), [("Content-Type", "text/html; charset=utf-8")]
                   + list(headers or []))


def html_error_page(status, reason):
    return (f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n"
            f"<body>\r\n<center><h1>{status} {reason}</h1></center>\r\n"
            f"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")


SSO_LOGIN_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Sign in - Corporate SSO</title></head>
<body>
<h1>Sign in to continue</h1>
<form method="post" action="/sso/login">
<label>Username <input name="username"></label>
<label>Password <input name="password" type="password"></label>
<button type="submit">Sign in</button>
</form>
</body>
</html>
"""


# --------------------------------------------------------------------------
# State


@dataclass
class Client:
    client_id: str
    client_secret: str | None
    auth_methods: list
    redirect_uris: list = field(default_factory=list)   # empty: any https or loopback http URI
    registered: bool = False         # made by dynamic client registration (POST /register)
    client_name: str | None = None
    grant_types: list | None = None
    response_types: list | None = None
    client_id_issued_at: int | None = None


@dataclass
class Grant:
    """A token family: everything issued from one login."""
    grant_id: str
    client_id: str
    scope: str
    sub: str
    access_lifetime: int | None
    created_at: float
    current_refresh_token: str | None = None
    revoked_at: float | None = None
    revoked_reason: str | None = None
    rotations: int = 0
    refreshes: int = 0
    source: str = "control"
    resource: str | list | None = None   # RFC 8707 resource(s) the tokens are bound to


@dataclass
class RefreshToken:
    token: str
    grant_id: str
    issued_at: float
    superseded_at: float | None = None   # when it stopped being the newest; its reuse window starts here
    uses: int = 0


@dataclass
class AccessToken:
    token: str
    grant_id: str
    issued_at: float
    expires_at: float
    scope: str


@dataclass
class AuthCode:
    code: str
    client_id: str
    scope: str
    sub: str
    redirect_uri: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    expires_at: float
    used_at: float | None = None
    grant_id: str | None = None
    resource: str | list | None = None
    source: str = "control"


@dataclass
class DeviceCode:
    """One device authorization (RFC 8628). Poll times are on the REAL monotonic clock."""
    device_code: str
    user_code: str
    client_id: str
    scope: str
    resource: str | list | None
    issued_at: float                 # fake clock
    expires_at: float                # fake clock
    interval: float                  # seconds now required between polls (grows with slow_down)
    status: str = "pending"          # pending | approved | denied | consumed
    approved_by: str | None = None   # "control" | "auto"
    sub: str | None = None
    polls: int = 0
    slow_downs: int = 0
    forced_slow_downs: int = 0       # armed one-shot slow_down answers still to give
    poll_times: list = field(default_factory=list)   # time.monotonic() of each poll
    answers: list = field(default_factory=list)      # per poll: the error code, or "tokens"
    grant_id: str | None = None


@dataclass
class Fault:
    mode: str
    count: int | None = 1          # None = persistent until cleared
    target: str = "token"
    retry_after: int | str | None = None
    delay: float = 5.0
    body: str = "json"             # rate_limited: "json" or "empty"
    rst: bool = False              # drop/reset_mid_body: TCP RST instead of FIN
    path: str | None = None        # regex searched in the request path; None = any path
    method: str | None = None      # only requests with this method; None = any


def _new_stats():
    return {
        "requests": 0,
        "token_requests": 0,
        "token_requests_by_grant_type": {},
        "successful_refreshes": 0,
        "refreshes_by_grant": {},
        "code_exchanges": 0,
        "authorizations": 0,
        "consent_denied": 0,
        "device_authorizations": 0,
        "device_polls": 0,
        "slow_downs": 0,
        "device_grants": 0,
        "registrations": 0,
        "metadata_document_fetches": 0,
        "metadata_document_refusals": 0,
        "revocations": 0,
        "requests_by_target": {},
        "reuse_detections": 0,
        "revoked_grants": 0,
        "errors_by_code": {},
        "faults_injected": {},
        "resource_requests": 0,
        "responses_by_status": {},
        "undelivered_responses": 0,
        "in_flight_token_requests": 0,
        "max_concurrent_token_requests": 0,
        "in_flight_by_grant": {},
        "max_concurrent_by_grant": {},
        # the fake Atlassian REST API
        "api_requests": 0,
        "api_requests_by_prefix": {},          # {"ex": n, "site": n, "dc": n}
        "api_requests_by_product": {},         # {"jira": n, "confluence": n}
        "api_requests_by_credential": {},      # {"oauth": n, "api_token": n, "pat": n, "none": n}
        "api_responses_by_prefix": {},         # {"ex": {"200": n, "401": n}, ...}
        "api_unauthorized_by_prefix": {},      # 401 answers per prefix (faults included)
        "api_operations": {},                  # {"issue_create": n, "echo": n, ...}
        "uploads": 0,                          # attachment uploads answered 200
        "upload_bytes": 0,                     # request-body bytes of those uploads
        "downloads": 0,                        # streamed downloads started
        "download_bytes": 0,                   # body bytes the downloads really sent
        "api_in_flight": 0,
        "max_concurrent_api_requests": 0,
    }


class UpstreamState:
    """All mutable state of the fake provider, behind one lock.

    Times are on a fake wall clock: ``time.time()`` plus an offset that tests
    can advance (``POST /_control/clock``) to cross windows without sleeping.
    """

    def __init__(self, state_file=None):
        self.lock = threading.RLock()
        self.logged_cond = threading.Condition(self.lock)   # a logged request has ended
        self._tickets = 0            # logged requests begun, ever
        self._open_tickets = set()   # begun and not yet logged
        self.state_file = state_file
        self._grant_seq = 0          # survives reset so stale ids never collide
        self._conn_seq = 0
        self._reset_locked()
        if state_file and os.path.exists(state_file):
            self._load()

    # -- basics ------------------------------------------------------------

    def _reset_locked(self):
        self.config = copy.deepcopy(DEFAULT_CONFIG)
        self.clock_offset = 0.0
        self.clients = {}
        self.grants = {}
        self.refresh_tokens = {}
        self.access_tokens = {}
        self.codes = {}
        self.device_codes = {}       # device_code -> DeviceCode
        self.forced_slow_downs_any = 0   # armed slow_down answers for the next poll of any device code
        self.sites = copy.deepcopy(DEFAULT_SITES)
        self.api_tokens = {}         # Cloud API token -> {"token", "email", "account_id", ...}
        self.pats = {}               # Data Center PAT -> {"token", "user", ...}
        self.store = {}              # namespace ("site:acme", "dc") -> issues, pages, attachments
        self.api_seq = 0             # ids of issues, pages and attachments
        self.issued = []             # every token ever handed out, in order
        self.faults = []
        self.log = []
        self.log_seq = 0
        self.log_dropped = 0
        self.stats = _new_stats()

    def reset(self):
        with self.lock:
            self._reset_locked()
            self._save()

    def now(self):
        return time.time() + self.clock_offset

    def next_connection_id(self):
        with self.lock:
            self._conn_seq += 1
            return self._conn_seq

    def advance_clock(self, seconds):
        with self.lock:
            self.clock_offset += seconds
            self._save()
            return {"now": self.now(), "offset": self.clock_offset}

    def set_config(self, updates):
        with self.lock:
            for key, value in updates.items():
                if key not in DEFAULT_CONFIG:
                    raise ApiError(400, "unknown_knob", f"unknown config key {key!r}")
                _validate_knob(key, value)
            for key, value in updates.items():   # all or nothing
                self.config[key] = copy.deepcopy(value)
            self._save()
            return dict(self.config)

    # -- persistence (--state-file) -----------------------------------------

    def _snapshot(self):
        return {
            "version": 1,
            "grant_seq": self._grant_seq,
            "config": self.config,
            "clock_offset": self.clock_offset,
            "clients": [asdict(c) for c in self.clients.values()],
            "grants": [asdict(g) for g in self.grants.values()],
            "refresh_tokens": [asdict(t) for t in self.refresh_tokens.values()],
            "access_tokens": [asdict(t) for t in self.access_tokens.values()],
            "codes": [asdict(c) for c in self.codes.values()],
            "device_codes": [asdict(d) for d in self.device_codes.values()],
            "sites": self.sites,
            "api_tokens": list(self.api_tokens.values()),
            "pats": list(self.pats.values()),
            "store": self.store,
            "api_seq": self.api_seq,
            "issued": self.issued,
            "stats": {k: v for k, v in self.stats.items()
                      if k not in ("in_flight_token_requests", "in_flight_by_grant",
                                   "api_in_flight")},
        }

    def _save(self):
        """Writes the state file atomically (called with the lock held)."""
        if not self.state_file:
            return
        data = json.dumps(self._snapshot())
        directory = os.path.dirname(os.path.abspath(self.state_file))
        fd, tmp = tempfile.mkstemp(prefix=".fake_upstream-state-", dir=directory)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_file)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def _load(self):
        with open(self.state_file) as f:
            data = json.load(f)
        self._grant_seq = data["grant_seq"]
        self.config.update(data["config"])
        self.clock_offset = data["clock_offset"]
        self.clients = {c["client_id"]: Client(**c) for c in data["clients"]}
        self.grants = {g["grant_id"]: Grant(**g) for g in data["grants"]}
        self.refresh_tokens = {t["token"]: RefreshToken(**t) for t in data["refresh_tokens"]}
        self.access_tokens = {t["token"]: AccessToken(**t) for t in data["access_tokens"]}
        self.codes = {c["code"]: AuthCode(**c) for c in data["codes"]}
        self.device_codes = {d["device_code"]: DeviceCode(**d) for d in data.get("device_codes", [])}
        self.sites = data.get("sites", self.sites)
        self.api_tokens = {t["token"]: t for t in data.get("api_tokens", [])}
        self.pats = {t["token"]: t for t in data.get("pats", [])}
        self.store = data.get("store", {})
        self.api_seq = data.get("api_seq", 0)
        self.issued = data["issued"]
        self.stats.update(data["stats"])

    # -- clients and grants ------------------------------------------------

    def register_client(self, client_id, client_secret, auth_method, redirect_uris=None):
        if redirect_uris is None:
            redirect_uris = []
        if not isinstance(redirect_uris, list) or not all(isinstance(u, str) for u in redirect_uris):
            raise invalid_request("redirect_uris must be a list of strings")
        if not isinstance(client_id, str) or not client_id:
            raise invalid_request("client_id must be a non-empty string")
        if client_secret is not None and not isinstance(client_secret, str):
            raise invalid_request("client_secret must be a string or null")
        if auth_method is None:
            methods = (["none"] if client_secret is None
                       else ["client_secret_basic", "client_secret_post"])
        else:
            methods = [auth_method] if isinstance(auth_method, str) else auth_method
            if (not isinstance(methods, list) or not methods
                    or any(m not in AUTH_METHODS for m in methods)):
                raise invalid_request(f"auth_method must be one of {AUTH_METHODS} or a list of them")
            if ("none" in methods) != (client_secret is None) or ("none" in methods and len(methods) > 1):
                raise invalid_request("auth_method 'none' goes with client_secret null, and only then")
        client = Client(client_id, client_secret, methods, list(redirect_uris))
        with self.lock:
            self.clients[client_id] = client
            self._save()
        return asdict(client)

    def _issue_access(self, grant, now, source, scope=None):
        lifetime = grant.access_lifetime if grant.access_lifetime is not None \
            else self.config["access_lifetime"]
        token = AccessToken(new_token("at-"), grant.grant_id, now, now + lifetime, scope or grant.scope)
        self.access_tokens[token.token] = token
        self.issued.append({"token": token.token, "kind": "access", "grant_id": grant.grant_id,
                            "issued_at": now, "source": source, "valid_when_issued": True})
        return token, lifetime

    def _issue_refresh(self, grant, now, source):
        token = RefreshToken(new_token("rt-"), grant.grant_id, now)
        if grant.current_refresh_token:
            old = self.refresh_tokens[grant.current_refresh_token]
            if old.superseded_at is None:
                old.superseded_at = now
        grant.current_refresh_token = token.token
        self.refresh_tokens[token.token] = token
        self.issued.append({"token": token.token, "kind": "refresh", "grant_id": grant.grant_id,
                            "issued_at": now, "source": source, "valid_when_issued": True})
        return token

    def _new_grant_locked(self, client_id, scope, sub, access_lifetime, source, resource=None):
        self._grant_seq += 1
        gid = f"grant-{self._grant_seq}"
        grant = Grant(gid, client_id, scope, sub or f"fake-user-{self._grant_seq}",
                      access_lifetime, self.now(), source=source, resource=resource)
        self.grants[gid] = grant
        return grant

    def _login_tokens_locked(self, grant, now, source):
        """The token response of a fresh login (code or device): access token, and a refresh
        token unless require_offline_access is on and the scope lacks offline_access."""
        at, lifetime = self._issue_access(grant, now, source)
        body = {"access_token": at.token, "token_type": "Bearer", "expires_in": lifetime}
        if not self.config["require_offline_access"] or "offline_access" in grant.scope.split():
            body["refresh_token"] = self._issue_refresh(grant, now, source).token
        body["scope"] = grant.scope
        return body

    def create_grant(self, client_id, scope=None, access_lifetime=None, sub=None, resource=None):
        """A token family as if a user had just logged in."""
        scope = DEFAULT_SCOPE if scope is None else scope
        _check_type("scope", scope, str)
        _check_resource(resource)
        if access_lifetime is not None:
            _check_int("access_lifetime", access_lifetime, 1)
        with self.lock:
            if client_id not in self.clients:
                raise ApiError(400, "unknown_client", f"client {client_id!r} is not registered")
            grant = self._new_grant_locked(client_id, scope, sub, access_lifetime, "control",
                                           resource)
            now = self.now()
            at, lifetime = self._issue_access(grant, now, "control")
            rt = self._issue_refresh(grant, now, "control")
            self._save()
            return {"grant_id": grant.grant_id, "access_token": at.token,
                    "refresh_token": rt.token, "expires_in": lifetime, "token_type": "Bearer",
                    "scope": grant.scope, "sub": grant.sub, "resource": grant.resource}

    def _revoke_locked(self, grant, reason):
        if grant.revoked_at is None:
            grant.revoked_at = self.now()
            grant.revoked_reason = reason
            self.stats["revoked_grants"] += 1

    def revoke_grant(self, grant_id, reason="control"):
        with self.lock:
            grant = self.grants.get(grant_id)
            if grant is None:
                raise ApiError(404, "not_found", f"no grant {grant_id!r}")
            self._revoke_locked(grant, reason)
            self._save()
            return self.describe_grant(grant_id)

    def _refresh_status(self, rt, now):
        """Read-only classification of a presented refresh token."""
        if rt is None:
            return "unknown"
        grant = self.grants[rt.grant_id]
        if grant.revoked_at is not None:
            return "grant_revoked"
        lifetime = self.config["refresh_lifetime"]
        if lifetime is not None and now - rt.issued_at >= lifetime:
            return "expired"
        if rt.superseded_at is None:
            return "current"
        if now - rt.superseded_at < self.config["reuse_window"]:
            return "previous_within_window"
        return "reused_outside_window"

    def describe_grant(self, grant_id, tokens_by_grant=None):
        """`tokens_by_grant`: grant id -> (refresh tokens, access tokens), so
        that listing every grant reads the token tables once, not once per
        grant (a soak holds 20,000 grants)."""
        with self.lock:
            grant = self.grants.get(grant_id)
            if grant is None:
                raise ApiError(404, "not_found", f"no grant {grant_id!r}")
            if tokens_by_grant is None:
                tokens_by_grant = self._tokens_by_grant()
            refresh, access = tokens_by_grant.get(grant_id, ([], []))
            now = self.now()
            out = asdict(grant)
            out["alive"] = grant.revoked_at is None
            out["state"] = "alive" if out["alive"] else "revoked"
            out["refresh_tokens"] = [dict(asdict(t), status=self._refresh_status(t, now)) for t in refresh]
            out["access_tokens"] = [
                dict(asdict(t), valid=self._access_status(t, now) == "valid") for t in access]
            return out

    def _tokens_by_grant(self):
        by_grant = {}
        for t in self.refresh_tokens.values():
            by_grant.setdefault(t.grant_id, ([], []))[0].append(t)
        for t in self.access_tokens.values():
            by_grant.setdefault(t.grant_id, ([], []))[1].append(t)
        return by_grant

    def list_grants(self):
        with self.lock:
            tokens_by_grant = self._tokens_by_grant()
            return [self.describe_grant(gid, tokens_by_grant) for gid in self.grants]

    def list_tokens(self):
        with self.lock:
            now = self.now()
            out = []
            for rec in self.issued:
                rec = dict(rec)
                if rec["kind"] == "access":
                    t = self.access_tokens.get(rec["token"])
                    rec["valid"] = t is not None and self._access_status(t, now) == "valid"
                elif rec["kind"] == "refresh":
                    t = self.refresh_tokens.get(rec["token"])
                    rec["valid"] = t is not None and self._refresh_status(t, now) in (
                        "current", "previous_within_window")
                elif rec["kind"] == "code":
                    c = self.codes.get(rec["token"])
                    rec["valid"] = c is not None and c.used_at is None and c.expires_at > now
                elif rec["kind"] == "device_code":
                    d = self.device_codes.get(rec["token"])
                    rec["valid"] = (d is not None and d.status in ("pending", "approved")
                                    and d.expires_at > now)
                elif rec["kind"] == "api_token":
                    t = self.api_tokens.get(rec["token"])
                    rec["valid"] = t is not None and not t["revoked"]
                elif rec["kind"] == "pat":
                    t = self.pats.get(rec["token"])
                    rec["valid"] = t is not None and not t["revoked"]
                else:   # client_secret
                    c = self.clients.get(rec.get("client_id") or "")
                    rec["valid"] = c is not None and c.client_secret == rec["token"]
                out.append(rec)
            return out

    # -- authorization codes -----------------------------------------------

    def create_code(self, client_id, scope=None, redirect_uri=None, code_challenge=None,
                    code_challenge_method=None, sub=None, resource=None, source="control"):
        scope = DEFAULT_SCOPE if scope is None else scope
        _check_resource(resource)
        if code_challenge is not None and code_challenge_method is None:
            code_challenge_method = "plain"
        if code_challenge_method not in (None, "S256", "plain"):
            raise invalid_request("code_challenge_method must be S256 or plain")
        with self.lock:
            if client_id not in self.clients:
                raise ApiError(400, "unknown_client", f"client {client_id!r} is not registered")
            now = self.now()
            lifetime = self.config["code_lifetime"]
            code = AuthCode("code-" + secrets.token_urlsafe(24), client_id, scope, sub, redirect_uri,
                            code_challenge, code_challenge_method, now + lifetime,
                            resource=resource, source=source)
            self.codes[code.code] = code
            self.issued.append({"token": code.code, "kind": "code", "grant_id": None,
                                "issued_at": now, "source": source, "valid_when_issued": True})
            if source == "authorize":
                self.stats["authorizations"] += 1
            self._save()
            return {"code": code.code, "expires_in": lifetime}

    def metadata_document_client(self, url, doc):
        """The public client a checked client ID metadata document describes; replaces an older fetch."""
        client = Client(url, None, ["none"], list(doc["redirect_uris"]),
                        client_name=doc.get("client_name") if isinstance(doc.get("client_name"), str) else None,
                        grant_types=doc.get("grant_types"), response_types=doc.get("response_types"))
        with self.lock:
            self.clients[url] = client
            self._save()
        return copy.deepcopy(client)

    def client_snapshot(self, client_id):
        with self.lock:
            client = self.clients.get(client_id or "")
            return copy.deepcopy(client) if client else None

    def count(self, stat, n=1):
        with self.lock:
            self.stats[stat] += n
            self._save()

    # -- device authorization (RFC 8628) -----------------------------------------

    def create_device_code(self, client, scope, resource):
        with self.lock:
            now = self.now()
            while True:
                raw = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(8))
                user_code = f"{raw[:4]}-{raw[4:]}"
                if all(d.user_code != user_code for d in self.device_codes.values()):
                    break
            dc = DeviceCode("dc-" + secrets.token_urlsafe(32), user_code, client.client_id,
                            DEFAULT_SCOPE if scope is None else scope, resource, now,
                            now + self.config["device_expires_in"], self.config["device_interval"])
            self.device_codes[dc.device_code] = dc
            self.issued.append({"token": dc.device_code, "kind": "device_code", "grant_id": None,
                                "issued_at": now, "source": "device", "valid_when_issued": True})
            self.stats["device_authorizations"] += 1
            self._save()
            return copy.deepcopy(dc)

    def _find_device_locked(self, user_code):
        """By user code (case and dash insensitive); None = the newest pending one."""
        if user_code is None:
            pending = [d for d in self.device_codes.values() if d.status == "pending"]
            if not pending:
                raise ApiError(404, "not_found", "no pending device authorization")
            return pending[-1]
        if not isinstance(user_code, str):
            raise invalid_request("user_code must be a string")
        want = user_code.upper().replace("-", "")
        for d in self.device_codes.values():
            if d.user_code.replace("-", "") == want:
                return d
        raise ApiError(404, "not_found", f"no device authorization with user code {user_code!r}")

    def describe_device(self, dc):
        out = asdict(dc)
        times = dc.poll_times
        out["poll_spacings"] = [round(b - a, 6) for a, b in zip(times, times[1:])]
        out["expired"] = dc.expires_at <= self.now()
        return out

    def list_device_codes(self):
        with self.lock:
            return [self.describe_device(d) for d in self.device_codes.values()]

    def get_device(self, user_code):
        with self.lock:
            return self.describe_device(self._find_device_locked(user_code))

    def decide_device(self, user_code, approve, sub=None):
        """The user's answer on the verification page (control API)."""
        with self.lock:
            dc = self._find_device_locked(user_code)
            if dc.status in ("consumed", "denied") or (dc.status == "approved" and not approve):
                raise ApiError(409, "conflict", f"device authorization is already {dc.status}")
            if approve:
                dc.status, dc.approved_by = "approved", "control"
                if sub is not None:
                    _check_type("sub", sub, str)
                    dc.sub = sub
            else:
                dc.status = "denied"
            self._save()
            return self.describe_device(dc)

    def arm_slow_down(self, user_code, count):
        """The next `count` polls (of that device code, or of any) are answered slow_down."""
        _check_int("count", count, 1)
        with self.lock:
            if user_code is None:
                self.forced_slow_downs_any += count
                return {"user_code": None, "armed": self.forced_slow_downs_any}
            dc = self._find_device_locked(user_code)
            dc.forced_slow_downs += count
            self._save()
            return {"user_code": dc.user_code, "armed": dc.forced_slow_downs}

    def poll_device(self, client, device_code):
        """grant_type=device_code, one poll. Returns (DeviceCode copy | None, body | ApiError)."""
        with self.lock:
            dc = self.device_codes.get(device_code)
            if dc is None:
                return None, ApiError(400, "invalid_grant", "device code is unknown")
            if dc.client_id != client.client_id:
                return copy.deepcopy(dc), ApiError(400, "invalid_grant",
                                                   "device code was issued to another client")
            mono = time.monotonic()
            previous = dc.poll_times[-1] if dc.poll_times else None
            dc.polls += 1
            dc.poll_times.append(mono)
            self.stats["device_polls"] += 1
            result = self._device_answer_locked(dc, mono, previous)
            dc.answers.append(result.error if isinstance(result, ApiError) else "tokens")
            self._save()
            return copy.deepcopy(dc), result

    def _device_answer_locked(self, dc, mono, previous):
        now = self.now()
        if dc.status == "consumed":
            return ApiError(400, "invalid_grant", "device code was already used")
        if dc.expires_at <= now:
            return ApiError(400, "expired_token", "the device code has expired")
        if dc.status == "denied":
            return ApiError(400, "access_denied", "the user denied the authorization request")
        forced = dc.forced_slow_downs > 0 or self.forced_slow_downs_any > 0
        if forced or (previous is not None and mono - previous < dc.interval):
            if dc.forced_slow_downs > 0:
                dc.forced_slow_downs -= 1
            elif forced:
                self.forced_slow_downs_any -= 1
            dc.interval += self.config["device_slow_down_increment"]
            dc.slow_downs += 1
            self.stats["slow_downs"] += 1
            return ApiError(400, "slow_down", f"polling too fast; wait {dc.interval:g} s between polls")
        auto = self.config["device_auto_approve_after"]
        if dc.status == "pending" and auto and dc.polls >= auto:
            dc.status, dc.approved_by = "approved", "auto"
        if dc.status == "pending":
            return ApiError(400, "authorization_pending", "the user has not yet approved the request")
        grant = self._new_grant_locked(dc.client_id, dc.scope, dc.sub, None, "device", dc.resource)
        dc.status, dc.grant_id = "consumed", grant.grant_id
        self.stats["device_grants"] += 1
        return self._login_tokens_locked(grant, now, "device")

    # -- dynamic client registration (RFC 7591) ------------------------------------

    def register_dynamic_client(self, meta):
        """POST /register. Returns the 201 body, or raises ApiError (400)."""
        def bad(error, description):
            return ApiError(400, error, description)
        uris = meta.get("redirect_uris")
        if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
            raise bad("invalid_redirect_uri", "redirect_uris must be a non-empty list of strings")
        for uri in uris:
            problem = redirect_uri_problem(uri)
            if problem:
                raise bad("invalid_redirect_uri", f"redirect URI {uri!r}: {problem}")
        method = meta.get("token_endpoint_auth_method", "none")
        if method not in AUTH_METHODS:
            raise bad("invalid_client_metadata",
                      f"token_endpoint_auth_method must be one of {', '.join(AUTH_METHODS)}")
        grant_types = meta.get("grant_types", ["authorization_code", "refresh_token"])
        known = ("authorization_code", "refresh_token", DEVICE_GRANT)
        if (not isinstance(grant_types, list) or not grant_types
                or not all(g in known for g in grant_types)):
            raise bad("invalid_client_metadata", f"grant_types must be a list from {', '.join(known)}")
        response_types = meta.get("response_types", ["code"])
        if not isinstance(response_types, list) or not all(r == "code" for r in response_types):
            raise bad("invalid_client_metadata", "response_types may only contain 'code'")
        for name in ("client_name", "scope", "client_uri", "software_id", "software_version"):
            if name in meta and not isinstance(meta[name], str):
                raise bad("invalid_client_metadata", f"{name} must be a string")
        with self.lock:
            now = self.now()
            client_id = "dcr-" + secrets.token_urlsafe(12)
            secret = None if method == "none" else "cs-" + secrets.token_urlsafe(32)
            client = Client(client_id, secret, [method], list(uris), registered=True,
                            client_name=meta.get("client_name"), grant_types=grant_types,
                            response_types=response_types, client_id_issued_at=int(now))
            self.clients[client_id] = client
            if secret:
                self.issued.append({"token": secret, "kind": "client_secret", "grant_id": None,
                                    "client_id": client_id, "issued_at": now, "source": "register",
                                    "valid_when_issued": True})
            self.stats["registrations"] += 1
            self._save()
        body = {k: v for k, v in meta.items()
                if k in ("client_name", "scope", "client_uri", "software_id", "software_version")}
        body.update({"client_id": client_id, "client_id_issued_at": int(now),
                     "redirect_uris": list(uris), "grant_types": grant_types,
                     "response_types": response_types, "token_endpoint_auth_method": method})
        if secret:
            body["client_secret"] = secret
            body["client_secret_expires_at"] = 0
        return body

    # -- revocation (RFC 7009) ------------------------------------------------------

    def revoke_token(self, client, token):
        """Returns (token kind, grant id, ApiError | None). Unknown tokens are fine (RFC 7009 §2.2)."""
        with self.lock:
            rec = self.refresh_tokens.get(token)
            kind = "refresh"
            if rec is None:
                rec, kind = self.access_tokens.get(token), "access"
            if rec is None:
                self.stats["revocations"] += 1
                self._save()
                return "unknown", None, None
            grant = self.grants[rec.grant_id]
            if grant.client_id != client.client_id:
                return kind, grant.grant_id, ApiError(400, "unauthorized_client",
                                                      "the token was issued to another client")
            self._revoke_locked(grant, "client_revocation")
            self.stats["revocations"] += 1
            self._save()
            return kind, grant.grant_id, None

    # -- Atlassian accessible resources ----------------------------------------------

    def set_sites(self, sites):
        if not isinstance(sites, list):
            raise invalid_request("sites must be a list")
        for site in sites:
            if not isinstance(site, dict) or not all(
                    isinstance(site.get(k), str) for k in ("id", "url", "name")):
                raise invalid_request("each site needs string id, url and name")
            if "scopes" in site and (not isinstance(site["scopes"], list) or not all(
                    isinstance(x, str) for x in site["scopes"])):
                raise invalid_request("a site's scopes must be a list of strings")
            if "avatarUrl" in site and not isinstance(site["avatarUrl"], str):
                raise invalid_request("a site's avatarUrl must be a string")
        with self.lock:
            self.sites = copy.deepcopy(sites)
            self._save()
            return copy.deepcopy(self.sites)

    def get_sites(self):
        with self.lock:
            return copy.deepcopy(self.sites)

    # -- Atlassian API credentials (Cloud API tokens, Data Center PATs) -----------------------

    def add_api_token(self, email, token, account_id=None, display_name=None):
        for name, value in (("email", email), ("token", token)):
            if not isinstance(value, str) or not value:
                raise invalid_request(f"{name} must be a non-empty string")
        for name, value in (("account_id", account_id), ("display_name", display_name)):
            if value is not None:
                _check_type(name, value, str)
        with self.lock:
            now = self.now()
            rec = {"token": token, "email": email,
                   "account_id": account_id or "acct-" + hashlib.sha256(
                       email.lower().encode()).hexdigest()[:16],
                   "display_name": display_name or email.split("@")[0],
                   "fingerprint": fingerprint(token), "created_at": now, "revoked": False}
            self.api_tokens[token] = rec
            self.issued.append({"token": token, "kind": "api_token", "grant_id": None,
                                "email": email, "issued_at": now, "source": "control",
                                "valid_when_issued": True})
            self._save()
            return dict(rec)

    def add_pat(self, token, user=None, display_name=None):
        if not isinstance(token, str) or not token:
            raise invalid_request("token must be a non-empty string")
        for name, value in (("user", user), ("display_name", display_name)):
            if value is not None:
                _check_type(name, value, str)
        with self.lock:
            now = self.now()
            user = user or "dc-user"
            rec = {"token": token, "user": user, "email": f"{user}@example.test",
                   "display_name": display_name or user, "fingerprint": fingerprint(token),
                   "created_at": now, "revoked": False}
            self.pats[token] = rec
            self.issued.append({"token": token, "kind": "pat", "grant_id": None, "user": user,
                                "issued_at": now, "source": "control", "valid_when_issued": True})
            self._save()
            return dict(rec)

    def revoke_credential(self, table_name, token):
        with self.lock:
            table = getattr(self, table_name)
            rec = table.get(token) if isinstance(token, str) else None
            if rec is None:
                raise ApiError(404, "not_found", "no such token")
            rec["revoked"] = True
            self._save()
            return dict(rec)

    def list_credentials(self, table_name):
        with self.lock:
            return [dict(r) for r in getattr(self, table_name).values()]

    def check_api_token(self, email, token):
        """Basic email:token at /site. Returns (status, record copy | None); status is
        valid | unknown | revoked | wrong_email."""
        with self.lock:
            rec = self.api_tokens.get(token)
            if rec is None:
                return "unknown", None
            if rec["revoked"]:
                return "revoked", dict(rec)
            if rec["email"].lower() != email.lower():
                return "wrong_email", dict(rec)
            return "valid", dict(rec)

    def check_pat(self, token):
        """Bearer PAT at /dc. Returns (status, record copy | None): valid | unknown | revoked."""
        with self.lock:
            rec = self.pats.get(token)
            if rec is None:
                return "unknown", None
            return ("revoked" if rec["revoked"] else "valid"), dict(rec)

    # -- the API resource store -----------------------------------------------------------

    def namespace(self, ns):
        """The store of one site ("site:NAME") or of Data Center ("dc"); call with the lock."""
        return self.store.setdefault(ns, {"issues": {}, "project_seq": {}, "pages": {},
                                          "attachments": {}})

    def next_api_id(self):
        """Called with the lock held."""
        self.api_seq += 1
        return self.api_seq

    def dump_store(self):
        with self.lock:
            return copy.deepcopy(self.store)

    # -- the token endpoint's state changes ---------------------------------

    def peek_grant_id(self, params):
        """Grant a token request refers to (read-only), for logs and in-flight counts."""
        with self.lock:
            rt = self.refresh_tokens.get(params.get("refresh_token") or "")
            if rt is not None:
                return rt.grant_id, self._refresh_status(rt, self.now())
            code = self.codes.get(params.get("code") or "")
            if code is not None:
                return code.grant_id, None
            dc = self.device_codes.get(params.get("device_code") or "")
            if dc is not None:
                return dc.grant_id, None
            return None, ("unknown" if params.get("refresh_token") else None)

    def authenticate(self, authorization, params):
        """Client authentication (RFC 6749 §2.3); returns (Client, method used)."""
        basic = None
        if authorization:
            scheme, _, cred = authorization.strip().partition(" ")
            if scheme.lower() == "basic":
                try:
                    decoded = base64.b64decode(cred.strip(), validate=True).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    raise invalid_client("malformed Basic credentials") from None
                if ":" not in decoded:
                    raise invalid_client("malformed Basic credentials")
                raw_id, _, raw_secret = decoded.partition(":")
                basic = (urllib.parse.unquote_plus(raw_id), urllib.parse.unquote_plus(raw_secret))
        body_id = params.get("client_id")
        body_secret = params.get("client_secret")
        if basic is not None:
            if body_secret is not None:
                raise invalid_request("more than one client authentication method used")
            if body_id is not None and body_id != basic[0]:
                raise invalid_request("client_id in the body differs from the Basic credentials")
            client_id, secret, method = basic[0], basic[1], "client_secret_basic"
        elif body_secret is not None:
            client_id, secret, method = body_id, body_secret, "client_secret_post"
        else:
            client_id, secret, method = body_id, None, "none"
        if not client_id:
            raise invalid_client("client authentication required")
        with self.lock:
            client = self.clients.get(client_id)
        if client is None:
            raise invalid_client("unknown client")
        if method not in client.auth_methods:
            if "none" in client.auth_methods:
                raise invalid_client("public client must not send a client secret")
            if method == "none":
                raise invalid_client("client authentication required")
            raise invalid_client(f"client is registered for {'/'.join(client.auth_methods)}, "
                                 f"not {method}")
        if method != "none" and not hmac.compare_digest(secret.encode(), client.client_secret.encode()):
            raise invalid_client("client authentication failed")
        return client, method

    def _invalid_grant(self, description):
        if self.config["invalid_grant_style"] == "atlassian":
            return ApiError(403, "invalid_grant", ATLASSIAN_INVALID_GRANT)
        return ApiError(400, "invalid_grant", description)

    def refresh(self, client, presented, requested_scope):
        """grant_type=refresh_token, atomically. Returns (status, grant_id, body | ApiError)."""
        with self.lock:
            now = self.now()
            rt = self.refresh_tokens.get(presented)
            status = self._refresh_status(rt, now)
            if rt is None:
                return status, None, self._invalid_grant("refresh token is unknown")
            grant = self.grants[rt.grant_id]
            if grant.client_id != client.client_id:
                return "wrong_client", grant.grant_id, self._invalid_grant(
                    "refresh token was issued to another client")
            if status == "grant_revoked":
                return status, grant.grant_id, self._invalid_grant("refresh token has been revoked")
            if status == "expired":
                return status, grant.grant_id, self._invalid_grant("refresh token has expired")
            if status == "reused_outside_window":
                self.stats["reuse_detections"] += 1
                self._revoke_locked(grant, "reuse_detected")
                self._save()
                return status, grant.grant_id, self._invalid_grant(
                    "refresh token reuse detected; the grant has been revoked")
            scope = grant.scope
            if requested_scope is not None:
                if not set(requested_scope.split()) <= set(grant.scope.split()):
                    return status, grant.grant_id, ApiError(
                        400, "invalid_scope", "requested scope exceeds the granted scope")
                scope = requested_scope
            rt.uses += 1
            at, lifetime = self._issue_access(grant, now, "refresh", scope)
            body = {"access_token": at.token, "token_type": "Bearer", "expires_in": lifetime}
            if self.config["rotate_refresh_tokens"]:
                body["refresh_token"] = self._issue_refresh(grant, now, "refresh").token
                grant.rotations += 1
            body["scope"] = scope
            grant.refreshes += 1
            self.stats["successful_refreshes"] += 1
            by_grant = self.stats["refreshes_by_grant"]
            by_grant[grant.grant_id] = by_grant.get(grant.grant_id, 0) + 1
            self._save()
            return status, grant.grant_id, body

    def exchange_code(self, client, code_value, redirect_uri, verifier, resource=None):
        """grant_type=authorization_code. Returns (grant_id, body | ApiError)."""
        def invalid_grant(description):
            return ApiError(400, "invalid_grant", description)
        with self.lock:
            now = self.now()
            code = self.codes.get(code_value or "")
            if code is None:
                return None, invalid_grant("authorization code is unknown")
            if code.client_id != client.client_id:
                return None, invalid_grant("authorization code was issued to another client")
            if code.used_at is not None:
                # RFC 6749 §4.1.2: deny, and revoke what the first use produced.
                if code.grant_id in self.grants:
                    self._revoke_locked(self.grants[code.grant_id], "code_reuse")
                self._save()
                return code.grant_id, invalid_grant("authorization code was already used; "
                                                    "the grant issued from it has been revoked")
            if code.expires_at <= now:
                return None, invalid_grant("authorization code has expired")
            if code.redirect_uri is not None and redirect_uri != code.redirect_uri:
                return None, invalid_grant("redirect_uri missing" if redirect_uri is None else
                                           "redirect_uri does not match the authorization request")
            if code.code_challenge is not None:
                if not verifier:
                    return None, invalid_grant("code_verifier required (the authorization request "
                                               "had a code_challenge)")
                if not PKCE_RE.fullmatch(verifier):
                    return None, invalid_grant("code_verifier malformed (RFC 7636: 43-128 characters "
                                               "of A-Z a-z 0-9 - . _ ~)")
                if code.code_challenge_method == "S256":
                    computed = base64.urlsafe_b64encode(
                        hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()
                else:
                    computed = verifier
                if not hmac.compare_digest(computed, code.code_challenge):
                    return None, invalid_grant("code_verifier does not match the code_challenge")
            elif verifier:
                return None, invalid_grant("code_verifier sent, but the authorization request had "
                                           "no code_challenge")
            if resource is not None and not _resource_matches(code.resource, resource):
                return None, ApiError(400, "invalid_target", "resource differs from the one in the "
                                      "authorization request")
            code.used_at = now
            grant = self._new_grant_locked(client.client_id, code.scope, code.sub, None, "code",
                                           code.resource)
            code.grant_id = grant.grant_id
            body = self._login_tokens_locked(grant, now, "code")
            self.stats["code_exchanges"] += 1
            self._save()
            return grant.grant_id, body

    def bogus_token_body(self, scope, source):
        """A realistic token response whose tokens are NOT valid anywhere (for faults)."""
        with self.lock:
            now = self.now()
            at, rt = new_token("at-"), new_token("rt-")
            for token, kind in ((at, "access"), (rt, "refresh")):
                self.issued.append({"token": token, "kind": kind, "grant_id": None, "issued_at": now,
                                    "source": source, "valid_when_issued": False})
            return {"access_token": at, "token_type": "Bearer",
                    "expires_in": self.config["access_lifetime"], "refresh_token": rt,
                    "scope": scope or DEFAULT_SCOPE}

    # -- resource side ---------------------------------------------------------

    def _access_status(self, token, now):
        if token is None:
            return "unknown"
        if self.grants[token.grant_id].revoked_at is not None:
            return "grant_revoked"
        if token.expires_at <= now:
            return "expired"
        return "valid"

    def check_access_token(self, value):
        """Returns (status, grant copy or None, token copy or None) for an access token."""
        with self.lock:
            token = self.access_tokens.get(value)
            status = self._access_status(token, self.now())
            grant = self.grants[token.grant_id] if token else None
            return status, (copy.copy(grant) if grant else None), (copy.copy(token) if token else None)

    # -- faults ----------------------------------------------------------------

    def add_fault(self, spec):
        fault = _parse_fault(spec)
        with self.lock:
            self.faults.append(fault)
            return asdict(fault)

    def clear_faults(self):
        with self.lock:
            n = len(self.faults)
            self.faults = []
            return n

    def list_faults(self):
        with self.lock:
            return [asdict(f) for f in self.faults]

    def pop_fault(self, targets, method=None, path=None):
        """The fault for the next request on one of `targets` (its method and path must match
        the fault's filters), FIFO; persistent ones stay queued."""
        with self.lock:
            for i, fault in enumerate(self.faults):
                if fault.target not in targets:
                    continue
                if fault.method is not None and fault.method != method:
                    continue
                if fault.path is not None and not re.search(fault.path, path or ""):
                    continue
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count <= 0:
                        del self.faults[i]
                injected = self.stats["faults_injected"]
                injected[fault.mode] = injected.get(fault.mode, 0) + 1
                return copy.copy(fault)
            return None

    # -- request accounting --------------------------------------------------------

    def begin(self, target, grant_id):
        """Counts a logged request as in flight; returns its ticket for end()."""
        with self.lock:
            self._tickets += 1
            ticket = self._tickets
            self._open_tickets.add(ticket)
            s = self.stats
            s["requests"] += 1
            by_target = s["requests_by_target"]
            by_target[target or "none"] = by_target.get(target or "none", 0) + 1
            if target == "token":
                s["token_requests"] += 1
                s["in_flight_token_requests"] += 1
                s["max_concurrent_token_requests"] = max(s["max_concurrent_token_requests"],
                                                         s["in_flight_token_requests"])
                if grant_id:
                    n = s["in_flight_by_grant"].get(grant_id, 0) + 1
                    s["in_flight_by_grant"][grant_id] = n
                    s["max_concurrent_by_grant"][grant_id] = max(
                        s["max_concurrent_by_grant"].get(grant_id, 0), n)
            elif target == "resource":
                s["resource_requests"] += 1
            elif target in API_PREFIXES:
                s["api_in_flight"] += 1
                s["max_concurrent_api_requests"] = max(s["max_concurrent_api_requests"],
                                                       s["api_in_flight"])
            return ticket

    def end(self, target, grant_id, entry, ticket):
        with self.lock:
            self._open_tickets.discard(ticket)
            self.logged_cond.notify_all()
            s = self.stats
            if target == "token":
                s["in_flight_token_requests"] -= 1
                if grant_id:
                    n = s["in_flight_by_grant"].get(grant_id, 1) - 1
                    if n:
                        s["in_flight_by_grant"][grant_id] = n
                    else:
                        s["in_flight_by_grant"].pop(grant_id, None)
                gt = entry.get("grant_type") or "(none)"
                by_gt = s["token_requests_by_grant_type"]
                by_gt[gt] = by_gt.get(gt, 0) + 1
            if entry.get("error"):
                s["errors_by_code"][entry["error"]] = s["errors_by_code"].get(entry["error"], 0) + 1
            status = str(entry["status"]) if entry["status"] is not None else "none"
            if target in API_PREFIXES:
                s["api_in_flight"] -= 1
                self._count_api_locked(entry, status)
            s["responses_by_status"][status] = s["responses_by_status"].get(status, 0) + 1
            if not entry["delivered"]:
                s["undelivered_responses"] += 1
            self.log_seq += 1
            entry["seq"] = self.log_seq
            self.log.append(entry)
            overflow = len(self.log) - self.config["log_limit"]
            if overflow > 0:
                del self.log[:overflow]
                self.log_dropped += overflow

    def _count_api_locked(self, entry, status):
        s = self.stats
        api = entry["api"]

        def bump(table, key, n=1):
            table[key] = table.get(key, 0) + n

        prefix = api["prefix"]
        s["api_requests"] += 1
        bump(s["api_requests_by_prefix"], prefix)
        if api.get("product"):
            bump(s["api_requests_by_product"], api["product"])
        bump(s["api_requests_by_credential"], entry.get("credential_kind") or "none")
        bump(s["api_responses_by_prefix"].setdefault(prefix, {}), status)
        if status == "401":
            bump(s["api_unauthorized_by_prefix"], prefix)
        if api.get("operation"):
            bump(s["api_operations"], api["operation"])
        if entry.get("upload") and entry["status"] == 200:
            s["uploads"] += 1
            s["upload_bytes"] += entry["upload"]["bytes"]
        if entry.get("download"):
            s["downloads"] += 1
            s["download_bytes"] += entry.get("response_bytes") or 0

    def read_log(self, since=0, settle=0.0):
        """Log entries after `since`. With settle > 0, first waits (at most that many
        seconds) until every request that began before this read has been logged: a
        request is logged after its answer went out or its connection was dropped, so a
        caller that has just seen the outcome would otherwise race the log."""
        with self.lock:
            if settle > 0:
                horizon = self._tickets
                self.logged_cond.wait_for(
                    lambda: not any(t <= horizon for t in self._open_tickets), timeout=settle)
            return {"entries": [copy.deepcopy(e) for e in self.log if e["seq"] > since],
                    "dropped": self.log_dropped, "last_seq": self.log_seq}

    def clear_log(self):
        with self.lock:
            self.log = []
            self.log_dropped = 0

    def read_stats(self):
        with self.lock:
            return copy.deepcopy(self.stats)

    def clear_stats(self):
        with self.lock:
            kept = {k: self.stats[k] for k in ("in_flight_token_requests", "in_flight_by_grant",
                                               "api_in_flight")}
            self.stats = _new_stats()
            self.stats.update(copy.deepcopy(kept))
            self._save()


def _check_type(name, value, typ):
    if not isinstance(value, typ):
        raise invalid_request(f"{name} has the wrong type")


def _check_int(name, value, minimum=None):
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        raise invalid_request(f"{name} must be an integer" +
                              (f" >= {minimum}" if minimum is not None else ""))


def _check_resource(resource):
    """A grant's RFC 8707 resource: null, a string, or a list of strings."""
    if resource is None or isinstance(resource, str):
        return
    if not isinstance(resource, list) or not resource or not all(isinstance(r, str) for r in resource):
        raise invalid_request("resource must be a string, a non-empty list of strings, or null")


def _resource_matches(bound, resource):
    """Whether `resource` is (one of) the resource(s) a code or grant is bound to."""
    if isinstance(bound, list):
        return resource in bound
    return bound is not None and bound == resource


def is_loopback_host(host):
    """127.0.0.0/8, ::1 and localhost (RFC 8252 §7.3)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


MAX_METADATA_DOCUMENT = 5 * 1024


def is_metadata_document_url(client_id):
    """A client_id that is a client ID metadata document URL: https, a host and a path."""
    if not isinstance(client_id, str):
        return False
    split = urllib.parse.urlsplit(client_id)
    return split.scheme == "https" and bool(split.hostname) and split.path not in ("", "/") and not split.fragment


def redirect_uri_problem(uri):
    """None if `uri` may be a redirect URI (https, or http on a loopback host), else why not."""
    if not isinstance(uri, str):
        return "not a string"
    try:
        split = urllib.parse.urlsplit(uri)
        split.port   # raises on a bad port
    except ValueError:
        return "not a valid URI"
    if split.fragment or uri.endswith("#"):
        return "must not have a fragment"
    if split.scheme == "https" and split.hostname:
        return None
    if split.scheme == "http" and is_loopback_host(split.hostname):
        return None
    return "must be https, or http on a loopback host"


def _check_str_list(key, value, allowed=None):
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid_request(f"{key} must be a list of strings")
    if allowed is not None:
        unknown = [v for v in value if v not in allowed]
        if unknown:
            raise invalid_request(f"{key}: unknown {unknown}; known: {list(allowed)}")


def _validate_knob(key, value):
    if key in ("reuse_window",):
        _check_int(key, value, 0)
    elif key == "access_lifetime":
        _check_int(key, value, 1)
    elif key == "refresh_lifetime":
        if value is not None:
            _check_int(key, value, 0)
    elif key == "log_limit":
        _check_int(key, value, 1)
    elif key == "invalid_grant_style":
        if value not in ("standard", "atlassian"):
            raise invalid_request("invalid_grant_style must be 'standard' or 'atlassian'")
    elif key in ("rotate_refresh_tokens", "pkce_required", "require_offline_access",
                 "prm_via_challenge_only", "authorization_response_iss", "offline_needs_consent",
                 "data_center", "client_id_metadata_documents"):
        _check_type(key, value, bool)
    elif key in ("code_lifetime", "device_expires_in"):
        _check_int(key, value, 1)
    elif key in ("device_interval", "device_auto_approve_after"):
        _check_int(key, value, 0)
    elif key == "device_slow_down_increment":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise invalid_request("device_slow_down_increment must be a number >= 0")
    elif key == "consent":
        if value not in ("approve", "deny"):
            raise invalid_request("consent must be 'approve' or 'deny'")
    elif key == "discovery":
        if value not in ("both", "oauth_only", "oidc_only", "none"):
            raise invalid_request("discovery must be 'both', 'oauth_only', 'oidc_only' or 'none'")
    elif key == "omit_endpoints":
        _check_str_list(key, value, ENDPOINT_NAMES)
    elif key == "scopes_supported":
        _check_str_list(key, value)
    elif key in ("issuer_override", "iss_override"):
        if value is not None:
            _check_type(key, value, str)
    elif key == "prm_authorization_server":
        if value not in ("root", "tenant"):
            raise invalid_request("prm_authorization_server must be 'root' or 'tenant'")
    elif key in ("token_latency", "api_latency"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise invalid_request(f"{key} must be a number >= 0")
    elif key == "max_upload_bytes":
        _check_int(key, value, 0)
    elif key == "api_auth_required":
        _check_type(key, value, bool)


def _parse_fault(spec):
    if not isinstance(spec, dict):
        raise invalid_request("fault must be a JSON object")
    allowed = {"mode", "count", "target", "retry_after", "delay", "body", "rst", "path", "method"}
    unknown = set(spec) - allowed
    if unknown:
        raise invalid_request(f"unknown fault fields {sorted(unknown)}")
    mode = spec.get("mode")
    if mode not in FAULT_MODES:
        raise invalid_request(f"unknown fault mode {mode!r}; known: {sorted(FAULT_MODES)}")
    target = spec.get("target", "token")
    if target not in FAULT_MODES[mode]:
        raise invalid_request(f"mode {mode!r} cannot target {target!r}")
    count = spec.get("count", 1)
    if count is not None:
        _check_int("count", count, 1)
    retry_after = spec.get("retry_after")
    if retry_after is not None and (isinstance(retry_after, bool)
                                    or not isinstance(retry_after, (int, str))):
        raise invalid_request("retry_after must be an integer, a string (sent verbatim) or null")
    delay = spec.get("delay", 5.0)
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
        raise invalid_request("delay must be a number >= 0")
    body = spec.get("body", "json")
    if body not in ("json", "empty"):
        raise invalid_request("body must be 'json' or 'empty'")
    rst = spec.get("rst", False)
    _check_type("rst", rst, bool)
    path = spec.get("path")
    if path is not None:
        _check_type("path", path, str)
        try:
            re.compile(path)
        except re.error:
            raise invalid_request("path must be a regular expression") from None
    method = spec.get("method")
    if method is not None:
        _check_type("method", method, str)
        method = method.upper()
    return Fault(mode, count, target, retry_after, float(delay), body, rst, path, method)


# --------------------------------------------------------------------------
# Requests and the application (route table)

_ACCESS_ERRORS = {"unknown": "the access token is unknown",
                  "expired": "the access token has expired",
                  "grant_revoked": "the access token has been revoked"}


class ClientGone(Exception):
    """The client closed the connection (or went silent) while its body was being read."""


def _too_large(cap):
    return ApiError(413, "request_too_large", f"request body larger than {cap} bytes")


class BodyReader:
    """A request body read on demand (Content-Length or chunked), never all in memory
    unless asked: counts the bytes and hashes them (SHA-256) as they pass.

    ``read()`` returns the next piece (at most STREAM_CHUNK bytes), b"" at the end.
    Past ``cap`` bytes it raises 413 and stops reading (the connection must then close).
    Bad chunked framing raises 400 (same). A client that disappears raises ClientGone.
    """

    def __init__(self, rfile, length, chunked, cap):
        self.rfile = rfile
        self.chunked = chunked
        self.length = length
        self.cap = cap
        self.remaining = length or 0
        self.chunk_left = 0
        self.total = 0
        self.sha = hashlib.sha256()
        self.done = not chunked and not length
        self.over_cap = (length or 0) > cap
        self.broken = False

    def _raw(self, n):
        try:
            data = self.rfile.read(n)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.broken = True
            raise ClientGone(type(exc).__name__) from None
        if len(data) != n:
            self.broken = True
            raise ClientGone("the client closed the connection mid-body")
        return data

    def _line(self):
        try:
            line = self.rfile.readline(1024)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.broken = True
            raise ClientGone(type(exc).__name__) from None
        if not line:
            self.broken = True
            raise ClientGone("the client closed the connection mid-body")
        if not line.endswith(b"\n"):
            self.broken = True
            raise ApiError(400, "invalid_request", "bad chunked framing")
        return line

    def read(self, n=STREAM_CHUNK):
        if self.done:
            return b""
        if self.broken:
            raise ApiError(400, "invalid_request", "bad request body")
        if self.over_cap:
            raise _too_large(self.cap)
        if not self.chunked:
            k = min(n, self.remaining)
            data = self._raw(k)
            self.remaining -= k
            self.done = self.remaining == 0
        else:
            if self.chunk_left == 0:
                try:
                    size = int(self._line().split(b";")[0].strip(), 16)
                except ValueError:
                    size = -1
                if size < 0:
                    self.broken = True
                    raise ApiError(400, "invalid_request", "bad chunk size")
                if size == 0:
                    while self._line() not in (b"\r\n", b"\n"):
                        pass   # trailers
                    self.done = True
                    return b""
                if self.total + size > self.cap:
                    self.over_cap = True
                    raise _too_large(self.cap)
                self.chunk_left = size
            k = min(n, self.chunk_left)
            data = self._raw(k)
            self.chunk_left -= k
            if self.chunk_left == 0 and self._line() not in (b"\r\n", b"\n"):
                self.broken = True
                raise ApiError(400, "invalid_request", "bad chunked framing")
        self.total += len(data)
        self.sha.update(data)
        return data

    def read_all(self, limit):
        """The (rest of the) body in memory; 413 beyond `limit` (the rest can be drained)."""
        parts, n = [], 0
        while True:
            data = self.read()
            if not data:
                return b"".join(parts)
            n += len(data)
            if n > limit:
                raise _too_large(limit)
            parts.append(data)

    def drain(self):
        """Reads and discards the rest; False if that is impossible (over the cap, broken)."""
        try:
            while self.read():
                pass
            return True
        except ApiError:
            return False


class MultipartStream:
    """Incremental multipart/form-data parser (RFC 7578): feed() pieces of any size;
    each part's headers are parsed and its content is counted and hashed, never kept."""

    MAX_HEADER = 16 * 1024

    def __init__(self, boundary):
        self.delim = b"--" + boundary
        self.body_delim = b"\r\n--" + boundary
        self.buf = b""
        self.state = "preamble"
        self.parts = []
        self.part = None
        self.part_sha = None

    def feed(self, data):
        self.buf += data
        while self._step():
            pass

    def close(self):
        """Raises ValueError unless the closing delimiter was seen."""
        if self.state != "epilogue":
            raise ValueError(f"multipart body ended in state {self.state}")
        return self.parts

    def _step(self):
        buf = self.buf
        if self.state == "preamble":
            i = buf.find(self.delim)
            if i < 0:
                keep = len(self.delim) - 1
                self.buf = buf[-keep:] if len(buf) > keep else buf
                return False
            self.buf = buf[i + len(self.delim):]
            self.state = "delimiter"
            return True
        if self.state == "delimiter":        # right after a delimiter: "--" or CRLF
            if len(buf) < 2:
                return False
            if buf.startswith(b"--"):
                self.state, self.buf = "epilogue", b""
                return False
            i = buf.find(b"\r\n")
            if i < 0:
                if len(buf) > 1024:
                    raise ValueError("garbage after a multipart delimiter")
                return False
            self.buf, self.state = buf[i + 2:], "headers"
            return True
        if self.state == "headers":
            if buf.startswith(b"\r\n"):
                head, rest = b"", buf[2:]
            else:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    if len(buf) > self.MAX_HEADER:
                        raise ValueError("multipart part headers too long")
                    return False
                head, rest = buf[:i], buf[i + 4:]
            self._start_part(head)
            self.buf, self.state = rest, "content"
            return True
        if self.state == "content":
            i = buf.find(self.body_delim)
            if i >= 0:
                self._content(buf[:i])
                self._finish_part()
                self.buf, self.state = buf[i + len(self.body_delim):], "delimiter"
                return True
            safe = len(buf) - (len(self.body_delim) - 1)
            if safe > 0:
                self._content(buf[:safe])
                self.buf = buf[safe:]
            return False
        self.buf = b""                        # epilogue: ignored
        return False

    def _start_part(self, head):
        headers = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        msg = email.message.Message()
        disposition = headers.get("content-disposition")
        name = filename = None
        if disposition:
            msg["Content-Disposition"] = disposition
            name = msg.get_param("name", header="content-disposition")
            if isinstance(name, tuple):
                name = email.utils.collapse_rfc2231_value(name)
            filename = msg.get_filename()
        self.part = {"name": name, "filename": filename,
                     "content_type": headers.get("content-type"), "size": 0, "sha256": None}
        self.part_sha = hashlib.sha256()

    def _content(self, data):
        if data:
            self.part["size"] += len(data)
            self.part_sha.update(data)

    def _finish_part(self):
        self.part["sha256"] = self.part_sha.hexdigest()
        self.parts.append(self.part)
        self.part = self.part_sha = None


def multipart_boundary(content_type):
    """The boundary of a multipart/form-data Content-Type, else None."""
    if not content_type:
        return None
    msg = email.message.Message()
    msg["Content-Type"] = content_type
    if msg.get_content_type() != "multipart/form-data":
        return None
    boundary = msg.get_param("boundary")
    if not isinstance(boundary, str) or not boundary or len(boundary) > 200:
        return None
    return boundary


@dataclass
class Request:
    method: str
    path: str
    query: dict
    headers: dict                # lower-case name -> value (repeated headers joined by ", ")
    body: bytes
    client_address: str
    connection_id: int
    request_on_connection: int
    raw_query: str = ""          # the query string as sent (repeated parameters kept)
    reader: BodyReader | None = None   # streamed routes: the body, read on demand (body is b"")


#: The fake Atlassian API's resources: (product, methods, path regex after the prefix, operation).
#: Under /dc (product unknown) both products' resources are served. Anything else: the echo.
_API_OPS = [(product, methods, re.compile(rx), op) for product, methods, rx, op in (
    ("jira", ("GET",), r"rest/api/(?P<v>2|3|latest)/myself", "myself"),
    ("jira", ("POST",), r"rest/api/(?P<v>2|3|latest)/issue", "issue_create"),
    ("jira", ("GET", "PUT", "DELETE"), r"rest/api/(?P<v>2|3|latest)/issue/(?P<key>[^/]+)", "issue"),
    ("jira", ("POST",), r"rest/api/(?P<v>2|3|latest)/issue/(?P<key>[^/]+)/attachments",
     "issue_attachments"),
    ("jira", ("GET",), r"rest/api/(?P<v>2|3|latest)/attachment/content/(?P<att>[^/]+)", "download"),
    ("jira", ("GET",), r"rest/api/(?P<v>2|3|latest)/attachment/(?P<att>[^/]+)", "attachment"),
    ("confluence", ("GET",), r"rest/api/user/current", "myself"),
    ("confluence", ("GET", "POST"), r"rest/api/content", "content_collection"),
    ("confluence", ("GET", "PUT", "DELETE"), r"rest/api/content/(?P<cid>[^/]+)", "content"),
    ("confluence", ("GET", "POST"), r"rest/api/content/(?P<cid>[^/]+)/child/attachment",
     "content_attachments"),
    ("confluence", ("GET",), r"download/attachments/(?P<cid>[^/]+)/(?P<filename>[^/]+)", "download"),
)]


@dataclass
class Route:
    method: str                  # "*": any method
    pattern: str                 # regex, matched against the whole path
    handler: str                 # name of an App method taking (ctx, **path_groups)
    target: str | None = None    # a FAULT_TARGETS name: logged, counted, fault-injectable; None = control
    stream: bool = False         # the body is not read up front: Request.reader (API routes)


class Context:
    """One request in flight: the request, its log entry and what we learnt about it."""

    def __init__(self, request, route, groups, allowed, entry):
        self.request = request
        self.route = route
        self.groups = groups         # named groups of the route's pattern
        self.allowed = allowed       # methods allowed for the path when no route matched
        self.entry = entry
        self.target = route.target if route else None
        # Control requests are neither logged nor counted; everything else is.
        self.logged = not request.path.startswith("/_control/")
        self.grant_id = None
        self.params = None
        self.ticket = None           # from State.begin, for State.end
        self.started = time.monotonic()
        self.api = None              # API routes: prefix, product, site, rest, operation, ...
        self.cred = None             # API routes: what the Authorization header amounted to
        self.body_loaded = False     # a streamed body was read into request.body

    def read_body(self, limit=MAX_BODY):
        """The whole request body in memory (streamed routes: read now, at most `limit`)."""
        reader = self.request.reader
        if reader is None or self.body_loaded:
            return self.request.body
        self.request.body = reader.read_all(limit)
        self.body_loaded = True
        self.entry["raw_body"] = self.request.body.decode("utf-8", "replace")
        return self.request.body


class App:
    """Routes requests to handlers; applies faults; keeps the log and stats."""

    ROUTES = [
        Route("POST", r"/oauth/token", "token", target="token"),
        Route("POST", r"/oauth2/token", "token", target="token"),
        Route("GET", r"/authorize", "authorize", target="authorize"),
        Route("GET", r"/oauth/authorize", "authorize", target="authorize"),
        Route("GET", r"/rest/oauth2/latest/authorize", "authorize", target="authorize"),
        Route("POST", r"/rest/oauth2/latest/token", "token", target="token"),
        Route("GET", r"/device", "device_page", target="authorize"),
        Route("POST", r"/oauth/device/code", "device_authorization", target="device"),
        Route("POST", r"/oauth/revoke", "revoke", target="revoke"),
        Route("POST", r"/oauth/introspect", "introspect"),
        Route("POST", r"/register", "register", target="register"),
        Route("GET", r"/\.well-known/oauth-authorization-server(?P<tenant>/tenant)?",
              "discovery_oauth", target="discovery"),
        Route("GET", r"/\.well-known/openid-configuration(?P<tenant>/tenant)?",
              "discovery_oidc", target="discovery"),
        Route("GET", r"(?P<tenant>/tenant)/\.well-known/openid-configuration",
              "discovery_oidc", target="discovery"),
        Route("GET", r"/\.well-known/jwks\.json", "jwks", target="discovery"),
        Route("GET", r"/\.well-known/oauth-protected-resource(?P<suffix>/mcp)?",
              "protected_resource_metadata", target="discovery"),
        Route("GET", r"/meta/oauth-protected-resource/mcp", "protected_resource_metadata_alt",
              target="discovery"),
        Route("*", r"/mcp", "mcp", target="mcp"),
        Route("GET", r"/me", "userinfo", target="resource"),
        Route("GET", r"/events", "event_stream", target="resource"),
        Route("GET", r"/oauth/userinfo", "userinfo", target="resource"),
        Route("GET", r"/oauth/token/accessible-resources", "accessible_resources", target="resource"),
        # the fake Atlassian REST API: one route per prefix, dispatched further by API_OPS
        Route("*", r"/ex/(?P<product>jira|confluence)/(?P<cloud_id>[^/]+)(?P<rest>/.*)?", "api_ex",
              target="api_ex", stream=True),
        Route("*", r"/site/(?P<site>[^/]+)(?P<rest>/.*)?", "api_site", target="api_site",
              stream=True),
        Route("*", r"/dc(?P<rest>/.*)?", "api_dc", target="api_dc", stream=True),
        Route("GET", r"/_control/health", "control_health"),
        Route("POST", r"/_control/reset", "control_reset"),
        Route("POST", r"/_control/clients", "control_add_client"),
        Route("GET", r"/_control/clients", "control_list_clients"),
        Route("POST", r"/_control/grants", "control_add_grant"),
        Route("GET", r"/_control/grants", "control_list_grants"),
        Route("GET", r"/_control/grants/(?P<grant_id>[^/]+)", "control_get_grant"),
        Route("POST", r"/_control/grants/(?P<grant_id>[^/]+)/revoke", "control_revoke_grant"),
        Route("POST", r"/_control/codes", "control_add_code"),
        Route("GET", r"/_control/config", "control_get_config"),
        Route("POST", r"/_control/config", "control_set_config"),
        Route("POST", r"/_control/clock", "control_clock"),
        Route("GET", r"/_control/faults", "control_list_faults"),
        Route("POST", r"/_control/faults", "control_add_fault"),
        Route("DELETE", r"/_control/faults", "control_clear_faults"),
        Route("GET", r"/_control/log", "control_log"),
        Route("DELETE", r"/_control/log", "control_clear_log"),
        Route("GET", r"/_control/stats", "control_stats"),
        Route("DELETE", r"/_control/stats", "control_clear_stats"),
        Route("GET", r"/_control/tokens", "control_tokens"),
        Route("GET", r"/_control/device", "control_list_devices"),
        Route("POST", r"/_control/device/approve", "control_device_approve"),
        Route("POST", r"/_control/device/deny", "control_device_deny"),
        Route("POST", r"/_control/device/slow_down", "control_device_slow_down"),
        Route("GET", r"/_control/device/(?P<user_code>[^/]+)", "control_get_device"),
        Route("GET", r"/_control/sites", "control_get_sites"),
        Route("POST", r"/_control/sites", "control_set_sites"),
        Route("GET", r"/_control/api_tokens", "control_list_api_tokens"),
        Route("POST", r"/_control/api_tokens", "control_add_api_token"),
        Route("POST", r"/_control/api_tokens/revoke", "control_revoke_api_token"),
        Route("GET", r"/_control/pats", "control_list_pats"),
        Route("POST", r"/_control/pats", "control_add_pat"),
        Route("POST", r"/_control/pats/revoke", "control_revoke_pat"),
        Route("GET", r"/_control/store", "control_store"),
        Route("POST", r"/_control/gates/(?P<name>[A-Za-z0-9_-]+)", "control_open_gate"),
    ]

    def __init__(self, state, base_url="https://127.0.0.1", ca_file=None):
        self.state = state
        # Trust for this server's own outbound https fetches (client ID metadata documents).
        self.ca_file = ca_file
        # Gates hold a streamed answer until a test opens them (POST /_control/gates/NAME),
        # so a test can see what arrived before the upstream sent the rest.
        self._gates = {}
        self._gates_lock = threading.Lock()
        self.base_url = base_url     # the issuer; main() sets it once the port is known
        self._compiled = [(r, re.compile(r.pattern + r"\Z")) for r in self.ROUTES]

    # -- dispatch --------------------------------------------------------------

    def match(self, method, path):
        """(route, path groups) or (None, allowed methods for that path)."""
        allowed = []
        for route, rx in self._compiled:
            m = rx.match(path)
            if m:
                if route.method in (method, "*"):
                    return route, m.groupdict()
                allowed.append(route.method)
        return None, allowed

    def streams(self, method, path):
        """Whether the route for this request reads its body on demand (Request.reader)."""
        route, _ = self.match(method, path)
        return route is not None and route.stream

    def begin(self, request):
        """Matches the route, creates the log entry, counts the request as in flight."""
        route, groups = self.match(request.method, request.path)
        entry = {
            "time": self.state.now(), "real_time": time.time(),
            "connection": request.connection_id,
            "request_on_connection": request.request_on_connection,
            "client_address": request.client_address,
            "method": request.method, "path": request.path, "query": request.query,
            "headers": request.headers,
            "raw_body": request.body.decode("utf-8", "replace"),
            "content_type": request.headers.get("content-type"),
            "body": None, "endpoint": None, "client_id": None, "client_auth": None,
            "grant_type": None, "refresh_token": None, "refresh_token_status": None,
            "grant_id": None, "fault": None, "status": None, "error": None,
            "issued": None, "delivered": False, "duration": None,
            "target": route.target if route else None,
            "body_size": None, "body_sha256": None, "body_chunked": None,
            "response_bytes": None, "api": None, "auth": None, "credential_kind": None,
        }
        if request.reader is not None:
            entry["raw_body"] = None      # streamed: kept only if a handler reads it into memory
        ctx = Context(request, route, groups if route else {}, None if route else groups, entry)
        if ctx.logged:
            entry["endpoint"] = route.pattern if route else None
            if ctx.target == "token":
                self._peek_token_request(ctx)
            if ctx.target in API_PREFIXES:
                self._api_prepare(ctx)
            ctx.ticket = self.state.begin(ctx.target, ctx.grant_id)
        return ctx

    def respond(self, ctx):
        """Builds the Response (faults applied); may sleep for slow faults."""
        route = ctx.route
        if route is None:
            if ctx.allowed:
                return Response.json(405, {"error": "method_not_allowed"},
                                     headers=[("Allow", ", ".join(sorted(set(ctx.allowed))))])
            return Response.json(404, {"error": "not_found", "path": ctx.request.path})
        handler = getattr(self, route.handler)
        if route.target is None:
            return self._call(handler, ctx)
        if route.target == "token":
            latency = self.state.config["token_latency"]
            if latency:
                time.sleep(latency)
        targets = (route.target,)
        if route.target in API_PREFIXES:
            targets = (route.target, "api")
            latency = self.state.config["api_latency"]
            if latency:
                time.sleep(latency)
        fault = self.state.pop_fault(targets, ctx.request.method, ctx.request.path)
        if fault is not None:
            ctx.entry["fault"] = fault.mode
            if fault.mode not in PROCESSING_FAULTS:
                return self._fault_response(fault, ctx)
            if fault.mode == "slow":
                time.sleep(fault.delay)
        resp = self._call(handler, ctx)
        if fault is not None and fault.mode == "drop_after_rotate":
            resp.action = "drop"
            resp.rst = fault.rst
        return resp

    def complete(self, ctx, resp, delivered):
        """Finishes the log entry and the in-flight accounting (non-control requests)."""
        if not ctx.logged:
            return
        e = ctx.entry
        e["status"] = None if resp is None or resp.action == "drop" else resp.status
        e["error"] = e["error"] or (resp.error if resp else None)
        reader = ctx.request.reader
        if reader is not None:
            e["body_size"] = reader.total
            e["body_sha256"] = reader.sha.hexdigest() if reader.done else None
            e["body_chunked"] = reader.chunked
        else:
            e["body_size"] = len(ctx.request.body)
            e["body_sha256"] = hashlib.sha256(ctx.request.body).hexdigest()
            e["body_chunked"] = "transfer-encoding" in ctx.request.headers
        if resp is not None and resp.action != "drop":
            if resp.stream is not None:
                e["response_bytes"] = resp.sent_bytes
                e["response_sha256"] = resp.sent_sha256
            else:
                e["response_bytes"] = len(resp.body)
        e["delivered"] = delivered
        e["duration"] = round(time.monotonic() - ctx.started, 6)
        self.state.end(ctx.target, ctx.grant_id, e, ctx.ticket)

    def _call(self, handler, ctx):
        try:
            return handler(ctx, **ctx.groups)
        except ApiError as err:
            ctx.entry["error"] = err.error
            return err.response(no_store=ctx.target in ("token", "device", "revoke", "register"))

    # -- faults --------------------------------------------------------------------

    def _fault_response(self, fault, ctx):
        mode = fault.mode
        scope = None
        if ctx.grant_id:
            with self.state.lock:
                g = self.state.grants.get(ctx.grant_id)
                scope = g.scope if g else None
        retry = [("Retry-After", str(fault.retry_after))] if fault.retry_after is not None else []
        if mode == "invalid_grant_standard":
            return ApiError(400, "invalid_grant", "refresh token is invalid").response()
        if mode == "invalid_grant_atlassian":
            return ApiError(403, "invalid_grant", ATLASSIAN_INVALID_GRANT).response()
        if mode == "invalid_client":
            return invalid_client("client authentication failed").response()
        if mode == "invalid_token":
            if ctx.api is not None:
                return self._api_unauthorized(ctx, forced=True)
            return self._bearer_challenge("invalid_token", "the access token is invalid")
        if mode == "insufficient_scope":
            # RFC 6750 §3.1 step-up: 403 naming the scope the call needs.
            challenge = (f'Bearer realm="{SERVER_NAME}", error="insufficient_scope", '
                         f'scope="{INSUFFICIENT_SCOPE_NEEDED}", '
                         'error_description="the call needs more scope"')
            resp = Response.json(403, {"error": "insufficient_scope"}, headers=[("WWW-Authenticate", challenge)])
            resp.error = "insufficient_scope"
            return resp
        if mode == "rate_limited":
            if fault.body == "empty":
                resp = Response(429, b"", retry)
            else:
                resp = Response.json(429, {"error": "rate_limited",
                                           "error_description": "Too many requests"}, headers=retry)
            resp.error = "rate_limited"
            return resp
        if mode in ("server_error_500", "bad_gateway_502", "unavailable_503"):
            status, reason = {"server_error_500": (500, "Internal Server Error"),
                              "bad_gateway_502": (502, "Bad Gateway"),
                              "unavailable_503": (503, "Service Temporarily Unavailable")}[mode]
            return Response.html(status, html_error_page(status, reason),
                                 headers=retry if status == 503 else [])
        if mode == "html_200":
            return Response.html(200, SSO_LOGIN_PAGE)
        if mode == "huge_body":
            # A well-formed but 2 MiB answer: clients must cap what they read.
            return Response.json(200, {"error": "padding", "padding": "x" * (2 * 1024 * 1024)})
        if mode == "drop":
            return Response(0, action="drop", rst=fault.rst)
        # The rest answer with a (broken) token response whose tokens are bogus.
        if ctx.target == "token":
            body = self.state.bogus_token_body(scope, "fault:" + mode)
        else:
            body = {"sub": "fake-user", "note": "fault response"}
        if mode == "missing_access_token":
            del body["access_token"]
        elif mode == "expires_in_string":
            body["expires_in"] = str(body["expires_in"])
        elif mode == "expires_in_negative":
            body["expires_in"] = -5
        elif mode == "expires_in_absent":
            del body["expires_in"]
        elif mode == "expires_in_garbage":
            body["expires_in"] = "soon"
        resp = Response.json(200, body, no_store=True)
        if mode == "truncated_json":
            resp.body = resp.body[:len(resp.body) // 2]
        elif mode == "reset_mid_body":
            resp.action = "truncate"
            resp.send_bytes = len(resp.body) // 2
            resp.rst = fault.rst
        return resp

    # -- the token endpoint -----------------------------------------------------------

    @staticmethod
    def parse_token_body(request):
        """Form (RFC 6749) or JSON (Atlassian) body -> dict of str -> str."""
        ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if ctype == "application/x-www-form-urlencoded":
            try:
                text = request.body.decode("utf-8")
                pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                                               errors="strict")
            except (UnicodeDecodeError, ValueError):
                raise invalid_request("malformed form body") from None
            params = {}
            for k, v in pairs:
                if k in params:
                    raise invalid_request(f"parameter {k!r} repeated")
                params[k] = v
            return params
        if ctype == "application/json":
            try:
                obj = json.loads(request.body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise invalid_request("malformed JSON body") from None
            if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
                raise invalid_request("JSON body must be an object of strings")
            return obj
        raise invalid_request("Content-Type must be application/x-www-form-urlencoded "
                              "or application/json")

    def _peek_token_request(self, ctx):
        """Fills the log entry from the body without changing anything."""
        e = ctx.entry
        try:
            params = self.parse_token_body(ctx.request)
        except ApiError:
            return
        ctx.params = params
        e["body"] = params
        e["grant_type"] = params.get("grant_type")
        e["refresh_token"] = params.get("refresh_token")
        e["client_id"] = params.get("client_id")
        e["resource"] = params.get("resource")
        ctx.grant_id, status = self.state.peek_grant_id(params)
        e["grant_id"] = ctx.grant_id
        e["refresh_token_status"] = status

    def token(self, ctx):
        e = ctx.entry
        params = self.parse_token_body(ctx.request)
        client, method = self.state.authenticate(ctx.request.headers.get("authorization"), params)
        e["client_id"], e["client_auth"] = client.client_id, method
        grant_type = params.get("grant_type")
        if not grant_type:
            raise invalid_request("grant_type missing")
        if grant_type == "refresh_token":
            presented = params.get("refresh_token")
            if not presented:
                raise invalid_request("refresh_token missing")
            if self.state.config["data_center"]:
                # Data Center checks the redirect URI on a refresh too, and answers a
                # bare invalid_grant without it.
                e["redirect_uri"] = params.get("redirect_uri")
                uri = params.get("redirect_uri")
                if not uri or (client.redirect_uris and uri not in client.redirect_uris):
                    raise ApiError(400, "invalid_grant")
            status, grant_id, result = self.state.refresh(client, presented, params.get("scope"))
            e["refresh_token_status"], e["grant_id"] = status, grant_id
        elif grant_type == "authorization_code":
            if not params.get("code"):
                raise invalid_request("code missing")
            e["resource"] = params.get("resource")
            grant_id, result = self.state.exchange_code(client, params["code"],
                                                        params.get("redirect_uri"),
                                                        params.get("code_verifier"),
                                                        params.get("resource"))
            e["grant_id"] = grant_id
        elif grant_type == DEVICE_GRANT:
            if not params.get("device_code"):
                raise invalid_request("device_code missing")
            dc, result = self.state.poll_device(client, params["device_code"])
            if dc is not None:
                e["grant_id"] = dc.grant_id
                e["device"] = {"user_code": dc.user_code, "poll": dc.polls,
                               "interval": dc.interval, "slow_downs": dc.slow_downs,
                               "answer": dc.answers[-1] if dc.answers else None}
        else:
            raise ApiError(400, "unsupported_grant_type", f"grant_type {grant_type!r} not supported")
        if isinstance(result, ApiError):
            raise result
        e["issued"] = {k: result[k] for k in ("access_token", "refresh_token") if k in result}
        return Response.json(200, result, no_store=True)

    # -- resource API ----------------------------------------------------------------------

    @staticmethod
    def _bearer_challenge(error=None, description=None):
        challenge = f'Bearer realm="{SERVER_NAME}"'
        if error:
            challenge += f', error="{error}", error_description="{description}"'
        resp = Response.json(401, {"error": error or "unauthorized",
                                   "error_description": description or "Bearer token required"},
                             headers=[("WWW-Authenticate", challenge)])
        resp.error = error or "unauthorized"
        return resp

    @staticmethod
    def _bearer_token(ctx):
        """The token of an ``Authorization: Bearer`` header, or None."""
        auth = ctx.request.headers.get("authorization", "")
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return token.strip()

    def _valid_bearer(self, ctx):
        """(grant, access token, None) for a valid ``Authorization: Bearer`` token, or
        (None, None, the 401 answer). A known token's grant goes into the request log
        either way."""
        token = self._bearer_token(ctx)
        if token is None:
            return None, None, self._bearer_challenge()
        status, grant, at = self.state.check_access_token(token)
        if grant is not None:
            ctx.entry["grant_id"] = grant.grant_id
        if status != "valid":
            return None, None, self._bearer_challenge("invalid_token", _ACCESS_ERRORS[status])
        return grant, at, None

    def gate(self, name):
        with self._gates_lock:
            return self._gates.setdefault(name, threading.Event())

    def control_open_gate(self, ctx, name):
        self.gate(name).set()
        return Response.json(200, {"opened": name})

    def event_stream(self, ctx):
        """Server-sent events for a valid bearer token: `count` events (default 3); with
        `gate=NAME` the first goes out at once and the rest only once the gate opens."""
        token = self._bearer_token(ctx)
        if token is None:
            return self._bearer_challenge()
        status, _, _ = self.state.check_access_token(token)
        if status != "valid":
            return self._bearer_challenge("invalid_token", _ACCESS_ERRORS[status])
        q = ctx.request.query
        count = int(q["count"]) if q.get("count", "").isdigit() else 3
        gate = self.gate(q["gate"]) if q.get("gate") else None

        def events():
            for n in range(1, count + 1):
                if n == 2 and gate is not None:
                    gate.wait(60)
                yield f"id: {n}\nevent: tick\ndata: {{\"n\": {n}}}\n\n".encode()
        return Response(200, headers=[("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")],
                        stream=events(), stream_length=None)

    def userinfo(self, ctx):
        grant, at, refused = self._valid_bearer(ctx)
        if refused is not None:
            return refused
        return Response.json(200, {"sub": grant.sub, "account_id": grant.sub,
                                   "grant_id": grant.grant_id, "client_id": grant.client_id,
                                   "scope": at.scope, "expires_at": at.expires_at,
                                   "email": f"{grant.sub}@example.test", "name": "Fake User"})

    # -- authorization endpoint ---------------------------------------------------------------

    @staticmethod
    def _page(status, title, text):
        body = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
                f"</title></head>\n<body><h1>{html.escape(title)}</h1>\n<p>{html.escape(text)}</p>"
                f"</body></html>\n")
        return Response.html(status, body, headers=[("Cache-Control", "no-store")])

    @staticmethod
    def _redirect(uri, params):
        sep = "&" if urllib.parse.urlsplit(uri).query else ("" if uri.endswith("?") else "?")
        location = uri + sep + urllib.parse.urlencode(params)
        resp = Response.html(302, "<html><body>Redirecting</body></html>\n",
                             headers=[("Location", location), ("Cache-Control", "no-store")])
        return resp

    def authorize(self, ctx):
        """GET /authorize: RFC 6749 §4.1.1 with PKCE (S256 only) and RFC 8707 resource."""
        pairs = urllib.parse.parse_qsl(ctx.request.raw_query, keep_blank_values=True)
        values = {}
        for k, v in pairs:
            values.setdefault(k, []).append(v)
        info = {"param_names": [k for k, _ in pairs],
                "params": {k: (v[0] if len(v) == 1 else v) for k, v in values.items()
                           if k in AUTHORIZE_LOGGED},
                "outcome": None}
        ctx.entry["authorize"] = info

        def one(name):
            v = values.get(name)
            return v[0] if v else None

        def page(outcome, text):
            info["outcome"] = ctx.entry["error"] = outcome
            return self._page(400, "Authorization error", text)

        client_id, redirect_uri, state = one("client_id"), one("redirect_uri"), one("state")
        ctx.entry["client_id"] = client_id
        # Errors about the client or the redirect URI are shown, never redirected (§4.1.2.1).
        if len(values.get("client_id", [])) > 1 or len(values.get("redirect_uri", [])) > 1:
            return page("invalid_request", "client_id and redirect_uri must not be repeated.")
        if self.state.config["client_id_metadata_documents"] and is_metadata_document_url(client_id):
            client, problem = self._metadata_document_client(client_id, redirect_uri)
            ctx.entry["client_metadata_document"] = {"url": client_id, "outcome": problem or "accepted"}
            if problem:
                self.state.count("metadata_document_refusals")
                return page("invalid_client_metadata", f"The client ID metadata document {client_id} {problem}.")
        else:
            client = self.state.client_snapshot(client_id)
        if client is None:
            return page("unknown_client", "Unknown client_id." if client_id else "client_id missing.")
        if redirect_uri is None:
            if len(client.redirect_uris) != 1:
                return page("invalid_redirect_uri", "redirect_uri missing.")
            redirect_uri = client.redirect_uris[0]
        elif client.redirect_uris:
            if redirect_uri not in client.redirect_uris:
                return page("invalid_redirect_uri", "redirect_uri is not registered for this client.")
        else:
            problem = redirect_uri_problem(redirect_uri)
            if problem:
                return page("invalid_redirect_uri", f"redirect_uri {problem}.")

        def error(code, description):
            info["outcome"] = ctx.entry["error"] = code
            params = {"error": code, "error_description": description}
            if state is not None:
                params["state"] = state
            return self._redirect(redirect_uri, params)

        repeated = sorted(k for k, v in values.items() if len(v) > 1 and k != "resource")
        if repeated:
            return error("invalid_request", f"repeated parameters: {', '.join(repeated)}")
        if one("response_type") != "code":
            return error("unsupported_response_type", "only response_type=code is supported")
        challenge, method = one("code_challenge"), one("code_challenge_method")
        if challenge is not None:
            if method != "S256":
                return error("invalid_request", "code_challenge_method must be S256 "
                             "(plain is not accepted)")
            if not PKCE_RE.fullmatch(challenge):
                return error("invalid_request", "code_challenge is malformed")
        elif method is not None:
            return error("invalid_request", "code_challenge_method without code_challenge")
        elif self.state.config["pkce_required"]:
            return error("invalid_request", "PKCE required: code_challenge missing")
        resources = values.get("resource", [])
        for r in resources:
            split = urllib.parse.urlsplit(r)
            if not split.scheme or not split.netloc or split.fragment:
                return error("invalid_target", "resource must be an absolute URI without a fragment")
        if self.state.config["consent"] == "deny":
            self.state.count("consent_denied")
            return error("access_denied", "The user denied consent")
        resource = None if not resources else resources[0] if len(resources) == 1 else resources
        scope = one("scope") or ""
        if (self.state.config["offline_needs_consent"]
                and "consent" not in (one("prompt") or "").split()):
            # OIDC Core §11: without prompt=consent, offline_access is silently dropped.
            scope = " ".join(s for s in scope.split() if s != "offline_access")
        code = self.state.create_code(client.client_id, scope, redirect_uri, challenge,
                                      method, None, resource, source="authorize")["code"]
        info["outcome"] = "code"
        ctx.entry["issued"] = {"code": code}
        params = {"code": code}
        if state is not None:
            params["state"] = state
        cfg = self.state.config
        if cfg["iss_override"] is not None:
            params["iss"] = cfg["iss_override"]
        elif cfg["authorization_response_iss"]:
            params["iss"] = cfg["issuer_override"] or self.base_url
        return self._redirect(redirect_uri, params)

    def _metadata_document_client(self, url, redirect_uri):
        """Fetches and checks a client ID metadata document, as an authorization server that
        supports them does at every authorization request: (Client, None) or (None, why not).
        The document must be JSON whose client_id is its own URL, list the redirect URI the
        request uses, and describe a public client (no secret)."""
        self.state.count("metadata_document_fetches")
        context = ssl.create_default_context(cafile=self.ca_file)
        request = urllib.request.Request(url, headers={"Accept": "application/json",
                                                       "User-Agent": "fake_upstream"})
        try:
            with urllib.request.urlopen(request, context=context, timeout=5) as r:
                if r.status != 200:
                    return None, f"could not be fetched (HTTP {r.status})"
                raw = r.read(MAX_METADATA_DOCUMENT + 1)
        except urllib.error.HTTPError as e:
            return None, f"could not be fetched (HTTP {e.code})"
        except (urllib.error.URLError, OSError, ssl.SSLError) as e:
            return None, f"could not be fetched ({type(e).__name__})"
        if len(raw) > MAX_METADATA_DOCUMENT:
            return None, f"is larger than {MAX_METADATA_DOCUMENT} bytes"
        try:
            doc = json.loads(raw)
        except ValueError:
            return None, "is not JSON"
        if not isinstance(doc, dict):
            return None, "is not a JSON object"
        if doc.get("client_id") != url:
            return None, "names another client_id than its own URL"
        uris = doc.get("redirect_uris")
        if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
            return None, "has no redirect_uris"
        if redirect_uri is None or redirect_uri not in uris:
            return None, "does not list the redirect_uri of this request"
        if "client_secret" in doc or "client_secret_expires_at" in doc:
            return None, "holds a client_secret, which such documents must not"
        if doc.get("token_endpoint_auth_method", "none") != "none":
            return None, "asks for a token_endpoint_auth_method this server does not offer (only none)"
        return self.state.metadata_document_client(url, doc), None

    def device_page(self, ctx):
        """The verification URI: a page to look at. Approval is a control call."""
        user_code = ctx.request.query.get("user_code", "")
        return self._page(200, "Device sign-in",
                          f"Enter the code shown on your device. Code: {user_code}".strip())

    # -- device authorization (RFC 8628) -----------------------------------------------------

    def device_authorization(self, ctx):
        params = self.parse_token_body(ctx.request)
        ctx.entry["body"] = params
        client, method = self.state.authenticate(ctx.request.headers.get("authorization"), params)
        ctx.entry["client_id"], ctx.entry["client_auth"] = client.client_id, method
        resource = params.get("resource")
        if resource is not None:
            split = urllib.parse.urlsplit(resource)
            if not split.scheme or not split.netloc or split.fragment:
                raise ApiError(400, "invalid_target", "resource must be an absolute URI")
        dc = self.state.create_device_code(client, params.get("scope"), resource)
        ctx.entry["device"] = {"user_code": dc.user_code, "interval": dc.interval}
        ctx.entry["resource"] = resource
        verification = self.base_url + "/device"
        return Response.json(200, {
            "device_code": dc.device_code, "user_code": dc.user_code,
            "verification_uri": verification,
            "verification_uri_complete": verification + "?" + urllib.parse.urlencode(
                {"user_code": dc.user_code}),
            "expires_in": self.state.config["device_expires_in"], "interval": dc.interval},
            no_store=True)

    # -- revocation (RFC 7009) and registration (RFC 7591) -----------------------------------

    def revoke(self, ctx):
        params = self.parse_token_body(ctx.request)
        ctx.entry["body"] = params
        client, method = self.state.authenticate(ctx.request.headers.get("authorization"), params)
        ctx.entry["client_id"], ctx.entry["client_auth"] = client.client_id, method
        token = params.get("token")
        if not token:
            raise invalid_request("token missing")
        kind, grant_id, err = self.state.revoke_token(client, token)
        ctx.entry["grant_id"] = grant_id
        ctx.entry["revocation"] = {"token_type_hint": params.get("token_type_hint"),
                                   "token_kind": kind, "grant_id": grant_id}
        if err is not None:
            raise err
        return Response(200, b"", [("Cache-Control", "no-store")])

    def register(self, ctx):
        try:
            meta = json.loads(ctx.request.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ApiError(400, "invalid_client_metadata", "body must be a JSON object") from None
        if not isinstance(meta, dict):
            raise ApiError(400, "invalid_client_metadata", "body must be a JSON object")
        ctx.entry["body"] = meta
        body = self.state.register_dynamic_client(meta)
        ctx.entry["client_id"] = body["client_id"]
        ctx.entry["registration"] = {"client_id": body["client_id"],
                                     "token_endpoint_auth_method": body["token_endpoint_auth_method"],
                                     "redirect_uris": body["redirect_uris"]}
        return Response.json(201, body, no_store=True)

    # -- discovery (RFC 8414, OIDC) and protected-resource metadata (RFC 9728) -----------------

    def _metadata(self, tenant, oidc):
        cfg = self.state.config
        b = self.base_url
        issuer = cfg["issuer_override"] or (b + "/tenant" if tenant else b)
        doc = {
            "issuer": issuer,
            "authorization_endpoint": b + "/authorize",
            "token_endpoint": b + "/oauth/token",
            "device_authorization_endpoint": b + "/oauth/device/code",
            "revocation_endpoint": b + "/oauth/revoke",
            "registration_endpoint": b + "/register",
            "userinfo_endpoint": b + "/me",
            "scopes_supported": list(cfg["scopes_supported"]),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token", DEVICE_GRANT],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
        }
        if oidc:
            doc.update({"jwks_uri": b + "/.well-known/jwks.json",
                        "subject_types_supported": ["public"],
                        "id_token_signing_alg_values_supported": ["RS256"]})
        if cfg["authorization_response_iss"]:
            doc["authorization_response_iss_parameter_supported"] = True
        if cfg["client_id_metadata_documents"]:
            doc["client_id_metadata_document_supported"] = True
        for name in cfg["omit_endpoints"]:
            doc.pop(name, None)
        if "device_authorization_endpoint" not in doc:
            doc["grant_types_supported"].remove(DEVICE_GRANT)
        return doc

    def _not_found(self, ctx):
        return Response.json(404, {"error": "not_found", "path": ctx.request.path})

    def discovery_oauth(self, ctx, tenant=None):
        if self.state.config["discovery"] not in ("both", "oauth_only"):
            return self._not_found(ctx)
        return Response.json(200, self._metadata(bool(tenant), oidc=False))

    def discovery_oidc(self, ctx, tenant=None):
        if self.state.config["discovery"] not in ("both", "oidc_only"):
            return self._not_found(ctx)
        return Response.json(200, self._metadata(bool(tenant), oidc=True))

    def jwks(self, ctx):
        return Response.json(200, {"keys": []})

    @property
    def mcp_resource(self):
        return self.base_url + "/mcp"

    def prm_url(self):
        """Where the MCP server's 401 challenge points (resource_metadata)."""
        if self.state.config["prm_via_challenge_only"]:
            return self.base_url + "/meta/oauth-protected-resource/mcp"
        return self.base_url + "/.well-known/oauth-protected-resource/mcp"

    def _prm_document(self):
        cfg = self.state.config
        server = self.base_url + ("/tenant" if cfg["prm_authorization_server"] == "tenant" else "")
        return {"resource": self.mcp_resource, "authorization_servers": [server],
                "scopes_supported": list(cfg["scopes_supported"]),
                "bearer_methods_supported": ["header"], "resource_name": "fake MCP server"}

    def protected_resource_metadata(self, ctx, suffix=None):
        if self.state.config["prm_via_challenge_only"]:
            return self._not_found(ctx)
        return Response.json(200, self._prm_document())

    def protected_resource_metadata_alt(self, ctx):
        return Response.json(200, self._prm_document())

    def mcp(self, ctx):
        """The MCP server (any method): wants a token bound to BASE/mcp (RFC 8707, MCP auth)."""
        meta = f'resource_metadata="{self.prm_url()}"'

        def challenge(error=None, description=None):
            value = "Bearer " + (f'error="{error}", error_description="{description}", '
                                 if error else "") + meta
            resp = Response.json(401, {"error": error or "unauthorized",
                                       "error_description": description or "Bearer token required"},
                                 headers=[("WWW-Authenticate", value)])
            resp.error = error or "unauthorized"
            return resp

        token = self._bearer_token(ctx)
        if token is None:
            return challenge()
        status, grant, _ = self.state.check_access_token(token)
        if grant is not None:
            ctx.entry["grant_id"] = grant.grant_id
        if status != "valid":
            return challenge("invalid_token", f"the access token is {status.replace('_', ' ')}")
        if not _resource_matches(grant.resource, self.mcp_resource):
            return challenge("invalid_token", "the access token is not for this resource")
        answer = {"jsonrpc": "2.0"}
        try:
            request = json.loads(ctx.request.body or b"null")
        except ValueError:
            request = None
        if isinstance(request, dict) and "id" in request:
            answer["id"] = request["id"]
        answer["result"] = {"ok": True}
        return Response.json(200, answer)

    def introspect(self, ctx):
        """RFC 7662 introspection, for resource servers the tests run (the MCP SDK servers):
        ``active`` with scope, client_id, exp (fake clock) and aud (the grant's RFC 8707
        resource) for a valid access token; ``{"active": false}`` for anything else."""
        form = urllib.parse.parse_qs(ctx.request.body.decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0]
        status, grant, at = self.state.check_access_token(token)
        if status != "valid":
            return Response.json(200, {"active": False})
        return Response.json(200, {"active": True, "token_type": "Bearer", "scope": at.scope,
                                   "client_id": grant.client_id, "sub": grant.sub,
                                   "exp": int(at.expires_at), "aud": grant.resource})

    # -- Atlassian accessible resources ------------------------------------------------------

    def accessible_resources(self, ctx):
        grant, at, refused = self._valid_bearer(ctx)
        if refused is not None:
            return refused
        sites = [{"id": site["id"], "url": site["url"], "name": site["name"],
                  "scopes": site.get("scopes", at.scope.split()),
                  "avatarUrl": site.get("avatarUrl", SITE_AVATAR)}
                 for site in self.state.get_sites()]
        return Response.json(200, sites)

    # -- the fake Atlassian REST API (/ex, /site, /dc) ------------------------------------------

    def _api_prepare(self, ctx):
        """Fills ctx.api and ctx.cred (read-only) for a request under /ex, /site or /dc."""
        g = ctx.groups
        rest = g.get("rest") or ""
        rest = rest[1:] if rest.startswith("/") else rest
        prefix = API_PREFIXES[ctx.target]
        site = cloud_id = None
        def first_segment(*names):
            for name in names:
                if rest == name or rest.startswith(name + "/"):
                    return name, rest[len(name) + 1:]
            return None, rest

        if prefix == "ex":
            product, cloud_id = g["product"], g["cloud_id"]
            base_path, accept = f"/ex/{product}/{cloud_id}", "oauth"
            if product == "confluence":      # the gateway takes .../CLOUDID/wiki/rest/... too
                wiki, rest = first_segment("wiki")
                base_path += "/wiki" if wiki else ""
        elif prefix == "site":
            site = g["site"]
            base_path, accept = "/site/" + site, "api_token"
            wiki, rest = first_segment("wiki")
            product = "confluence" if wiki else "jira"
            base_path += "/wiki" if wiki else ""
        else:
            # /dc serves both products; BASE/dc/jira and BASE/dc/confluence (or /dc/wiki)
            # pin one, so a test can give tokend distinct jira_base and confluence_base.
            seg, rest = first_segment("jira", "confluence", "wiki")
            product = {"jira": "jira", "confluence": "confluence", "wiki": "confluence"}.get(seg)
            base_path, accept = "/dc" + (f"/{seg}" if seg else ""), "pat"
        ctx.api = {"prefix": prefix, "product": product, "site": site, "cloud_id": cloud_id,
                   "rest": rest, "base_url": self.base_url + base_path, "operation": None}
        ctx.cred = self._api_credential(ctx.request.headers.get("authorization"), accept)
        e = ctx.entry
        e["api"], e["auth"] = ctx.api, ctx.cred
        e["credential_kind"] = ctx.cred["kind"] if ctx.cred["valid"] else None
        if ctx.cred.get("grant_id"):
            e["grant_id"] = ctx.cred["grant_id"]

    def _api_credential(self, header, accept):
        """What an Authorization header amounts to for a prefix that accepts `accept`
        ("oauth": Bearer access token, "api_token": Basic email:token, "pat": Bearer PAT).
        No secret in the result: a fingerprint stands for the token."""
        cred = {"expected": accept, "scheme": None, "kind": None, "valid": False,
                "status": "missing", "fingerprint": None, "who": None}
        if not header or not header.strip():
            return cred
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        cred["scheme"] = scheme
        if value:
            cred["fingerprint"] = fingerprint(value)
        if scheme.lower() != ("basic" if accept == "api_token" else "bearer") or not value:
            cred["status"] = "wrong_scheme" if value else "malformed"
            return cred
        who = None
        if accept == "api_token":
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                decoded = ""
            email_addr, sep, token = decoded.partition(":")
            if not sep or not email_addr or not token:
                cred["status"] = "malformed"
                return cred
            cred["email"], cred["fingerprint"] = email_addr, fingerprint(token)
            status, rec = self.state.check_api_token(email_addr, token)
            if rec:
                who = {"account_id": rec["account_id"], "email": rec["email"],
                       "display_name": rec["display_name"]}
        elif accept == "pat":
            status, rec = self.state.check_pat(value)
            if rec:
                who = {"account_id": "dc-" + rec["user"], "name": rec["user"], "email": rec["email"],
                       "display_name": rec["display_name"]}
        else:
            status, grant, at = self.state.check_access_token(value)
            if grant is not None:
                cred["grant_id"], cred["client_id"] = grant.grant_id, grant.client_id
                who = {"account_id": grant.sub, "email": f"{grant.sub}@example.test",
                       "display_name": "Fake User", "scope": at.scope}
        cred["status"] = status
        if status == "valid":
            cred["valid"], cred["kind"], cred["who"] = True, accept, who
        return cred

    def _api_unauthorized(self, ctx, forced=False):
        """401 in the style of the prefix, with WWW-Authenticate (forced: a fault)."""
        api, cred = ctx.api, ctx.cred
        presented = forced or (cred is not None and cred["scheme"] is not None)
        if api["prefix"] == "site":
            challenge = f'Basic realm="{SERVER_NAME}"'
        else:
            challenge = f'Bearer realm="{SERVER_NAME}"'
            if presented:
                challenge += ', error="invalid_token", error_description="the credential is not valid"'
        message = "You are not authenticated. Authentication required to perform this operation."
        if api["prefix"] == "ex":
            body = {"code": 401, "message": "Unauthorized"}
        elif api["product"] == "confluence":
            body = {"statusCode": 401, "message": message,
                    "data": {"authorized": False, "valid": True, "errors": [], "successful": False}}
        else:
            body = {"errorMessages": [message], "errors": {}}
        resp = Response.json(401, body, headers=[("WWW-Authenticate", challenge)])
        resp.error = "invalid_token" if presented else "unauthorized"
        return resp

    _ATL_ERRORS = {400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
                   409: "conflict", 415: "unsupported_media_type"}

    @classmethod
    def _atl_error(cls, ctx, status, message, errors=None, error=None, headers=None):
        """An error as Jira ({"errorMessages", "errors"}) or Confluence ({"statusCode", "message"})."""
        if ctx.api["product"] == "confluence":
            body = {"statusCode": status, "message": message or ""}
        else:
            body = {"errorMessages": [message] if message else [], "errors": errors or {}}
        resp = Response.json(status, body, headers=headers)
        resp.error = error or cls._ATL_ERRORS.get(status, "error")
        return resp

    def api_ex(self, ctx, product, cloud_id, rest=None):
        return self._api(ctx)

    def api_site(self, ctx, site, rest=None):
        return self._api(ctx)

    def api_dc(self, ctx, rest=None):
        return self._api(ctx)

    def _api(self, ctx):
        api, cred = ctx.api, ctx.cred
        if not cred["valid"] and self.state.config["api_auth_required"]:
            return self._api_unauthorized(ctx)
        if api["prefix"] == "ex":
            site = next((x for x in self.state.get_sites() if x["id"] == api["cloud_id"]), None)
            if site is None:
                resp = Response.json(404, {"code": 404, "message": "Not Found",
                                           "detail": "no site with this cloud id"})
                resp.error = "unknown_cloud_id"
                return resp
            api["site"] = site["name"]
        ns = "dc" if api["prefix"] == "dc" else "site:" + api["site"]
        method = "GET" if ctx.request.method == "HEAD" else ctx.request.method
        allowed = []
        for product, methods, rx, op in _API_OPS:
            if api["product"] not in (None, product):
                continue
            m = rx.fullmatch(api["rest"])
            if not m:
                continue
            if method not in methods:
                allowed += methods
                continue
            api["product"] = product
            api["operation"] = f"{product}.{op}"
            return getattr(self, "_op_" + op)(ctx, ns, **m.groupdict())
        if allowed:
            if "GET" in allowed:
                allowed.append("HEAD")
            return self._atl_error(ctx, 405, f"HTTP method {ctx.request.method} is not supported "
                                   "by this resource", headers=[("Allow", ", ".join(sorted(set(allowed))))])
        api["operation"] = "echo"
        return self._op_echo(ctx, ns)

    def _json_object(self, ctx):
        """The (streamed) request body as a JSON object, or None."""
        data = ctx.read_body()
        try:
            obj = json.loads(data)
        except ValueError:
            return None
        ctx.entry["body"] = obj
        return obj if isinstance(obj, dict) else None

    def _op_myself(self, ctx, ns, v=None):
        """Jira rest/api/{2,3}/myself, Confluence rest/api/user/current."""
        cred, api = ctx.cred, ctx.api
        if not cred["valid"]:
            return self._api_unauthorized(ctx)
        who = cred["who"]
        account = urllib.parse.quote(who["account_id"])
        if api["product"] == "confluence":
            body = {"type": "known", "accountId": who["account_id"], "accountType": "atlassian",
                    "email": who["email"], "publicName": who["display_name"],
                    "displayName": who["display_name"],
                    "_links": {"self": f"{api['base_url']}/rest/api/user?accountId={account}"}}
            if api["prefix"] == "dc":
                body.update(username=who["name"], userKey=who["name"])
        else:
            body = {"self": f"{api['base_url']}/rest/api/{v}/user?accountId={account}",
                    "accountId": who["account_id"], "accountType": "atlassian",
                    "emailAddress": who["email"], "displayName": who["display_name"],
                    "active": True, "timeZone": "Etc/UTC", "locale": "en_US"}
            if api["prefix"] == "dc":
                body.update(name=who["name"], key=who["name"])
        body["fakeUpstream"] = {"credential_kind": cred["kind"], "grant_id": cred.get("grant_id"),
                                "fingerprint": cred["fingerprint"]}
        return Response.json(200, body)

    # Jira issues

    @staticmethod
    def _find_issue(space, key):
        """By id or key (call with the lock held)."""
        issue = space["issues"].get(key)
        if issue is None:
            issue = next((i for i in space["issues"].values() if i["key"] == key), None)
        return issue

    @staticmethod
    def _issue_view(ctx, v, issue):
        return {"id": issue["id"], "key": issue["key"],
                "self": f"{ctx.api['base_url']}/rest/api/{v}/issue/{issue['id']}",
                "fields": issue["fields"]}

    def _op_issue_create(self, ctx, ns, v):
        obj = self._json_object(ctx)
        if obj is None:
            return self._atl_error(ctx, 400, "The request body must be a JSON object.")
        fields = obj.get("fields")
        if not isinstance(fields, dict):
            return self._atl_error(ctx, 400, None, {"fields": "Field 'fields' is required."})
        if not fields.get("summary"):
            return self._atl_error(ctx, 400, None,
                                   {"summary": "You must specify a summary of the issue."})
        project = fields.get("project") if isinstance(fields.get("project"), dict) else {}
        pkey = str(project.get("key") or (f"P{project['id']}" if project.get("id") else "TEST"))
        with self.state.lock:
            space = self.state.namespace(ns)
            n = space["project_seq"].get(pkey, 0) + 1
            space["project_seq"][pkey] = n
            issue = {"id": str(10000 + self.state.next_api_id()), "key": f"{pkey}-{n}",
                     "fields": copy.deepcopy(fields), "created": self.state.now()}
            space["issues"][issue["id"]] = issue
            self.state._save()
            view = self._issue_view(ctx, v, issue)
        ctx.api["object"] = issue["key"]
        body = dict(obj)
        body.update(id=view["id"], key=view["key"], self=view["self"])
        return Response.json(201, body)

    def _op_issue(self, ctx, ns, v, key):
        key = urllib.parse.unquote(key)
        ctx.api["object"] = key
        missing = "Issue does not exist or you do not have permission to see it."
        with self.state.lock:
            issue = self._find_issue(self.state.namespace(ns), key)
            found = copy.deepcopy(issue) if issue else None
        if found is None:
            return self._atl_error(ctx, 404, missing)
        method = ctx.request.method
        if method in ("GET", "HEAD"):
            return Response.json(200, self._issue_view(ctx, v, found))
        if method == "DELETE":
            with self.state.lock:
                self.state.namespace(ns)["issues"].pop(found["id"], None)
                self.state._save()
            return Response(204)
        obj = self._json_object(ctx)                            # PUT
        if obj is None or not isinstance(obj.get("fields", {}), dict):
            return self._atl_error(ctx, 400, "The request body must be a JSON object with 'fields'.")
        with self.state.lock:
            issue = self._find_issue(self.state.namespace(ns), key)
            if issue is None:
                return self._atl_error(ctx, 404, missing)
            issue["fields"].update(copy.deepcopy(obj.get("fields", {})))
            self.state._save()
        return Response(204)

    # attachments (streamed multipart uploads)

    def _receive_upload(self, ctx):
        """Checks X-Atlassian-Token, then streams the multipart body through MultipartStream
        (counted and hashed, never held). Returns (file parts, None) or (None, error Response)."""
        if ctx.request.headers.get("x-atlassian-token", "").strip().lower() != "no-check":
            resp = Response(403, b"XSRF check failed",
                            [("Content-Type", "text/plain;charset=UTF-8")])
            resp.error = "xsrf_check_failed"
            return None, resp
        ctype = ctx.request.headers.get("content-type")
        boundary = multipart_boundary(ctype)
        if boundary is None:
            return None, self._atl_error(ctx, 415, "Content-Type must be multipart/form-data "
                                         "with a boundary")
        reader = ctx.request.reader
        parser = MultipartStream(boundary.encode("utf-8"))
        upload = {"content_type": ctype, "boundary": boundary, "bytes": 0, "sha256": None,
                  "chunked": reader.chunked, "complete": False, "parts": parser.parts}
        ctx.entry["upload"] = upload
        problem = None
        while True:
            data = reader.read()          # 413 past max_upload_bytes; ClientGone
            if not data:
                break
            upload["bytes"] = reader.total
            if problem is None:
                try:
                    parser.feed(data)
                except ValueError as exc:
                    problem = str(exc)
        upload["bytes"], upload["sha256"] = reader.total, reader.sha.hexdigest()
        if problem is None:
            try:
                parser.close()
            except ValueError as exc:
                problem = str(exc)
        upload["complete"] = problem is None
        if problem is not None:
            return None, self._atl_error(ctx, 400, "malformed multipart body: " + problem,
                                         error="malformed_multipart")
        files = [p for p in parser.parts if p["filename"] is not None]
        if not files:
            return None, self._atl_error(ctx, 400, "no file part (a part with a filename) in the "
                                         "multipart body", error="no_file_part")
        return files, None

    def _store_attachments(self, ctx, ns, files, owner_key, page=None):
        """Records uploaded files' metadata; returns the stored records."""
        out = []
        with self.state.lock:
            space = self.state.namespace(ns)
            issue = self._find_issue(space, owner_key) if page is None else None
            for f in files:
                n = self.state.next_api_id()
                aid = str(n) if page is None else f"att{n}"
                meta = {"id": aid, "filename": f["filename"], "size": f["size"],
                        "sha256": f["sha256"],
                        "mimeType": f["content_type"] or "application/octet-stream",
                        "issue": (issue["key"] if issue else owner_key) if page is None else None,
                        "page": page, "created": self.state.now()}
                space["attachments"][aid] = meta
                if issue is not None:
                    listed = issue["fields"].setdefault("attachment", [])
                    if isinstance(listed, list):
                        listed.append({k: meta[k] for k in ("id", "filename", "size", "mimeType")})
                out.append(dict(meta))
            self.state._save()
        return out

    def _jira_attachment_view(self, ctx, v, meta):
        base = ctx.api["base_url"]
        who = ctx.cred["who"] or {}
        return {"self": f"{base}/rest/api/{v}/attachment/{meta['id']}", "id": meta["id"],
                "filename": meta["filename"], "size": meta["size"], "sha256": meta["sha256"],
                "mimeType": meta["mimeType"], "created": meta["created"],
                "author": {"accountId": who.get("account_id"), "displayName": who.get("display_name")},
                "content": f"{base}/rest/api/{v}/attachment/content/{meta['id']}"}

    def _op_issue_attachments(self, ctx, ns, v, key):
        key = urllib.parse.unquote(key)
        ctx.api["object"] = key
        files, err = self._receive_upload(ctx)
        if err is not None:
            return err
        stored = self._store_attachments(ctx, ns, files, key)
        return Response.json(200, [self._jira_attachment_view(ctx, v, m) for m in stored])

    def _op_attachment(self, ctx, ns, v, att):
        with self.state.lock:
            meta = copy.deepcopy(self.state.namespace(ns)["attachments"].get(att))
        if meta is None or meta.get("page") is not None:
            return self._atl_error(ctx, 404, f"The attachment with id '{att}' does not exist")
        return Response.json(200, self._jira_attachment_view(ctx, v, meta))

    # streamed downloads

    def _op_download(self, ctx, ns, v=None, att=None, cid=None, filename=None):
        """Deterministic content streamed in 64 KiB pieces (see download_chunks)."""
        q = ctx.request.query
        with self.state.lock:
            attachments = self.state.namespace(ns)["attachments"]
            if att is not None:
                known = attachments.get(att)
            else:
                name = urllib.parse.unquote(filename)
                known = next((a for a in reversed(list(attachments.values()))
                              if a.get("page") == cid and a["filename"] == name), None)
            known = copy.deepcopy(known)
        seed = att if att is not None else f"{cid}/{filename}"
        shown = (known["filename"] if known else
                 urllib.parse.unquote(att + ".bin" if att is not None else filename))

        def number(name, default):
            raw = q.get(name)
            if raw is None:
                return default
            if not raw.isdigit():
                raise ApiError(400, "invalid_request", f"{name} must be a non-negative integer")
            return int(raw)

        size = number("size", known["size"] if known else 1024 * 1024)
        cut = number("cut", None)
        try:
            delay = float(q.get("chunk_delay", "0"))
        except ValueError:
            delay = -1.0
        if not 0 <= delay <= 10:
            raise ApiError(400, "invalid_request", "chunk_delay must be seconds in [0, 10]")
        chunked = q.get("chunked", "") in ("1", "true", "yes")
        gate = self.gate(q["gate"]) if q.get("gate") else None
        sent = size if cut is None else min(cut, size)
        safe = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in shown)
        resp = Response(200, headers=[
            ("Content-Type", (known or {}).get("mimeType") or "application/octet-stream"),
            ("Content-Disposition", f'attachment; filename="{safe}"')],
            stream=gated(download_chunks(seed, sent, delay), gate), stream_length=None if chunked else size)
        if sent < size:
            resp.action = "truncate"
        ctx.entry["download"] = {"seed": seed, "size": size, "chunked": chunked, "cut": cut,
                                 "chunk_delay": delay}
        return resp

    # Confluence content

    @staticmethod
    def _page_view(ctx, page):
        base = ctx.api["base_url"]
        return {"id": page["id"], "type": page["type"], "status": page["status"],
                "title": page["title"], "space": {"key": page["space"]}, "body": page["body"],
                "version": {"number": page["version"]},
                "_links": {"self": f"{base}/rest/api/content/{page['id']}",
                           "webui": f"/spaces/{page['space']}/pages/{page['id']}"}}

    def _op_content_collection(self, ctx, ns):
        if ctx.request.method == "POST":
            obj = self._json_object(ctx)
            if obj is None:
                return self._atl_error(ctx, 400, "The request body must be a JSON object.")
            title = obj.get("title")
            space = obj.get("space") if isinstance(obj.get("space"), dict) else {}
            if not isinstance(title, str) or not title:
                return self._atl_error(ctx, 400, "A page must have a title.")
            if not isinstance(space.get("key"), str) or not space["key"]:
                return self._atl_error(ctx, 400, "A page must have a space key.")
            with self.state.lock:
                pages = self.state.namespace(ns)["pages"]
                if any(p["space"] == space["key"] and p["title"] == title for p in pages.values()):
                    return self._atl_error(ctx, 400, "A page with this title already exists: "
                                           f"A page already exists with the title {title} in "
                                           "this space.")
                page = {"id": str(100000 + self.state.next_api_id()),
                        "type": obj.get("type") if isinstance(obj.get("type"), str) else "page",
                        "status": "current", "title": title, "space": space["key"],
                        "body": copy.deepcopy(obj.get("body") or {}), "version": 1}
                pages[page["id"]] = page
                self.state._save()
                view = self._page_view(ctx, page)
            ctx.api["object"] = page["id"]
            return Response.json(200, view)
        q = ctx.request.query
        with self.state.lock:
            pages = copy.deepcopy(list(self.state.namespace(ns)["pages"].values()))
        for name, key in (("spaceKey", "space"), ("title", "title"), ("type", "type")):
            if name in q:
                pages = [p for p in pages if p[key] == q[name]]
        start = int(q["start"]) if q.get("start", "").isdigit() else 0
        limit = int(q["limit"]) if q.get("limit", "").isdigit() else 25
        results = [self._page_view(ctx, p) for p in pages[start:start + limit]]
        return Response.json(200, {"results": results, "start": start, "limit": limit,
                                   "size": len(results),
                                   "_links": {"base": ctx.api["base_url"], "context": ""}})

    def _op_content(self, ctx, ns, cid):
        ctx.api["object"] = cid
        missing = f"No content found with id: ContentId{{id={cid}}}"
        with self.state.lock:
            page = copy.deepcopy(self.state.namespace(ns)["pages"].get(cid))
        if page is None:
            return self._atl_error(ctx, 404, missing)
        method = ctx.request.method
        if method in ("GET", "HEAD"):
            return Response.json(200, self._page_view(ctx, page))
        if method == "DELETE":
            with self.state.lock:
                self.state.namespace(ns)["pages"].pop(cid, None)
                self.state._save()
            return Response(204)
        obj = self._json_object(ctx)                            # PUT
        if obj is None:
            return self._atl_error(ctx, 400, "The request body must be a JSON object.")
        version = obj.get("version") if isinstance(obj.get("version"), dict) else {}
        with self.state.lock:
            stored = self.state.namespace(ns)["pages"].get(cid)
            if stored is None:
                return self._atl_error(ctx, 404, missing)
            if version.get("number") != stored["version"] + 1:
                return self._atl_error(ctx, 409, "Version must be incremented on update. Current "
                                       f"version is: {stored['version']}")
            stored["version"] += 1
            if isinstance(obj.get("title"), str) and obj["title"]:
                stored["title"] = obj["title"]
            if "body" in obj:
                stored["body"] = copy.deepcopy(obj["body"])
            self.state._save()
            view = self._page_view(ctx, stored)
        return Response.json(200, view)

    def _confluence_attachment_view(self, ctx, meta):
        base = ctx.api["base_url"]
        download = (f"/download/attachments/{meta['page']}/"
                    f"{urllib.parse.quote(meta['filename'], safe='')}")
        return {"id": meta["id"], "type": "attachment", "status": "current",
                "title": meta["filename"], "filename": meta["filename"], "size": meta["size"],
                "sha256": meta["sha256"], "mediaType": meta["mimeType"],
                "extensions": {"mediaType": meta["mimeType"], "fileSize": meta["size"],
                               "comment": ""},
                "_links": {"self": f"{base}/rest/api/content/{meta['id']}",
                           "download": download}}

    def _op_content_attachments(self, ctx, ns, cid):
        ctx.api["object"] = cid
        if ctx.request.method == "POST":
            files, err = self._receive_upload(ctx)
            if err is not None:
                return err
            stored = self._store_attachments(ctx, ns, files, None, page=cid)
            results = [self._confluence_attachment_view(ctx, m) for m in stored]
        else:
            with self.state.lock:
                stored = [copy.deepcopy(a) for a in self.state.namespace(ns)["attachments"].values()
                          if a.get("page") == cid]
            results = [self._confluence_attachment_view(ctx, m) for m in stored]
        return Response.json(200, {"results": results, "start": 0, "limit": 50,
                                   "size": len(results)})

    # the catch-all

    def _op_echo(self, ctx, ns):
        """200 JSON describing the request as received (the body streamed: size, SHA-256, and
        its text up to 64 KiB). Authorization is reduced to scheme, validity, kind, fingerprint."""
        req, api, cred = ctx.request, ctx.api, ctx.cred
        reader = req.reader
        head = bytearray(req.body if ctx.body_loaded else b"")
        while True:
            data = reader.read()
            if not data:
                break
            if len(head) <= ECHO_BODY_KEPT:
                head += data[:ECHO_BODY_KEPT + 1 - len(head)]
        text = None
        if reader.total <= ECHO_BODY_KEPT:
            try:
                text = bytes(head).decode("utf-8")
            except UnicodeDecodeError:
                text = None
        body = {"echo": True, "method": req.method, "path": req.path, "prefix": api["prefix"],
                "product": api["product"], "site": api["site"], "cloud_id": api["cloud_id"],
                "rest": api["rest"], "query": req.raw_query,
                "args": urllib.parse.parse_qs(req.raw_query, keep_blank_values=True),
                "headers": {k: v for k, v in req.headers.items() if k != "authorization"},
                "authorization": {"present": cred["scheme"] is not None, "scheme": cred["scheme"],
                                  "valid": cred["valid"], "kind": cred["kind"],
                                  "status": cred["status"], "fingerprint": cred["fingerprint"]},
                "body_size": reader.total, "body_sha256": reader.sha.hexdigest(), "body": text,
                "chunked": reader.chunked, "connection": req.connection_id,
                "request_on_connection": req.request_on_connection}
        return Response.json(200, body)

    # -- control API -------------------------------------------------------------------------

    @staticmethod
    def _json_body(ctx, default=None):
        body = ctx.request.body
        if not body.strip():
            if default is not None:
                return default
            raise invalid_request("JSON body required")
        try:
            obj = json.loads(body)
        except ValueError:
            raise invalid_request("malformed JSON") from None
        if not isinstance(obj, dict):
            raise invalid_request("JSON object required")
        return obj

    def control_health(self, ctx):
        return Response.json(200, {"ok": True, "now": self.state.now()})

    def control_reset(self, ctx):
        self.state.reset()
        return Response.json(200, {"ok": True})

    def control_add_client(self, ctx):
        b = self._json_body(ctx)
        return Response.json(200, self.state.register_client(
            b.get("client_id"), b.get("client_secret"), b.get("auth_method"), b.get("redirect_uris")))

    def control_list_clients(self, ctx):
        with self.state.lock:
            return Response.json(200, {"clients": [asdict(c) for c in self.state.clients.values()]})

    def control_add_grant(self, ctx):
        b = self._json_body(ctx)
        return Response.json(200, self.state.create_grant(
            b.get("client_id"), b.get("scope"), b.get("access_lifetime"), b.get("sub"),
            b.get("resource")))

    def control_list_grants(self, ctx):
        return Response.json(200, {"grants": self.state.list_grants()})

    def control_get_grant(self, ctx, grant_id):
        return Response.json(200, self.state.describe_grant(grant_id))

    def control_revoke_grant(self, ctx, grant_id):
        return Response.json(200, self.state.revoke_grant(grant_id))

    def control_add_code(self, ctx):
        b = self._json_body(ctx)
        return Response.json(200, self.state.create_code(
            b.get("client_id"), b.get("scope"), b.get("redirect_uri"), b.get("code_challenge"),
            b.get("code_challenge_method"), b.get("sub"), b.get("resource")))

    def control_get_config(self, ctx):
        with self.state.lock:
            return Response.json(200, dict(self.state.config))

    def control_set_config(self, ctx):
        return Response.json(200, self.state.set_config(self._json_body(ctx)))

    def control_clock(self, ctx):
        b = self._json_body(ctx, default={})
        advance = b.get("advance", 0)
        if isinstance(advance, bool) or not isinstance(advance, (int, float)) or advance < 0:
            raise invalid_request("advance must be a number >= 0")
        return Response.json(200, self.state.advance_clock(advance))

    def control_list_faults(self, ctx):
        return Response.json(200, {"faults": self.state.list_faults()})

    def control_add_fault(self, ctx):
        fault = self.state.add_fault(self._json_body(ctx))
        return Response.json(200, {"queued": fault, "faults": self.state.list_faults()})

    def control_clear_faults(self, ctx):
        return Response.json(200, {"cleared": self.state.clear_faults()})

    def control_log(self, ctx):
        try:
            since = int(ctx.request.query.get("since", "0"))
        except ValueError:
            raise invalid_request("since must be an integer") from None
        settle = 5.0 if ctx.request.query.get("settle") == "1" else 0.0
        return Response.json(200, self.state.read_log(since, settle))

    def control_clear_log(self, ctx):
        self.state.clear_log()
        return Response.json(200, {"ok": True})

    def control_stats(self, ctx):
        return Response.json(200, self.state.read_stats())

    def control_clear_stats(self, ctx):
        self.state.clear_stats()
        return Response.json(200, {"ok": True})

    def control_tokens(self, ctx):
        return Response.json(200, {"tokens": self.state.list_tokens()})

    def control_list_devices(self, ctx):
        return Response.json(200, {"device_codes": self.state.list_device_codes()})

    def control_get_device(self, ctx, user_code):
        return Response.json(200, self.state.get_device(urllib.parse.unquote(user_code)))

    def control_device_approve(self, ctx):
        b = self._json_body(ctx, default={})
        return Response.json(200, self.state.decide_device(b.get("user_code"), True, b.get("sub")))

    def control_device_deny(self, ctx):
        b = self._json_body(ctx, default={})
        return Response.json(200, self.state.decide_device(b.get("user_code"), False))

    def control_device_slow_down(self, ctx):
        b = self._json_body(ctx, default={})
        return Response.json(200, self.state.arm_slow_down(b.get("user_code"), b.get("count", 1)))

    def control_get_sites(self, ctx):
        return Response.json(200, {"sites": self.state.get_sites()})

    def control_set_sites(self, ctx):
        try:
            obj = json.loads(ctx.request.body or b"null")
        except ValueError:
            raise invalid_request("malformed JSON") from None
        if isinstance(obj, dict):
            obj = obj.get("sites")
        return Response.json(200, {"sites": self.state.set_sites(obj)})

    def control_list_api_tokens(self, ctx):
        return Response.json(200, {"api_tokens": self.state.list_credentials("api_tokens")})

    def control_add_api_token(self, ctx):
        b = self._json_body(ctx)
        return Response.json(200, self.state.add_api_token(
            b.get("email"), b.get("token"), b.get("account_id"), b.get("display_name")))

    def control_revoke_api_token(self, ctx):
        return Response.json(200, self.state.revoke_credential(
            "api_tokens", self._json_body(ctx).get("token")))

    def control_list_pats(self, ctx):
        return Response.json(200, {"pats": self.state.list_credentials("pats")})

    def control_add_pat(self, ctx):
        b = self._json_body(ctx)
        return Response.json(200, self.state.add_pat(b.get("token"), b.get("user"),
                                                     b.get("display_name")))

    def control_revoke_pat(self, ctx):
        return Response.json(200, self.state.revoke_credential("pats", self._json_body(ctx).get("token")))

    def control_store(self, ctx):
        return Response.json(200, {"store": self.state.dump_store()})


# --------------------------------------------------------------------------
# HTTP layer


class Handler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive; every response carries Content-Length."""

    protocol_version = "HTTP/1.1"
    server_version = "fake-upstream/1"
    sys_version = ""
    timeout = IDLE_TIMEOUT
    # The head and the body go out in two writes; with Nagle's algorithm the
    # body waits for the client's delayed ACK of the head (40 ms on Linux), so
    # every answer would take 40 ms and a keep-alive client could not exceed
    # 25 requests a second.
    disable_nagle_algorithm = True

    def version_string(self):
        return self.server_version

    def setup(self):
        self.request.settimeout(self.timeout)
        self.request.do_handshake()   # in this thread, not in the accept loop
        super().setup()
        self.connection_id = self.server.state.next_connection_id()
        self.requests_on_connection = 0

    # Every method goes through the same dispatcher.
    def do_GET(self):
        self._handle()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def log_message(self, format, *args):
        pass  # the default would print the request line (query strings may hold secrets)

    def log_error(self, format, *args):
        # args may echo the request line; print only a status code if there is one.
        what = args[0] if args and isinstance(args[0], int) else "-"
        self.server.log(f"conn {getattr(self, 'connection_id', '?')}: protocol error ({what})")

    def _read_body(self):
        te = self.headers.get("Transfer-Encoding")
        cl = self.headers.get("Content-Length")
        if te is not None:
            if cl is not None or te.strip().lower() != "chunked":
                raise ApiError(400, "invalid_request", "unsupported Transfer-Encoding")
            return self._read_chunked()
        if cl is None:
            return b""
        if not cl.strip().isdigit():
            raise ApiError(400, "invalid_request", "bad Content-Length")
        n = int(cl)
        if n > MAX_BODY:
            raise ApiError(413, "request_too_large", "body too large")
        data = self.rfile.read(n)
        if len(data) != n:
            raise ConnectionError("client closed the connection mid-body")
        return data

    def _read_chunked(self):
        parts, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            if not line.endswith(b"\n"):
                raise ConnectionError("bad chunk header")
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise ApiError(400, "invalid_request", "bad chunk size") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > MAX_BODY:
                raise ApiError(413, "request_too_large", "body too large")
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _body_reader(self):
        """A BodyReader for the request's body (streamed routes); 400 for bad framing."""
        te = self.headers.get("Transfer-Encoding")
        cl = self.headers.get("Content-Length")
        cap = self.server.state.config["max_upload_bytes"]
        if te is not None:
            if cl is not None or te.strip().lower() != "chunked":
                raise ApiError(400, "invalid_request", "unsupported Transfer-Encoding")
            return BodyReader(self.rfile, None, True, cap)
        if cl is None:
            return BodyReader(self.rfile, 0, False, cap)
        if not cl.strip().isdigit():
            raise ApiError(400, "invalid_request", "bad Content-Length")
        return BodyReader(self.rfile, int(cl), False, cap)

    def _handle(self):
        self.requests_on_connection += 1
        split = urllib.parse.urlsplit(self.path)
        app = self.server.app
        reader, body = None, b""
        try:
            if app.streams(self.command, split.path):
                reader = self._body_reader()
            else:
                body = self._read_body()
        except ApiError as err:
            self.close_connection = True
            self._write(err.response(no_store=False))
            return
        headers = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        request = Request(self.command, split.path, dict(urllib.parse.parse_qsl(split.query)),
                          headers, body, self.client_address[0], self.connection_id,
                          self.requests_on_connection, split.query, reader)
        ctx = app.begin(request)
        resp, delivered = None, False
        try:
            try:
                resp = app.respond(ctx)
                # What the handler left of a streamed body is read (and hashed) before the
                # answer, so the connection stays usable; impossible past the cap: close.
                if reader is not None and not reader.done and not reader.drain():
                    self.close_connection = True
            except ClientGone as exc:
                ctx.entry["error"] = "client_gone"
                self.server.log(f"conn {self.connection_id}: client gone while sending its body "
                                f"({exc})")
                resp = Response(0, action="drop")
            except Exception as exc:  # a bug here: answer 500, keep serving
                self.server.log("internal error: " + _describe_exception(exc))
                resp = Response.json(500, {"error": "fake_upstream_internal_error",
                                           "detail": f"{type(exc).__name__}: {exc}"})
                if reader is not None and not reader.done:
                    self.close_connection = True
            delivered = self._write(resp)
        finally:
            app.complete(ctx, resp, delivered)
            if ctx.logged:
                status = "no response" if resp is None or resp.action == "drop" else resp.status
                fault = f" fault={ctx.entry['fault']}" if ctx.entry["fault"] else ""
                auth = ""
                if ctx.cred is not None:   # API requests: the credential kind, never the token
                    auth = " auth=" + (ctx.cred["kind"] if ctx.cred["valid"]
                                       else "none" if ctx.cred["scheme"] is None else "invalid")
                self.server.log(f"conn {self.connection_id} {request.method} {request.path} -> {status}"
                     f"{auth}{fault}{'' if delivered else ' (not delivered)'}")

    def _write(self, resp):
        """Sends resp (or aborts as it asks); returns whether it was delivered in full."""
        try:
            if resp.action == "drop":
                self._abort(resp.rst)
                return False
            self.send_response(resp.status)
            for name, value in resp.headers:
                self.send_header(name, value)
            if resp.stream is not None:
                return self._write_stream(resp)
            if resp.status >= 200 and resp.status not in (204, 304):   # RFC 9110 §8.6
                self.send_header("Content-Length", str(len(resp.body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if resp.action == "truncate":
                self.wfile.write(resp.body[:resp.send_bytes])
                self.wfile.flush()
                self._abort(resp.rst)
                return False
            if self.command != "HEAD":
                self.wfile.write(resp.body)
            self.wfile.flush()
            return True
        except (OSError, ssl.SSLError):
            self.close_connection = True
            return False

    def _write_stream(self, resp):
        """Sends a streamed body (Content-Length, or chunked when stream_length is None),
        counting and hashing what goes out; "truncate" closes after what the stream yields."""
        chunked = resp.stream_length is None
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(resp.stream_length))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        resp.sent_bytes, sha = 0, hashlib.sha256()
        try:
            if self.command != "HEAD":
                for piece in resp.stream:
                    if not piece:
                        continue
                    if chunked:
                        self.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
                    else:
                        self.wfile.write(piece)
                    resp.sent_bytes += len(piece)
                    sha.update(piece)
                if resp.action == "truncate":
                    self.wfile.flush()
                    self._abort(resp.rst)
                    return False
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return True
        finally:
            resp.sent_sha256 = sha.hexdigest()

    def _abort(self, rst):
        """Closes the TCP connection without a TLS close_notify (FIN, or RST if asked)."""
        self.close_connection = True
        sock = self.connection
        try:
            if rst:
                # The fd only closes (and so resets) once rfile's reference is gone too;
                # wfile holds no reference and must stay open for the base class's flush.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.rfile.close()
                sock.close()
            else:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _describe_exception(exc):
    """Traceback frames and the exception type, without the message (could hold a secret)."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    return f"{type(exc).__name__}\n{frames}"


class Server(http.server.ThreadingHTTPServer):
    """Threaded HTTPS server; TLS handshakes happen in the per-connection threads."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address, ssl_context, app, quiet=False):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.quiet = quiet
        self._log_lock = threading.Lock()
        self.ssl_context = ssl_context
        self.app = app
        self.state = app.state
        super().__init__(address, Handler)

    def get_request(self):
        sock, addr = self.socket.accept()
        return self.ssl_context.wrap_socket(sock, server_side=True,
                                            do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, ssl.SSLError, EOFError)):
            self.log(f"connection from {client_address[0]} ended: {type(exc).__name__}"
                 f"{' ' + exc.reason if isinstance(exc, ssl.SSLError) and exc.reason else ''}")
        else:
            self.log("unexpected error: " + _describe_exception(exc))

    def log(self, msg):
        """Operational stderr log: never secrets, never query strings or bodies."""
        if not self.quiet:
            with self._log_lock:
                sys.stderr.write(f"fake_upstream: {msg}\n")
                sys.stderr.flush()


def make_ssl_context(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def write_port_file(path, port):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".port-", dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Fake OAuth 2.0 provider (Atlassian-like).")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file")
    parser.add_argument("--state-file")
    parser.add_argument("--quiet", action="store_true", help="no per-request lines on stderr")
    parser.add_argument("--ca-file", help="CA bundle for outbound https fetches (client ID metadata documents)")
    args = parser.parse_args(argv)

    state = UpstreamState(args.state_file)
    app = App(state, ca_file=args.ca_file)
    server = Server((args.host, args.port), make_ssl_context(args.cert, args.key), app,
                    quiet=args.quiet)
    port = server.server_address[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    app.base_url = f"https://{host}:{port}"

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.port_file:
        write_port_file(args.port_file, port)
    print(f"fake_upstream: listening on {app.base_url}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    print("fake_upstream: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

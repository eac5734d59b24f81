#!/usr/bin/env python3
"""A fake OAuth 2.0 provider that behaves like Atlassian's, for tokend's tests.

    python3 fake_upstream.py --cert CERT --key KEY [--host 127.0.0.1] [--port 0]
                             [--port-file FILE] [--state-file FILE] [--quiet]

Serves HTTPS (TLS 1.2+, HTTP/1.1 keep-alive) on one port:

* ``POST /oauth/token`` (and ``/oauth2/token``): the token endpoint, with
  rotating refresh tokens, a reuse window and reuse detection;
* ``GET /me`` (and ``/oauth/userinfo``): a resource that checks Bearer tokens;
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
import hashlib
import hmac
import http.server
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
import urllib.parse
from dataclasses import asdict, dataclass, field

SERVER_NAME = "fake-upstream"
MAX_BODY = 10 * 1024 * 1024
IDLE_TIMEOUT = 120.0
DEFAULT_SCOPE = "read:jira-work read:jira-user offline_access"
CODE_LIFETIME = 600

DEFAULT_CONFIG = {
    "reuse_window": 600,              # seconds a rotated refresh token stays usable (Atlassian: 600)
    "access_lifetime": 3600,          # default access-token lifetime (per-grant override possible)
    "refresh_lifetime": None,         # seconds from issuance after which a refresh token expires; None = never
    "invalid_grant_style": "atlassian",  # "atlassian" (403) or "standard" (400)
    "rotate_refresh_tokens": True,    # False = non-rotating provider (no refresh_token in refresh responses)
    "token_latency": 0.0,             # seconds every token-endpoint request waits before being processed
    "log_limit": 100000,              # request-log entries kept (oldest dropped first)
}

ATLASSIAN_INVALID_GRANT = "Unknown or invalid refresh token."

#: Fault modes; value = targets the mode may be queued for.
FAULT_MODES = {
    "invalid_grant_standard": {"token"},
    "invalid_grant_atlassian": {"token"},
    "invalid_client": {"token"},
    "rate_limited": {"token", "resource"},
    "server_error_500": {"token", "resource"},
    "bad_gateway_502": {"token", "resource"},
    "unavailable_503": {"token", "resource"},
    "truncated_json": {"token"},
    "missing_access_token": {"token"},
    "expires_in_string": {"token"},
    "expires_in_negative": {"token"},
    "expires_in_absent": {"token"},
    "expires_in_garbage": {"token"},
    "html_200": {"token", "resource"},
    "slow": {"token", "resource"},
    "drop": {"token", "resource"},
    "reset_mid_body": {"token", "resource"},
    "drop_after_rotate": {"token"},
    "invalid_token": {"resource"},
    "huge_body": {"token", "resource"},
}

#: Modes after which the request is processed normally (the grant DOES change).
PROCESSING_FAULTS = {"slow", "drop_after_rotate"}

AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")


def new_token(prefix):
    """A random opaque token, e.g. ``at-Q2x...``."""
    return prefix + secrets.token_urlsafe(32)


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
    "truncate" (send headers + ``body[:send_bytes]``, close).
    """
    status: int
    body: bytes = b""
    headers: list = field(default_factory=list)
    action: str | None = None
    send_bytes: int | None = None
    rst: bool = False
    error: str | None = None

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


@dataclass
class Fault:
    mode: str
    count: int | None = 1          # None = persistent until cleared
    target: str = "token"
    retry_after: int | str | None = None
    delay: float = 5.0
    body: str = "json"             # rate_limited: "json" or "empty"
    rst: bool = False              # drop/reset_mid_body: TCP RST instead of FIN


def _new_stats():
    return {
        "requests": 0,
        "token_requests": 0,
        "token_requests_by_grant_type": {},
        "successful_refreshes": 0,
        "refreshes_by_grant": {},
        "code_exchanges": 0,
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
    }


class UpstreamState:
    """All mutable state of the fake provider, behind one lock.

    Times are on a fake wall clock: ``time.time()`` plus an offset that tests
    can advance (``POST /_control/clock``) to cross windows without sleeping.
    """

    def __init__(self, state_file=None):
        self.lock = threading.RLock()
        self.state_file = state_file
        self._grant_seq = 0          # survives reset so stale ids never collide
        self._conn_seq = 0
        self._reset_locked()
        if state_file and os.path.exists(state_file):
            self._load()

    # -- basics ------------------------------------------------------------

    def _reset_locked(self):
        self.config = dict(DEFAULT_CONFIG)
        self.clock_offset = 0.0
        self.clients = {}
        self.grants = {}
        self.refresh_tokens = {}
        self.access_tokens = {}
        self.codes = {}
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
                self.config[key] = value
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
            "issued": self.issued,
            "stats": {k: v for k, v in self.stats.items()
                      if k not in ("in_flight_token_requests", "in_flight_by_grant")},
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
        self.issued = data["issued"]
        self.stats.update(data["stats"])

    # -- clients and grants ------------------------------------------------

    def register_client(self, client_id, client_secret, auth_method):
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
        client = Client(client_id, client_secret, methods)
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

    def _new_grant_locked(self, client_id, scope, sub, access_lifetime, source):
        self._grant_seq += 1
        gid = f"grant-{self._grant_seq}"
        grant = Grant(gid, client_id, scope, sub or f"fake-user-{self._grant_seq}",
                      access_lifetime, self.now(), source=source)
        self.grants[gid] = grant
        return grant

    def create_grant(self, client_id, scope=None, access_lifetime=None, sub=None):
        """A token family as if a user had just logged in."""
        scope = DEFAULT_SCOPE if scope is None else scope
        _check_type("scope", scope, str)
        if access_lifetime is not None:
            _check_int("access_lifetime", access_lifetime, 1)
        with self.lock:
            if client_id not in self.clients:
                raise ApiError(400, "unknown_client", f"client {client_id!r} is not registered")
            grant = self._new_grant_locked(client_id, scope, sub, access_lifetime, "control")
            now = self.now()
            at, lifetime = self._issue_access(grant, now, "control")
            rt = self._issue_refresh(grant, now, "control")
            self._save()
            return {"grant_id": grant.grant_id, "access_token": at.token,
                    "refresh_token": rt.token, "expires_in": lifetime, "token_type": "Bearer",
                    "scope": grant.scope, "sub": grant.sub}

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

    def describe_grant(self, grant_id):
        with self.lock:
            grant = self.grants.get(grant_id)
            if grant is None:
                raise ApiError(404, "not_found", f"no grant {grant_id!r}")
            now = self.now()
            out = asdict(grant)
            out["alive"] = grant.revoked_at is None
            out["state"] = "alive" if out["alive"] else "revoked"
            out["refresh_tokens"] = [
                dict(asdict(t), status=self._refresh_status(t, now))
                for t in self.refresh_tokens.values() if t.grant_id == grant_id]
            out["access_tokens"] = [
                dict(asdict(t), valid=self._access_status(t, now) == "valid")
                for t in self.access_tokens.values() if t.grant_id == grant_id]
            return out

    def list_grants(self):
        with self.lock:
            return [self.describe_grant(gid) for gid in self.grants]

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
                else:
                    c = self.codes.get(rec["token"])
                    rec["valid"] = c is not None and c.used_at is None and c.expires_at > now
                out.append(rec)
            return out

    # -- authorization codes -----------------------------------------------

    def create_code(self, client_id, scope=None, redirect_uri=None, code_challenge=None,
                    code_challenge_method=None, sub=None):
        scope = DEFAULT_SCOPE if scope is None else scope
        if code_challenge is not None and code_challenge_method is None:
            code_challenge_method = "plain"
        if code_challenge_method not in (None, "S256", "plain"):
            raise invalid_request("code_challenge_method must be S256 or plain")
        with self.lock:
            if client_id not in self.clients:
                raise ApiError(400, "unknown_client", f"client {client_id!r} is not registered")
            now = self.now()
            code = AuthCode("code-" + secrets.token_urlsafe(24), client_id, scope, sub, redirect_uri,
                            code_challenge, code_challenge_method, now + CODE_LIFETIME)
            self.codes[code.code] = code
            self.issued.append({"token": code.code, "kind": "code", "grant_id": None,
                                "issued_at": now, "source": "control", "valid_when_issued": True})
            self._save()
            return {"code": code.code, "expires_in": CODE_LIFETIME}

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

    def exchange_code(self, client, code_value, redirect_uri, verifier):
        """grant_type=authorization_code. Returns (grant_id, body | ApiError)."""
        with self.lock:
            now = self.now()
            code = self.codes.get(code_value or "")
            if code is None or code.client_id != client.client_id:
                return None, ApiError(400, "invalid_grant", "authorization code is unknown")
            if code.used_at is not None:
                if code.grant_id in self.grants:
                    self._revoke_locked(self.grants[code.grant_id], "code_reuse")
                self._save()
                return code.grant_id, ApiError(400, "invalid_grant",
                                               "authorization code was already used")
            if code.expires_at <= now:
                return None, ApiError(400, "invalid_grant", "authorization code has expired")
            if code.redirect_uri is not None and redirect_uri != code.redirect_uri:
                return None, ApiError(400, "invalid_grant", "redirect_uri does not match")
            if code.code_challenge is not None:
                if not verifier:
                    return None, ApiError(400, "invalid_grant", "code_verifier required")
                if code.code_challenge_method == "S256":
                    computed = base64.urlsafe_b64encode(
                        hashlib.sha256(verifier.encode("ascii", "replace")).digest()).rstrip(b"=").decode()
                else:
                    computed = verifier
                if not hmac.compare_digest(computed, code.code_challenge):
                    return None, ApiError(400, "invalid_grant", "code_verifier does not match")
            code.used_at = now
            grant = self._new_grant_locked(client.client_id, code.scope, code.sub, None, "code")
            code.grant_id = grant.grant_id
            at, lifetime = self._issue_access(grant, now, "code")
            rt = self._issue_refresh(grant, now, "code")
            self.stats["code_exchanges"] += 1
            self._save()
            return grant.grant_id, {"access_token": at.token, "token_type": "Bearer",
                                    "expires_in": lifetime, "refresh_token": rt.token,
                                    "scope": grant.scope}

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

    def pop_fault(self, target):
        """The fault for the next request on `target`, FIFO; persistent ones stay queued."""
        with self.lock:
            for i, fault in enumerate(self.faults):
                if fault.target != target:
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
        with self.lock:
            s = self.stats
            s["requests"] += 1
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

    def end(self, target, grant_id, entry):
        with self.lock:
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

    def read_log(self, since=0):
        with self.lock:
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
            kept = {k: self.stats[k] for k in ("in_flight_token_requests", "in_flight_by_grant")}
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
    elif key == "rotate_refresh_tokens":
        _check_type(key, value, bool)
    elif key == "token_latency":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise invalid_request("token_latency must be a number >= 0")


def _parse_fault(spec):
    if not isinstance(spec, dict):
        raise invalid_request("fault must be a JSON object")
    allowed = {"mode", "count", "target", "retry_after", "delay", "body", "rst"}
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
    return Fault(mode, count, target, retry_after, float(delay), body, rst)


# --------------------------------------------------------------------------
# Requests and the application (route table)


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


@dataclass
class Route:
    method: str
    pattern: str                 # regex, matched against the whole path
    handler: str                 # name of an App method taking (ctx, **path_groups)
    target: str | None = None    # "token" / "resource": logged, counted, fault-injectable; None = control


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
        self.started = time.monotonic()


class App:
    """Routes requests to handlers; applies faults; keeps the log and stats."""

    ROUTES = [
        Route("POST", r"/oauth/token", "token", target="token"),
        Route("POST", r"/oauth2/token", "token", target="token"),
        Route("GET", r"/me", "userinfo", target="resource"),
        Route("GET", r"/oauth/userinfo", "userinfo", target="resource"),
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
    ]

    def __init__(self, state):
        self.state = state
        self._compiled = [(r, re.compile(r.pattern + r"\Z")) for r in self.ROUTES]

    # -- dispatch --------------------------------------------------------------

    def match(self, method, path):
        """(route, path groups) or (None, allowed methods for that path)."""
        allowed = []
        for route, rx in self._compiled:
            m = rx.match(path)
            if m:
                if route.method == method:
                    return route, m.groupdict()
                allowed.append(route.method)
        return None, allowed

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
        }
        ctx = Context(request, route, groups if route else {}, None if route else groups, entry)
        if ctx.logged:
            entry["endpoint"] = route.pattern if route else None
            if ctx.target == "token":
                self._peek_token_request(ctx)
            self.state.begin(ctx.target, ctx.grant_id)
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
        fault = self.state.pop_fault(route.target)
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
        e["delivered"] = delivered
        e["duration"] = round(time.monotonic() - ctx.started, 6)
        self.state.end(ctx.target, ctx.grant_id, e)

    def _call(self, handler, ctx):
        try:
            return handler(ctx, **ctx.groups)
        except ApiError as err:
            ctx.entry["error"] = err.error
            return err.response(no_store=ctx.target == "token")

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
            return self._bearer_challenge("invalid_token", "the access token is invalid")
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
            status, grant_id, result = self.state.refresh(client, presented, params.get("scope"))
            e["refresh_token_status"], e["grant_id"] = status, grant_id
        elif grant_type == "authorization_code":
            if not params.get("code"):
                raise invalid_request("code missing")
            grant_id, result = self.state.exchange_code(client, params["code"],
                                                        params.get("redirect_uri"),
                                                        params.get("code_verifier"))
            e["grant_id"] = grant_id
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

    def userinfo(self, ctx):
        auth = ctx.request.headers.get("authorization", "")
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return self._bearer_challenge()
        status, grant, at = self.state.check_access_token(token.strip())
        if grant is not None:
            ctx.entry["grant_id"] = grant.grant_id
        if status != "valid":
            return self._bearer_challenge("invalid_token", {
                "unknown": "the access token is unknown",
                "expired": "the access token has expired",
                "grant_revoked": "the access token has been revoked"}[status])
        return Response.json(200, {"sub": grant.sub, "account_id": grant.sub,
                                   "grant_id": grant.grant_id, "client_id": grant.client_id,
                                   "scope": at.scope, "expires_at": at.expires_at,
                                   "email": f"{grant.sub}@example.test", "name": "Fake User"})

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
            b.get("client_id"), b.get("client_secret"), b.get("auth_method")))

    def control_list_clients(self, ctx):
        with self.state.lock:
            return Response.json(200, {"clients": [asdict(c) for c in self.state.clients.values()]})

    def control_add_grant(self, ctx):
        b = self._json_body(ctx)
        return Response.json(200, self.state.create_grant(
            b.get("client_id"), b.get("scope"), b.get("access_lifetime"), b.get("sub")))

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
            b.get("code_challenge_method"), b.get("sub")))

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
        return Response.json(200, self.state.read_log(since))

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


# --------------------------------------------------------------------------
# HTTP layer


class Handler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive; every response carries Content-Length."""

    protocol_version = "HTTP/1.1"
    server_version = "fake-upstream/1"
    sys_version = ""
    timeout = IDLE_TIMEOUT

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

    def _handle(self):
        self.requests_on_connection += 1
        try:
            body = self._read_body()
        except ApiError as err:
            self.close_connection = True
            self._write(err.response(no_store=False))
            return
        split = urllib.parse.urlsplit(self.path)
        headers = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        request = Request(self.command, split.path, dict(urllib.parse.parse_qsl(split.query)),
                          headers, body, self.client_address[0], self.connection_id,
                          self.requests_on_connection)
        app = self.server.app
        ctx = app.begin(request)
        resp, delivered = None, False
        try:
            try:
                resp = app.respond(ctx)
            except Exception as exc:  # a bug here: answer 500, keep serving
                self.server.log("internal error: " + _describe_exception(exc))
                resp = Response.json(500, {"error": "fake_upstream_internal_error",
                                           "detail": f"{type(exc).__name__}: {exc}"})
            delivered = self._write(resp)
        finally:
            app.complete(ctx, resp, delivered)
            if ctx.logged:
                status = "no response" if resp is None or resp.action == "drop" else resp.status
                fault = f" fault={ctx.entry['fault']}" if ctx.entry["fault"] else ""
                self.server.log(f"conn {self.connection_id} {request.method} {request.path} -> {status}"
                     f"{fault}{'' if delivered else ' (not delivered)'}")

    def _write(self, resp):
        """Sends resp (or aborts as it asks); returns whether it was delivered in full."""
        try:
            if resp.action == "drop":
                self._abort(resp.rst)
                return False
            self.send_response(resp.status)
            for name, value in resp.headers:
                self.send_header(name, value)
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
    args = parser.parse_args(argv)

    state = UpstreamState(args.state_file)
    server = Server((args.host, args.port), make_ssl_context(args.cert, args.key), App(state),
                    quiet=args.quiet)
    port = server.server_address[1]

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.port_file:
        write_port_file(args.port_file, port)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"fake_upstream: listening on https://{host}:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    print("fake_upstream: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

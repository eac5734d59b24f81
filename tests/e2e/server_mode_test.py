"""Server mode end to end: the real `tokend --server` on a throwaway PostgreSQL
server (Debian's postgresql-15, started here), against the fake upstream.

Shows that every entry point acts for exactly one user: one user's profiles,
tokens, logins, proxy and events are unreachable as another user, whether
that user comes through the trusted proxy's header or through a service; the
user header from a peer that is not the trusted proxy is refused; a service
acts only for the users its policy names; `tokend rotate-key` re-wraps a live
database, and SIGHUP makes every replica take the rotated key. Every wait
polls against a deadline."""
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fake_upstream"))

from client import FakeUpstream, redirect_params  # noqa: E402
from harness import (DEFAULT_DEADLINE, EXIT_REFUSED, EXIT_USAGE, Daemon, XdgTree, binaries,  # noqa: E402
                     http_over_unix, split_answer, stop_process, wait_for)

TOKEND, TOKENCTL = binaries()
PG_BIN = os.environ.get("TOKEND_PG_BINDIR", "/usr/lib/postgresql/15/bin")
CLIENT_ID = "server-app"
CLIENT_SECRET = "cs-MARKER-server-secret"
MCP_SECRET = "svc-MARKER-mcp-" + "m" * 40
OPS_SECRET = "svc-MARKER-ops-" + "o" * 40
MCP_SECRET_2 = "svc-MARKER-mcp2-" + "n" * 40
DB_PASSWORD = "MARKER-db-password"  # in the connection string; trust auth ignores it
ALICE = "alice@example.com"
BOB = "bob@example.org"
REDIRECT = "http://127.0.0.1:9/callback"  # never listened on: the code is pasted


class PgCluster:
    """initdb + postgres on a Unix socket only, removed at the end."""

    def __init__(self):
        for tool in ("initdb", "postgres"):
            if not os.access(os.path.join(PG_BIN, tool), os.X_OK):
                raise AssertionError(f"no {PG_BIN}/{tool}: install Debian's postgresql-15 "
                                     "(scripts/setup.sh does), or set TOKEND_PG_BINDIR")
        self.dir = tempfile.mkdtemp(prefix="tokend-e2e-pg-", dir="/tmp")
        self.user = None
        if os.geteuid() == 0:
            # initdb and postgres refuse root: run them as 'postgres' (made by
            # Debian's postgresql-common), else 'nobody', as tests/support/pg_server does.
            for name in ("postgres", "nobody"):
                try:
                    pw = pwd.getpwnam(name)
                except KeyError:
                    continue
                self.user = (pw.pw_uid, pw.pw_gid)
                break
            if self.user is None:
                raise AssertionError("running as root, and no 'postgres' or 'nobody' user to run PostgreSQL as")
            os.chown(self.dir, *self.user)
        self.log = open(os.path.join(self.dir, "server.log"), "ab")
        self._run([os.path.join(PG_BIN, "initdb"), "--pgdata", os.path.join(self.dir, "data"),
                   "--username=tokend_test", "--auth=trust", "--encoding=UTF8", "--locale=C",
                   "--no-sync", "--no-instructions"], wait=True)
        self.proc = self._run([os.path.join(PG_BIN, "postgres"), "-D", os.path.join(self.dir, "data"),
                               "-k", self.dir, "-p", "5432", "-c", "listen_addresses=",
                               "-c", "fsync=off", "-c", "log_statement=all"], wait=False)
        wait_for(lambda: os.path.exists(os.path.join(self.dir, ".s.PGSQL.5432")) and self.psql("postgres", "SELECT 1"),
                 "PostgreSQL to accept connections", deadline=60, interval=0.05)

    def _run(self, argv, wait):
        def demote():
            if self.user:
                os.setgroups([])
                os.setgid(self.user[1])
                os.setuid(self.user[0])
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                preexec_fn=demote, cwd=self.dir)
        if wait:
            if proc.wait(timeout=120) != 0:
                raise AssertionError(f"{argv[0]} failed; see {self.dir}/server.log")
        return proc

    def psql(self, database, sql):
        r = subprocess.run(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", self.dir, "-p", "5432",
                            "-U", "tokend_test", "-d", database, "-c", sql], capture_output=True, text=True)
        return r.stdout if r.returncode == 0 else None

    def conninfo(self, database):
        return f"host={self.dir} port=5432 user=tokend_test dbname={database} password={DB_PASSWORD}"

    def server_log(self):
        with open(os.path.join(self.dir, "server.log"), errors="replace") as f:
            return f.read()

    def stop(self):
        stop_process(self.proc, grace=30)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def write_private(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


class Answer:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.text = status, headers, body

    def json(self):
        return json.loads(self.text)

    @property
    def code(self):
        try:
            return self.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None


def exchange(sock_path, method, target, headers=(), body=None, deadline=DEFAULT_DEADLINE):
    data = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {target} HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n"
    for k, v in headers:
        head += f"{k}: {v}\r\n"
    head += f"Content-Length: {len(data)}\r\n\r\n"
    status, head_text, payload = split_answer(http_over_unix(sock_path, head.encode() + data, deadline))
    return Answer(status, head_text, payload.decode(errors="replace"))


class EventStream:
    """GET /v1/events held open; frames collected as they arrive."""

    def __init__(self, sock_path, headers):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(0.05)
        self.sock.connect(sock_path)
        head = "GET /v1/events HTTP/1.1\r\nHost: tokend\r\n"
        for k, v in headers:
            head += f"{k}: {v}\r\n"
        self.sock.sendall((head + "\r\n").encode())
        self.buf = b""

    def pump(self):
        try:
            b = self.sock.recv(65536)
            if b:
                self.buf += b
        except socket.timeout:
            pass
        return self.buf.decode(errors="replace")

    def wait_for(self, needle, what):
        """Everything received once `needle` has been."""
        wait_for(lambda: needle in self.pump(), what)
        return self.buf.decode(errors="replace")

    def close(self):
        self.sock.close()


class PgUpstreamCase(unittest.TestCase):
    """Server-mode tests against the fake upstream: one throwaway PostgreSQL and
    one fake upstream for the class; a database and a key-encryption key of its
    own for each test (new_database); at the end, every tokend output the test
    kept in `logs` and PostgreSQL's statement log (which shows every
    statement's parameters) swept for every token the fake issued and the
    class's SECRETS."""
    SECRETS = ()

    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster()
        cls.up = FakeUpstream(quiet=True)
        cls.logs = []

    @classmethod
    def tearDownClass(cls):
        issued = [t["token"] for t in cls.up.tokens() if t.get("token")]
        cls.up.stop()
        server_log = cls.pg.server_log()
        cls.pg.stop()
        for text in cls.logs + [server_log]:
            for s in issued + list(cls.SECRETS):
                assert s not in text, "a secret appears in a log"

    def new_database(self):
        """A database of this test's own, and in self.dir its connection string's
        file and a new key-encryption key's: sets database, db_file, kek, kek_file."""
        self.database = "tokend_" + secrets.token_hex(6)
        self.assertIsNotNone(self.pg.psql("postgres", f"CREATE DATABASE {self.database}"))
        self.db_file = write_private(os.path.join(self.dir, "db.conninfo"), self.pg.conninfo(self.database) + "\n")
        self.kek = secrets.token_hex(32)
        self.kek_file = write_private(os.path.join(self.dir, "kek"), self.kek + "\n")

    def replica_config(self, i, extra=""):
        """Replica i's config (the shared database and key, the trusted proxy
        being this test's uid, a socket of its own, then `extra`): (path, socket)."""
        sock = os.path.join(self.dir, f"r{i}", "tokend.sock")
        conf = os.path.join(self.dir, f"r{i}.conf")
        with open(conf, "w") as f:
            f.write(f"database-url-file = {self.db_file}\nkek-file = {self.kek_file}\n"
                    f"trusted-proxy-uid = {os.geteuid()}\nsocket = {sock}\n{extra}")
        return conf, sock


class ServerModeTest(PgUpstreamCase):
    SECRETS = (MCP_SECRET, MCP_SECRET_2, OPS_SECRET, CLIENT_SECRET)

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        for text in cls.logs:
            assert DB_PASSWORD not in text, "the connection string appears in tokend's log"

    def setUp(self):
        self.up.reset()
        self.up.add_client(CLIENT_ID, CLIENT_SECRET, "client_secret_basic", redirect_uris=[REDIRECT])
        self.xdg = XdgTree()
        self.dir = self.xdg.root
        self.new_database()
        write_private(os.path.join(self.dir, "mcp.secret"), MCP_SECRET + "\n")
        write_private(os.path.join(self.dir, "ops.secret"), OPS_SECRET + "\n")
        self.socket = os.path.join(self.dir, "srv", "tokend.sock")
        self.daemon = None
        self.mcp_settings = ""  # more settings of [service.mcp]
        self.start()

    def tearDown(self):
        if self.daemon and self.daemon.proc.poll() is None:
            self.assertEqual(self.daemon.stop(), 0, self.daemon.output())
        if self.daemon:
            self.logs.append(self.daemon.output())
        self.xdg.close()

    # -- helpers ----------------------------------------------------------------------

    def config(self, trusted_uid):
        path = os.path.join(self.dir, "server.conf")
        with open(path, "w") as f:
            f.write(f"database-url-file = {self.db_file}\n"
                    f"kek-file = {self.kek_file}\n"
                    f"trusted-proxy-uid = {trusted_uid}\n"
                    f"socket = {self.socket}\n"
                    "[service.mcp]\n"
                    f"secret-file = {os.path.join(self.dir, 'mcp.secret')}\n"
                    "act-for = *@example.com\n"
                    f"{self.mcp_settings}"
                    "[service.ops]\n"
                    f"secret-file = {os.path.join(self.dir, 'ops.secret')}\n"
                    f"act-for = {BOB}\n")
        return path

    def start(self, trusted_uid=None, kek_file=None, extra=()):
        trusted = os.geteuid() if trusted_uid is None else trusted_uid
        args = ["--server", "--config", self.config(trusted), "--ca-bundle", self.up.ca_file,
                "--log-level", "debug", *extra]
        if kek_file:
            args += ["--kek-file", kek_file]
        self.daemon = Daemon(TOKEND, self.xdg.env, args)
        self.daemon.wait_ready(self.socket)

    def restart(self, **kw):
        self.assertEqual(self.daemon.stop(), 0, self.daemon.output())
        self.logs.append(self.daemon.output())
        self.start(**kw)

    @staticmethod
    def as_user(user):
        return [("X-Forwarded-User", user)]

    @staticmethod
    def as_service(secret, user):
        return [("Authorization", "Bearer " + secret), ("X-Tokend-Act-As", user)]

    def call(self, who, method, target, body=None):
        return exchange(self.socket, method, target, who, body)

    def pending_login_code(self, who, name="jira"):
        """Starts a login without a listener and consents at the fake: the code to paste."""
        r = self.call(who, "POST", f"/v1/profiles/{name}/login", {"listen": False})
        self.assertEqual(r.status, 200, r.text)
        split = urllib.parse.urlsplit(r.json()["authorize_url"])
        consent = self.up.request("GET", split.path + "?" + split.query)
        self.assertEqual(consent.status, 302)
        return redirect_params(consent.headers["location"])["code"]

    def put_grant(self, who, name="jira"):
        g = self.up.add_grant(CLIENT_ID, access_lifetime=3600)
        r = self.call(who, "PUT", f"/v1/profiles/{name}",
                      {"kind": "oauth2", "token_url": self.up.token_url, "client_id": CLIENT_ID,
                       "client_secret": CLIENT_SECRET, "access_token": g["access_token"],
                       "refresh_token": g["refresh_token"], "expires_in": 3600, "api_base": self.up.base_url,
                       "authorize_url": self.up.authorize_endpoint, "redirect_uri": REDIRECT,
                       "scopes": "openid offline_access"})
        self.assertEqual(r.status, 201, r.text)
        return g

    def token(self, who, name="jira"):
        r = self.call(who, "GET", f"/v1/profiles/{name}/token")
        self.assertEqual(r.status, 200, r.text)
        return r.json()["token"]

    def rotate(self, *args):
        return subprocess.run([TOKEND, "rotate-key", *args], env=self.xdg.env, capture_output=True,
                              text=True, timeout=60)

    # -- isolation ----------------------------------------------------------------------

    def test_one_users_profile_is_unreachable_as_another_from_every_entry_point(self):
        alice = self.as_user(ALICE)
        g = self.put_grant(alice)
        self.assertEqual(self.token(alice), g["access_token"])
        # Alice has a login waiting for its code, and the code.
        code = self.pending_login_code(alice)
        before = self.call(alice, "GET", "/v1/profiles/jira").json()

        for label, bob in (("bob through the proxy", self.as_user(BOB)),
                           ("bob through a service", self.as_service(OPS_SECRET, BOB))):
            with self.subTest(label):
                r = self.call(bob, "GET", "/v1/profiles")
                self.assertEqual(r.status, 200, r.text)
                self.assertNotIn("jira", r.text)
                # Bob's metrics: none of Alice's profile, and none of the
                # whole server's socket counters (every user's traffic).
                r = self.call(bob, "GET", "/v1/metrics")
                self.assertEqual(r.status, 200, r.text)
                self.assertIn("tokend_waiting_requests", r.text)
                self.assertNotIn('profile="jira"', r.text)
                self.assertNotIn("tokend_http_", r.text)
                for method, target, body in (
                        ("GET", "/v1/profiles/jira", None),
                        ("GET", "/v1/profiles/jira/token", None),
                        ("POST", "/v1/profiles/jira/refresh", None),
                        ("POST", "/v1/profiles/jira/login", {"listen": False}),
                        ("GET", "/v1/profiles/jira/login", None),
                        ("POST", "/v1/profiles/jira/logout", None),
                        ("POST", "/v1/profiles/jira/test", None),
                        ("DELETE", "/v1/profiles/jira", None),
                        ("GET", "/v1/proxy/jira/me", None),
                        ("POST", "/v1/mcp/jira", {"jsonrpc": "2.0", "id": 1, "method": "ping"})):
                    r = self.call(bob, method, target, body)
                    self.assertEqual((r.status, r.code), (404, "not_found"), f"{method} {target}: {r.text}")
                # Alice's code sent as Bob, and a cancel: Bob has no flow.
                r = self.call(bob, "POST", "/v1/profiles/jira/login/complete", {"code": code})
                self.assertEqual((r.status, r.code), (409, "conflict"), r.text)
                r = self.call(bob, "DELETE", "/v1/profiles/jira/login")
                self.assertEqual((r.status, r.code), (409, "conflict"), r.text)
                # Bob's audit log holds his own attempts, none of Alice's lines.
                r = self.call(bob, "GET", "/v1/audit")
                self.assertEqual(r.status, 200, r.text)
                self.assertNotIn(ALICE, r.text)
                events = r.json()["events"]
                # (A service's token fetch is audited too, found or not.)
                service = label.endswith("service")
                self.assertEqual({e["kind"] for e in events},
                                 {"proxy", "logout_requested"} | ({"token_fetched"} if service else set()))
                self.assertEqual({e["detail"]["user"] for e in events}, {BOB})

        # Alice's profile is as it was, nothing reached the provider for it,
        # and her login still waits for her code.
        self.assertEqual(self.call(alice, "GET", "/v1/profiles/jira").json(), before)
        self.assertEqual(self.up.stats().get("refreshes_by_grant", {}).get(g["grant_id"], 0), 0)
        self.assertEqual(self.token(alice), g["access_token"])
        r = self.call(alice, "GET", "/v1/profiles/jira/login")
        self.assertEqual((r.status, r.json()["state"]), (200, "pending"), r.text)
        r = self.call(alice, "POST", "/v1/profiles/jira/login/complete", {"code": code})
        self.assertEqual((r.status, r.json()["state"]), (200, "succeeded"), r.text)
        g = {"access_token": self.token(alice)}

        # Bob's own "jira" is another profile: created (201), not Alice's replaced.
        gb = self.put_grant(self.as_user(BOB))
        self.assertEqual(self.token(self.as_user(BOB)), gb["access_token"])
        self.assertEqual(self.token(alice), g["access_token"])
        r = self.call(self.as_user(BOB), "DELETE", "/v1/profiles/jira")
        self.assertEqual(r.status, 204, r.text)
        self.assertEqual(self.token(alice), g["access_token"])

    def test_events_reach_only_their_user(self):
        alice, bob = self.as_user(ALICE), self.as_user(BOB)
        self.put_grant(alice)
        bob_events = EventStream(self.socket, bob)
        alice_events = EventStream(self.socket, alice)
        try:
            bob_events.wait_for("tokend event stream", "bob's stream to open")
            alice_events.wait_for("tokend event stream", "alice's stream to open")
            r = self.call(alice, "POST", "/v1/profiles/jira/refresh")
            self.assertEqual(r.status, 200, r.text)
            alice_events.wait_for("event: refreshed", "alice's refreshed event")
            # Bob's next event comes after Alice's refresh: had hers reached
            # his stream, it would be there before it.
            self.put_grant(bob, name="own")
            seen = bob_events.wait_for('"profile":"own"', "bob's own event")
            self.assertNotIn("jira", seen)
            self.assertNotIn("refreshed", seen)
        finally:
            bob_events.close()
            alice_events.close()

    def test_login_and_proxy_act_for_the_caller(self):
        alice = self.as_service(MCP_SECRET, ALICE)
        self.put_grant(alice)
        code = self.pending_login_code(alice)
        r = self.call(alice, "POST", "/v1/profiles/jira/login/complete", {"code": code})
        self.assertEqual(r.status, 200, r.text)
        self.assertEqual(r.json()["state"], "succeeded")
        token = self.token(alice)
        live = {t["token"]: t for t in self.up.tokens() if t.get("token")}
        self.assertTrue(live[token]["valid"])

        r = self.call(alice + [("X-Forwarded-User-Extra", "x")], "GET", "/v1/proxy/jira/me")
        self.assertEqual(r.status, 200, r.text)
        call = [e for e in self.up.log(settle=True) if e.get("path") == "/me"][-1]
        sent = {k.lower(): v for k, v in call["headers"].items()}
        self.assertEqual(sent["authorization"], "Bearer " + token)
        self.assertNotIn("x-tokend-act-as", sent)

        # The audit names the user and the service.
        audit = self.call(alice, "GET", "/v1/audit").json()
        kinds = {(e["kind"], e["detail"].get("user"), e["detail"].get("service")) for e in audit["events"]}
        self.assertIn(("login_started", ALICE, "mcp"), kinds)
        self.assertIn(("proxy", ALICE, "mcp"), kinds)

    # -- the replica's own endpoints -----------------------------------------------------

    def test_every_token_a_service_fetches_is_audited(self):
        g = self.put_grant(self.as_user(ALICE))
        mcp = self.as_service(MCP_SECRET, ALICE)
        token = self.token(mcp)
        self.assertEqual(token, g["access_token"])
        r = self.call(mcp, "GET", "/v1/profiles/nope/token")
        self.assertEqual((r.status, r.code), (404, "not_found"), r.text)
        # Alice's own fetch through the proxy is no service's.
        self.assertEqual(self.token(self.as_user(ALICE)), token)
        r = self.call(self.as_user(ALICE), "GET", "/v1/audit")
        self.assertEqual(r.status, 200, r.text)
        fetched = sorted((e["profile"], e["detail"].get("user"), e["detail"].get("service"),
                          e["detail"].get("status"), e["detail"].get("error"))
                         for e in r.json()["events"] if e["kind"] == "token_fetched")
        self.assertEqual(fetched, [("jira", ALICE, "mcp", 200, None),
                                   ("nope", ALICE, "mcp", 404, "not_found")])
        # No secret in the audit, as answered or as stored; none in Bob's.
        stored = self.pg.psql(self.database, "SELECT kind, profile, detail FROM audit_events")
        self.assertIsNotNone(stored)
        self.assertIn("token_fetched", stored)
        for text in (r.text, stored):
            for secret in (token, g["refresh_token"], CLIENT_SECRET, MCP_SECRET):
                self.assertNotIn(secret, text)
        r = self.call(self.as_user(BOB), "GET", "/v1/audit")
        self.assertEqual(r.status, 200, r.text)
        self.assertNotIn("token_fetched", r.text)

    def test_replica_endpoints_answer_the_host_and_never_a_user(self):
        self.put_grant(self.as_user(ALICE))
        r = self.call([], "GET", "/v1/server/health")
        self.assertEqual(r.status, 200, r.text)
        health = r.json()
        self.assertEqual(health["status"], "ok")
        self.assertEqual(health["pid"], self.daemon.proc.pid)
        self.assertGreaterEqual(health["users_loaded"], 1)
        r = self.call([], "GET", "/v1/server/ready")
        self.assertEqual(r.status, 200, r.text)
        self.assertTrue(r.json()["ready"])
        self.assertGreaterEqual(r.json()["schema_version"], 1)
        r = self.call([], "GET", "/v1/server/metrics")
        self.assertEqual(r.status, 200, r.text)
        self.assertRegex(r.text, r"(?m)^tokend_server_users_loaded [1-9][0-9]*$")
        self.assertRegex(r.text, r"(?m)^tokend_http_requests_total [1-9][0-9]*$")
        self.assertNotIn(ALICE, r.text)
        # Whoever names a user (through the proxy, or as a service) is refused:
        # these act for no user, and the counters are every user's traffic.
        for who in (self.as_user(ALICE), self.as_service(MCP_SECRET, ALICE)):
            for target in ("/v1/server/health", "/v1/server/ready", "/v1/server/metrics"):
                with self.subTest(who=[h[0] for h in who], target=target):
                    r = self.call(who, "GET", target)
                    self.assertEqual((r.status, r.code), (403, "not_for_users"), r.text)

    def test_each_user_has_a_request_budget(self):
        self.restart(extra=["--user-rate-limit", "3"])
        alice, bob = self.as_user(ALICE), self.as_service(OPS_SECRET, BOB)
        for _ in range(3):
            self.assertEqual(self.call(alice, "GET", "/v1/profiles").status, 200)
        r = self.call(alice, "GET", "/v1/profiles")
        self.assertEqual((r.status, r.code), (429, "rate_limited"), r.text)
        self.assertIn("user-rate-limit", r.json()["error"]["message"])
        retry = re.search(r"(?im)^retry-after: *([0-9]+)\r?$", r.headers)
        self.assertIsNotNone(retry, r.headers)
        self.assertTrue(1 <= int(retry.group(1)) <= 21, r.headers)  # a token every 20 s
        # Another user's budget is their own, and the replica's endpoints
        # are nobody's.
        for _ in range(3):
            self.assertEqual(self.call(bob, "GET", "/v1/profiles").status, 200)
        self.assertEqual(self.call(bob, "GET", "/v1/profiles").status, 429)
        self.assertEqual(self.call([], "GET", "/v1/server/health").status, 200)

    def test_each_service_has_a_request_budget(self):
        # mcp may make 3 requests a minute over all its users; ops has no
        # budget of its own (service-rate-limit defaults to 0).
        self.mcp_settings = "rate-limit = 3\n"
        self.restart()
        for user in (ALICE, "carol@example.com", ALICE):
            r = self.call(self.as_service(MCP_SECRET, user), "GET", "/v1/profiles")
            self.assertEqual(r.status, 200, r.text)
        r = self.call(self.as_service(MCP_SECRET, "dave@example.com"), "GET", "/v1/profiles")
        self.assertEqual((r.status, r.code), (429, "rate_limited"), r.text)
        self.assertIn("[service.mcp] rate-limit", r.json()["error"]["message"])
        retry = re.search(r"(?im)^retry-after: *([0-9]+)\r?$", r.headers)
        self.assertIsNotNone(retry, r.headers)
        self.assertTrue(1 <= int(retry.group(1)) <= 20, r.headers)  # a request every 20 s
        # Another service's budget is its own, and the users' requests
        # through the proxy spend nothing of mcp's (nor the refusal theirs).
        for _ in range(5):
            self.assertEqual(self.call(self.as_service(OPS_SECRET, BOB), "GET", "/v1/profiles").status, 200)
        self.assertEqual(self.call(self.as_user("dave@example.com"), "GET", "/v1/profiles").status, 200)
        self.assertEqual(self.call(self.as_service(MCP_SECRET, ALICE), "GET", "/v1/profiles").status, 429)
        # SIGHUP applies a changed budget.
        self.mcp_settings = "rate-limit = 0\n"
        self.config(os.geteuid())
        self.daemon.proc.send_signal(signal.SIGHUP)
        self.daemon.wait_for_line("configuration reloaded")
        for _ in range(5):
            self.assertEqual(self.call(self.as_service(MCP_SECRET, ALICE), "GET", "/v1/profiles").status, 200)

    def test_a_service_acting_for_a_user_spends_the_users_budget_too(self):
        self.mcp_settings = "rate-limit = 4\n"
        self.restart(extra=["--user-rate-limit", "2"])
        mcp = self.as_service(MCP_SECRET, ALICE)
        for _ in range(2):
            self.assertEqual(self.call(mcp, "GET", "/v1/profiles").status, 200)
        r = self.call(mcp, "GET", "/v1/profiles")
        self.assertEqual((r.status, r.code), (429, "rate_limited"), r.text)
        self.assertIn(f"user '{ALICE}'", r.json()["error"]["message"])
        self.assertIn("user-rate-limit", r.json()["error"]["message"])
        # Refused by alice's budget, the request spent nothing of mcp's: 2 left.
        for i in range(2):
            self.assertEqual(self.call(self.as_service(MCP_SECRET, f"u{i}@example.com"), "GET",
                                       "/v1/profiles").status, 200)
        r = self.call(self.as_service(MCP_SECRET, "u2@example.com"), "GET", "/v1/profiles")
        self.assertEqual((r.status, r.code), (429, "rate_limited"), r.text)
        self.assertIn("[service.mcp] rate-limit", r.json()["error"]["message"])

    # -- identity -----------------------------------------------------------------------

    def test_no_identity_and_bad_credentials_are_refused(self):
        cases = (
            ([], 401, "unauthenticated"),
            ([("X-Tokend-Act-As", ALICE)], 401, "unauthenticated"),
            ([("Authorization", "Bearer " + "x" * 60), ("X-Tokend-Act-As", ALICE)], 401, "unauthenticated"),
            ([("Authorization", "Bearer " + MCP_SECRET)], 401, "act_as_required"),
            (self.as_service(MCP_SECRET, BOB), 403, "act_as_denied"),
            (self.as_service(OPS_SECRET, ALICE), 403, "act_as_denied"),
            (self.as_user("") , 401, "invalid_user"),
            (self.as_user(ALICE) + [("X-Tokend-Act-As", BOB)], 403, "ambiguous_identity"),
        )
        for headers, status, code in cases:
            with self.subTest(headers=[h[0] for h in headers], code=code):
                r = self.call(headers, "GET", "/v1/profiles")
                self.assertEqual((r.status, r.code), (status, code), r.text)
        # The services for the users they may act for.
        self.assertEqual(self.call(self.as_service(MCP_SECRET, ALICE), "GET", "/v1/profiles").status, 200)
        self.assertEqual(self.call(self.as_service(OPS_SECRET, BOB), "GET", "/v1/profiles").status, 200)
        # The refusal is in the log, and in the audit of the user it named.
        self.daemon.wait_for_line("act_as_denied")
        audit = self.call(self.as_user(BOB), "GET", "/v1/audit").json()
        refused = [e for e in audit["events"] if e["kind"] == "identity_refused"]
        self.assertEqual([(e["detail"]["code"], e["detail"]["service"]) for e in refused],
                         [("act_as_denied", "mcp")])

    def test_user_header_from_an_untrusted_peer_is_refused(self):
        self.put_grant(self.as_user(ALICE))
        nobody = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else os.geteuid() + 1
        self.restart(trusted_uid=nobody)
        r = self.call(self.as_user(ALICE), "GET", "/v1/profiles/jira/token")
        self.assertEqual((r.status, r.code), (403, "untrusted_user_header"), r.text)
        self.assertNotIn("access_token", r.text)
        # The same peer as a service is fine.
        r = self.call(self.as_service(MCP_SECRET, ALICE), "GET", "/v1/profiles/jira")
        self.assertEqual(r.status, 200, r.text)
        # ...but not with the header added.
        r = self.call(self.as_service(MCP_SECRET, ALICE) + self.as_user(ALICE), "GET", "/v1/profiles")
        self.assertEqual((r.status, r.code), (403, "untrusted_user_header"), r.text)

    def test_single_user_features_that_act_on_the_host_are_refused(self):
        alice = self.as_user(ALICE)
        r = self.call(alice, "PUT", "/v1/profiles/s", {"kind": "oauth2", "token_url": self.up.token_url,
                                                        "client_id": CLIENT_ID,
                                                        "sinks": [{"type": "file", "path": "/tmp/x"}]})
        self.assertEqual((r.status, r.code), (403, "forbidden"), r.text)
        self.put_grant(alice)
        r = self.call(alice, "POST", "/v1/profiles/jira/endpoint")
        self.assertEqual((r.status, r.code), (403, "forbidden"), r.text)

    def test_sighup_reloads_the_services_secrets(self):
        r = self.call(self.as_service(MCP_SECRET, ALICE), "GET", "/v1/profiles")
        self.assertEqual(r.status, 200, r.text)
        write_private(os.path.join(self.dir, "mcp.secret"), MCP_SECRET_2 + "\n")
        self.daemon.proc.send_signal(signal.SIGHUP)
        self.daemon.wait_for_line("configuration reloaded")
        r = self.call(self.as_service(MCP_SECRET, ALICE), "GET", "/v1/profiles")
        self.assertEqual((r.status, r.code), (401, "unauthenticated"), r.text)
        r = self.call(self.as_service(MCP_SECRET_2, ALICE), "GET", "/v1/profiles")
        self.assertEqual(r.status, 200, r.text)

    # -- tenants ------------------------------------------------------------------------

    def test_users_with_profiles_are_loaded_at_start_and_refreshed(self):
        g = self.put_grant(self.as_user(ALICE))
        self.assertEqual(self.daemon.stop(), 0, self.daemon.output())
        self.logs.append(self.daemon.output())
        # Alice's token now expires in 30 s: due for a refresh (5 min buffer).
        soon = int((time.time() + 30) * 1000)
        self.assertIsNotNone(self.pg.psql(self.database, f"UPDATE credentials SET expires_at = {soon}"))
        self.start()
        self.daemon.wait_for_line(f"user '{ALICE}': 1 profile(s) loaded")
        # Refreshed with no request from anyone.
        wait_for(lambda: self.up.stats().get("refreshes_by_grant", {}).get(g["grant_id"], 0) == 1,
                 "alice's grant to be refreshed")
        self.assertNotEqual(self.token(self.as_user(ALICE)), g["access_token"])

    # -- rotate-key -----------------------------------------------------------------------

    def test_rotate_key_on_a_live_database(self):
        alice = self.as_user(ALICE)
        g = self.put_grant(alice)
        new_kek = write_private(os.path.join(self.dir, "kek2"), secrets.token_hex(32) + "\n")
        common = ["--database-url-file", self.db_file]

        # Refusals change nothing.
        r = self.rotate(*common, "--kek-file", self.kek_file)
        self.assertEqual(r.returncode, EXIT_USAGE, r.stderr)
        self.assertIn("--new-kek-file", r.stderr)
        r = self.rotate(*common, "--kek-file", self.kek_file, "--new-kek-file", self.kek_file)
        self.assertEqual(r.returncode, EXIT_USAGE, r.stderr)
        self.assertIn("current key's id", r.stderr)
        r = self.rotate(*common, "--kek-file", new_kek, "--new-kek-file", new_kek)
        self.assertEqual(r.returncode, EXIT_REFUSED, r.stderr)
        r = self.rotate(*common, "--kek-file", self.kek_file, "--new-kek-file", os.path.join(self.dir, "missing"))
        self.assertEqual(r.returncode, EXIT_USAGE, r.stderr)
        self.assertIn("does not exist", r.stderr)

        # While tokend runs.
        r = self.rotate(*common, "--kek-file", self.kek_file, "--new-kek-file", new_kek)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("now wrapped by key", r.stderr)
        for out in (r.stdout, r.stderr):
            self.assertNotIn(self.kek, out)

        # The old key no longer opens the database; the new one does, with
        # the secrets intact.
        self.assertEqual(self.daemon.stop(), 0, self.daemon.output())
        self.logs.append(self.daemon.output())
        old = Daemon(TOKEND, self.xdg.env, ["--server", "--config", self.config(os.geteuid())])
        self.assertEqual(old.wait_exit(), EXIT_REFUSED, old.output())
        self.logs.append(old.output())
        self.start(kek_file=new_kek)
        self.assertEqual(self.token(alice), g["access_token"])
        r = self.call(alice, "POST", "/v1/profiles/jira/refresh")
        self.assertEqual(r.status, 200, r.text)
        self.assertNotEqual(self.token(alice), g["access_token"])
        self.daemon.stop()
        self.logs.append(self.daemon.output())
        self.daemon = None


    def test_sighup_takes_a_rotated_key_on_every_replica(self):
        alice = self.as_user(ALICE)
        g = self.put_grant(alice)
        old_key = write_private(os.path.join(self.dir, "kek.old"), self.kek + "\n")
        # A second replica on the same database and key file.
        socket2 = os.path.join(self.dir, "srv2", "tokend.sock")
        second = Daemon(TOKEND, self.xdg.env, ["--server", "--config", self.config(os.geteuid()),
                                               "--socket", socket2, "--ca-bundle", self.up.ca_file,
                                               "--log-level", "debug"])
        try:
            second.wait_ready(socket2)
            replicas = ((self.daemon, self.socket), (second, socket2))

            def token_on(sock):
                r = exchange(sock, "GET", "/v1/profiles/jira/token", alice)
                self.assertEqual(r.status, 200, r.text)
                return r.json()["token"]

            # A wrong key, then a key file anyone may read: refused, the key
            # in use stays, and both replicas go on serving.
            write_private(self.kek_file, secrets.token_hex(32) + "\n")
            self.daemon.proc.send_signal(signal.SIGHUP)
            self.daemon.wait_for_line(re.compile(r"SIGHUP: the key-encryption key from .* was not taken "
                                                 r"\(key 'kek-[0-9a-f]+' stays\): .*does not open this database"))
            write_private(self.kek_file, self.kek + "\n")
            os.chmod(self.kek_file, 0o644)
            second.proc.send_signal(signal.SIGHUP)
            second.wait_for_line("SIGHUP: the key-encryption key was not re-read")
            os.chmod(self.kek_file, 0o600)
            for _, sock in replicas:
                self.assertEqual(token_on(sock), g["access_token"])

            # rotate-key while both run, then the new key in the file and SIGHUP.
            new_key = secrets.token_hex(32)
            new_file = write_private(os.path.join(self.dir, "kek.new"), new_key + "\n")
            r = self.rotate("--database-url-file", self.db_file, "--kek-file", self.kek_file,
                            "--new-kek-file", new_file)
            self.assertEqual(r.returncode, 0, r.stderr)
            new_id = re.search(r"now wrapped by key '([^']+)'", r.stderr).group(1)
            write_private(self.kek_file, new_key + "\n")
            for daemon, _ in replicas:
                daemon.proc.send_signal(signal.SIGHUP)
                daemon.wait_for_line(f"key-encryption key '{new_id}' from ")
            # Each replica writes under the new key: a forced refresh is
            # stored, and served by the other replica.
            for (daemon, sock), (_, other) in (replicas, replicas[::-1]):
                before = token_on(sock)
                r = exchange(sock, "POST", "/v1/profiles/jira/refresh", alice)
                self.assertEqual(r.status, 200, r.text)
                fresh = token_on(sock)
                self.assertNotEqual(fresh, before)
                wait_for(lambda: token_on(other) == fresh, "the other replica to serve the new token")
            self.assertEqual(self.pg.psql(self.database, "SELECT DISTINCT kek_id FROM credentials").split(),
                             [new_id])
            for daemon, _ in replicas:
                self.assertNotIn(self.kek, daemon.output())
                self.assertNotIn(new_key, daemon.output())
        finally:
            self.assertEqual(second.stop(), 0, second.output())
            self.logs.append(second.output())
        # The old key no longer opens the database.
        old = Daemon(TOKEND, self.xdg.env, ["--server", "--config", self.config(os.geteuid()),
                                            "--kek-file", old_key, "--socket",
                                            os.path.join(self.dir, "srv3", "tokend.sock")])
        self.assertEqual(old.wait_exit(), EXIT_REFUSED, old.output())
        self.assertIn(new_id, old.output())
        self.logs.append(old.output())

if __name__ == "__main__":
    unittest.main()

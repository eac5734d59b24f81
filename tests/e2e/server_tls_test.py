"""Server mode over TLS end to end: the real `tokend --server` with a TLS
listener (`listen`), a CA made at test time (tests/fake_upstream/make_ca.py)
and client certificates made with openssl, on a throwaway PostgreSQL.

Shows: the API over TLS 1.2+ with ALPN http/1.1; a service authenticated by
its client certificate (cert-subject) acting only for its act-for users and
only with X-Tokend-Act-As; a certificate from another CA refused in the
handshake; the user header never taken over TLS; plain HTTP on the TLS port
answered 400; the replica's endpoints only on the socket; SIGHUP serving a
new certificate to new connections; a key file that is not private refused
at start; the listeners' counters in /v1/server/metrics after good and bad
handshakes, exact. Every wait polls against a deadline."""
import http.server
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fake_upstream"))

from harness import EXIT_REFUSED, Daemon, XdgTree, binaries, free_port, wait_for  # noqa: E402

TOKEND, TOKENCTL = binaries()

from make_ca import make_ca  # noqa: E402
from server_mode_test import Answer, PgCluster, exchange, write_private  # noqa: E402

ALICE = "alice@example.com"
BOB = "bob@example.org"
OPS_SECRET = "svc-MARKER-ops-" + "o" * 40
GATE_SUBJECT = "spiffe://example.org/gate"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True,
                   stdin=subprocess.DEVNULL)


def client_cert(ca_dir, name, cn, san=None, ca="ca"):
    """A client certificate signed by ca.pem/ca.key (or another CA's)."""
    key = os.path.join(ca_dir, name + ".key")
    cert = os.path.join(ca_dir, name + ".pem")
    csr = os.path.join(ca_dir, name + ".csr")
    ext = os.path.join(ca_dir, name + ".ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n")
        if san:
            f.write(f"subjectAltName={san}\n")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", f"/CN={cn}", "-keyout", key, "-out", csr, cwd=ca_dir)
    openssl("x509", "-req", "-in", csr, "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-sha256", "-extfile", ext, "-out", cert, cwd=ca_dir)
    os.chmod(key, 0o600)
    return cert, key


def server_cert(ca_dir, name, cn):
    key = os.path.join(ca_dir, name + ".key")
    cert = os.path.join(ca_dir, name + ".pem")
    csr = os.path.join(ca_dir, name + ".csr")
    ext = os.path.join(ca_dir, name + ".ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
                "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", f"/CN={cn}", "-keyout", key, "-out", csr, cwd=ca_dir)
    openssl("x509", "-req", "-in", csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-sha256", "-extfile", ext, "-out", cert, cwd=ca_dir)
    os.chmod(key, 0o600)
    return cert, key


class ServerTlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster()
        cls.ca_dir = os.path.join(cls.pg.dir, "ca")
        cls.ca = make_ca(cls.ca_dir, key_type="ec")
        # Another CA nobody trusts.
        openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-days", "2", "-subj", "/CN=rogue CA", "-addext",
                "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
                "-keyout", "rogue.key", "-out", "rogue.pem", cwd=cls.ca_dir)
        cls.gate = client_cert(cls.ca_dir, "gate", "gate-service", f"URI:{GATE_SUBJECT}")
        cls.stranger = client_cert(cls.ca_dir, "stranger", "someone-else")
        cls.rogue = client_cert(cls.ca_dir, "rogue-gate", "gate-service", f"URI:{GATE_SUBJECT}", ca="rogue")
        cls.logs = []

    @classmethod
    def tearDownClass(cls):
        cls.pg.stop()
        for text in cls.logs:
            assert OPS_SECRET not in text, "a secret appears in tokend's log"
            assert "PRIVATE KEY" not in text

    def setUp(self):
        self.xdg = XdgTree()
        self.dir = self.xdg.root
        database = "tokend_" + secrets.token_hex(6)
        self.assertIsNotNone(self.pg.psql("postgres", f"CREATE DATABASE {database}"))
        self.db_file = write_private(os.path.join(self.dir, "db.conninfo"), self.pg.conninfo(database) + "\n")
        self.kek_file = write_private(os.path.join(self.dir, "kek"), secrets.token_hex(32) + "\n")
        self.ops_file = write_private(os.path.join(self.dir, "ops.secret"), OPS_SECRET + "\n")
        self.socket = os.path.join(self.dir, "srv", "tokend.sock")
        self.port = free_port()
        self.cert_file, self.key_file = self.ca["cert_file"], self.ca["key_file"]
        self.daemon = None

    def tearDown(self):
        if self.daemon and self.daemon.proc.poll() is None:
            self.assertEqual(self.daemon.stop(), 0, self.daemon.output())
        if self.daemon:
            self.logs.append(self.daemon.output())
        self.xdg.close()

    def config(self):
        path = os.path.join(self.dir, "server.conf")
        with open(path, "w") as f:
            f.write(f"database-url-file = {self.db_file}\n"
                    f"kek-file = {self.kek_file}\n"
                    f"socket = {self.socket}\n"
                    f"listen = 127.0.0.1:{self.port}\n"
                    f"tls-cert-file = {self.cert_file}\n"
                    f"tls-key-file = {self.key_file}\n"
                    f"tls-client-ca-file = {self.ca['ca_file']}\n"
                    "[service.gate]\n"
                    f"cert-subject = {GATE_SUBJECT}\n"
                    "act-for = *@example.com\n"
                    "[service.ops]\n"
                    f"secret-file = {self.ops_file}\n"
                    f"act-for = {BOB}\n")
        return path

    def start(self, extra=()):
        self.daemon = Daemon(TOKEND, self.xdg.env, ["--server", "--config", self.config(), "--log-level", "debug",
                                                    *extra])
        self.daemon.wait_ready(self.socket)

    def context(self, cert=None, max_version=None):
        ctx = ssl.create_default_context(cafile=self.ca["ca_file"])
        ctx.set_alpn_protocols(["http/1.1"])
        if cert:
            ctx.load_cert_chain(*cert)
        if max_version:
            ctx.maximum_version = max_version
        return ctx

    def connect(self, cert=None, max_version=None):
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return self.context(cert, max_version).wrap_socket(raw, server_hostname="localhost")

    def call(self, method, target, headers=(), body=None, cert=None):
        """One request on its own TLS connection; the answer."""
        import json
        data = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        for k, v in headers:
            head += f"{k}: {v}\r\n"
        head += f"Content-Length: {len(data)}\r\n\r\n"
        with self.connect(cert) as s:
            self.assertEqual(s.selected_alpn_protocol(), "http/1.1")
            s.sendall(head.encode() + data)
            chunks = []
            while True:
                try:
                    b = s.recv(65536)
                except ssl.SSLZeroReturnError:
                    break
                if not b:
                    break
                chunks.append(b)
        raw = b"".join(chunks)
        head_bytes, _, payload = raw.partition(b"\r\n\r\n")
        return Answer(int(head_bytes[9:12]), head_bytes.decode(errors="replace"), payload.decode(errors="replace"))

    def put_profile(self, who, name, cert=None):
        r = self.call("PUT", f"/v1/profiles/{name}", who,
                      {"kind": "pat", "site": "https://jira.example.com", "token": f"tok-{name}-" + secrets.token_hex(8)}, cert=cert)
        self.assertEqual(r.status, 201, r.text)

    # ---------------------------------------------------------------------------------

    def test_services_by_certificate_and_secret_over_tls(self):
        self.start()
        gate_as = lambda user: [("X-Tokend-Act-As", user)]  # noqa: E731
        ops_as = [("Authorization", "Bearer " + OPS_SECRET), ("X-Tokend-Act-As", BOB)]

        # The certificate service acts for Alice; the secret service for Bob.
        self.put_profile(gate_as(ALICE), "jira", cert=self.gate)
        self.put_profile(ops_as, "wiki")
        r = self.call("GET", "/v1/profiles/jira/token", gate_as(ALICE), cert=self.gate)
        self.assertEqual(r.status, 200, r.text)
        self.assertTrue(r.json()["token"].startswith("tok-jira-"))
        r = self.call("GET", "/v1/profiles", gate_as(ALICE), cert=self.gate)
        self.assertEqual(r.status, 200, r.text)
        self.assertNotIn("wiki", r.text)
        # Bob's profile is not Alice's to reach, and the certificate service
        # may not act for Bob at all.
        self.assertEqual(self.call("GET", "/v1/profiles/wiki", gate_as(ALICE), cert=self.gate).status, 404)
        r = self.call("GET", "/v1/profiles/wiki", gate_as(BOB), cert=self.gate)
        self.assertEqual((r.status, r.code), (403, "act_as_denied"), r.text)
        r = self.call("GET", "/v1/profiles", [], cert=self.gate)
        self.assertEqual((r.status, r.code), (401, "act_as_required"), r.text)
        # A certificate the CA signed that names no service identifies nobody.
        r = self.call("GET", "/v1/profiles", gate_as(ALICE), cert=self.stranger)
        self.assertEqual((r.status, r.code), (401, "unauthenticated"), r.text)
        # Nothing at all, and the trusted proxy's header, which TLS never carries.
        r = self.call("GET", "/v1/profiles")
        self.assertEqual((r.status, r.code), (401, "unauthenticated"), r.text)
        r = self.call("GET", "/v1/profiles", [("X-Forwarded-User", ALICE)], cert=self.gate)
        self.assertEqual((r.status, r.code), (403, "untrusted_user_header"), r.text)
        # The secret service over TLS, and its secret with another's certificate.
        r = self.call("GET", "/v1/profiles/wiki", ops_as)
        self.assertEqual(r.status, 200, r.text)
        r = self.call("GET", "/v1/profiles/wiki", ops_as, cert=self.gate)
        self.assertEqual((r.status, r.code), (403, "ambiguous_identity"), r.text)
        # The replica's endpoints stay on the socket.
        r = self.call("GET", "/v1/server/health")
        self.assertEqual((r.status, r.code), (403, "socket_only"), r.text)
        # TLS 1.2 is served too.
        with self.connect(max_version=ssl.TLSVersion.TLSv1_2) as s:
            self.assertEqual(s.version(), "TLSv1.2")

    def test_a_certificate_from_another_ca_is_refused_in_the_handshake(self):
        self.start()
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            with self.subTest(version=version):
                with self.assertRaises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
                    with self.connect(self.rogue, max_version=version) as s:
                        # TLS 1.3 reports the refusal at the first read.
                        s.sendall(b"GET /v1/profiles HTTP/1.1\r\nHost: x\r\nX-Tokend-Act-As: " +
                                  ALICE.encode() + b"\r\n\r\n")
                        if not s.recv(1024):
                            raise ConnectionResetError("closed without an answer")
        self.daemon.wait_for_line("TLS handshake failed")
        # Served as before.
        self.assertEqual(self.call("GET", "/v1/profiles", [("X-Tokend-Act-As", ALICE)], cert=self.gate).status, 200)

    def test_plain_http_on_the_tls_port_gets_400(self):
        self.start()
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"GET /v1/profiles HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while True:
                b = s.recv(4096)
                if not b:
                    break
                got += b
        self.assertTrue(got.startswith(b"HTTP/1.1 400 "), got)
        self.assertIn(b"use https://", got)

    def test_an_oidc_issuer_that_answers_garbage_refuses_the_start_one_unreachable_does_not(self):
        secret = write_private(os.path.join(self.dir, "oidc.secret"), "oidc-client-secret-MARKER\n")

        class Garbage(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = b"<html>not metadata</html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        garbage = http.server.HTTPServer(("127.0.0.1", 0), Garbage)
        threading.Thread(target=garbage.serve_forever, daemon=True).start()
        silent_port = free_port()  # nothing listens there
        try:
            for issuer, why in ((f"http://127.0.0.1:{garbage.server_port}", "not JSON"),
                                (f"http://127.0.0.1:{silent_port}", "")):
                unreachable = issuer.endswith(f":{silent_port}")
                with self.subTest(issuer=issuer):
                    config = self.config()
                    with open(config, "r+") as f:
                        text = f.read()
                        f.seek(0)
                        f.write(f"public-url = https://localhost:{self.port}\n"
                                f"oidc-issuer = {issuer}\noidc-client-id = tokend\n"
                                f"oidc-client-secret-file = {secret}\n" + text)
                    daemon = Daemon(TOKEND, self.xdg.env, ["--server", "--config", config])
                    if unreachable:
                        # An identity provider that cannot be reached does not keep
                        # a replica down: it starts, says so, and serves the socket.
                        daemon.wait_ready(self.socket)
                        self.assertEqual(exchange(self.socket, "GET", "/v1/server/ready").status, 200)
                        self.assertEqual(daemon.stop(), 0)
                        out = daemon.output()
                        self.logs.append(out)
                        self.assertIn(f"oidc-issuer {issuer} cannot be reached for OpenID Connect "
                                      "discovery", out)
                        self.assertIn("starting anyway", out)
                        self.assertNotIn("oidc-client-secret-MARKER", out)
                        continue
                    self.assertEqual(daemon.wait_exit(), EXIT_REFUSED, daemon.output())
                    out = daemon.output()
                    self.logs.append(out)
                    self.assertIn(f"oidc-issuer {issuer} does not answer OpenID Connect discovery", out)
                    self.assertIn(why, out)
                    # Every handle closed before the exit, and nothing served.
                    self.assertNotIn("handles still open", out)
                    self.assertFalse(os.path.exists(self.socket))
                    self.assertNotIn("oidc-client-secret-MARKER", out)
        finally:
            garbage.shutdown()
            garbage.server_close()

    def tls_counters(self):
        """The tokend_tls_* samples of /v1/server/metrics (on the socket)."""
        r = exchange(self.socket, "GET", "/v1/server/metrics")
        self.assertEqual(r.status, 200, r.text)
        out = {}
        for line in r.text.splitlines():
            if line.startswith("tokend_tls_"):
                name, value = line.rsplit(" ", 1)
                out[name] = int(value)
        return out

    def expect_tls_counters(self, expected):
        """Polls until the counters are exactly `expected` (the loop counts a
        connection's end when it reads it), then checks once more."""
        try:
            wait_for(lambda: self.tls_counters() == expected, "the TLS counters", deadline=10)
        finally:
            self.assertEqual(self.tls_counters(), expected)

    def test_tls_listener_counters_in_the_replica_metrics(self):
        self.start(extra=["--request-timeout", "1s"])
        c = {'tokend_tls_handshakes_ok_total{client_cert="none"}': 0,
             'tokend_tls_handshakes_ok_total{client_cert="verified"}': 0,
             'tokend_tls_handshakes_failed_total{reason="client_cert"}': 0,
             'tokend_tls_handshakes_failed_total{reason="protocol"}': 0,
             'tokend_tls_handshakes_failed_total{reason="timeout"}': 0,
             'tokend_tls_handshakes_failed_total{reason="closed"}': 0,
             'tokend_tls_plaintext_refused_total': 0,
             'tokend_tls_connections_open': 0}
        self.expect_tls_counters(c)
        # A handshake without a client certificate, kept open.
        held = self.connect()
        c['tokend_tls_handshakes_ok_total{client_cert="none"}'] = 1
        c['tokend_tls_connections_open'] = 1
        self.expect_tls_counters(c)
        # One with the service's certificate; its connection closes after the answer.
        self.assertEqual(self.call("GET", "/v1/profiles", [("X-Tokend-Act-As", ALICE)], cert=self.gate).status, 200)
        c['tokend_tls_handshakes_ok_total{client_cert="verified"}'] = 1
        self.expect_tls_counters(c)
        # A certificate from another CA, in TLS 1.2 and 1.3.
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            with self.assertRaises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
                with self.connect(self.rogue, max_version=version) as s:
                    s.sendall(b"GET /v1/profiles HTTP/1.1\r\nHost: x\r\n\r\n")
                    if not s.recv(1024):
                        raise ConnectionResetError("closed without an answer")
        c['tokend_tls_handshakes_failed_total{reason="client_cert"}'] = 2
        self.expect_tls_counters(c)
        # ALPN without http/1.1: refused by TLS itself.
        ctx = self.context()
        ctx.set_alpn_protocols(["h2"])
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
            with self.assertRaises((ssl.SSLError, ConnectionResetError)):
                ctx.wrap_socket(raw, server_hostname="localhost")
        c['tokend_tls_handshakes_failed_total{reason="protocol"}'] = 1
        self.expect_tls_counters(c)
        # Plain HTTP.
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertTrue(s.recv(4096).startswith(b"HTTP/1.1 400 "))
        c['tokend_tls_plaintext_refused_total'] = 1
        self.expect_tls_counters(c)
        # A peer gone before its handshake; one that never finishes it
        # (request-timeout 1 s).
        socket.create_connection(("127.0.0.1", self.port), timeout=10).close()
        c['tokend_tls_handshakes_failed_total{reason="closed"}'] = 1
        self.expect_tls_counters(c)
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as silent:
            silent.sendall(b"\x16\x03\x01")  # the start of a record, no more
            c['tokend_tls_handshakes_failed_total{reason="timeout"}'] = 1
            self.expect_tls_counters(c)
        # The held connection ends.
        held.close()
        c['tokend_tls_connections_open'] = 0
        self.expect_tls_counters(c)

    def test_sighup_serves_a_new_certificate_to_new_connections(self):
        self.start()
        held = self.connect()
        self.assertEqual(dict(x[0] for x in held.getpeercert()["subject"])["commonName"], "localhost")
        new_cert, new_key = server_cert(self.ca_dir, "next-" + secrets.token_hex(3), "tokend.example")
        self.cert_file, self.key_file = new_cert, new_key
        self.config()
        self.daemon.proc.send_signal(signal.SIGHUP)
        self.daemon.wait_for_line("TLS certificate and key reloaded")
        with self.connect() as fresh:
            self.assertEqual(dict(x[0] for x in fresh.getpeercert()["subject"])["commonName"], "tokend.example")
        # The connection made before the reload still works.
        held.sendall(b"GET /v1/profiles HTTP/1.1\r\nHost: x\r\nX-Tokend-Act-As: " + ALICE.encode() + b"\r\n\r\n")
        self.assertTrue(held.recv(4096).startswith(b"HTTP/1.1 401 "))
        held.close()
        # A reload that fails keeps the pair in use.
        os.chmod(new_key, 0o644)
        self.daemon.proc.send_signal(signal.SIGHUP)
        self.daemon.wait_for_line("TLS certificate not reloaded")
        with self.connect() as again:
            self.assertEqual(dict(x[0] for x in again.getpeercert()["subject"])["commonName"], "tokend.example")
        os.chmod(new_key, 0o600)

    def test_a_key_file_that_is_not_private_is_refused_at_start(self):
        loose = os.path.join(self.dir, "loose.key")
        with open(self.ca["key_file"]) as src, open(loose, "w") as dst:
            dst.write(src.read())
        os.chmod(loose, 0o644)
        self.key_file = loose
        self.daemon = Daemon(TOKEND, self.xdg.env, ["--server", "--config", self.config()])
        self.assertEqual(self.daemon.wait_exit(), EXIT_REFUSED, self.daemon.output())
        self.assertIn("tls-key-file", self.daemon.output())
        self.assertNotIn("PRIVATE KEY", self.daemon.output())
        wait_for(lambda: not os.path.exists(self.socket), "the socket removed")


if __name__ == "__main__":
    unittest.main()

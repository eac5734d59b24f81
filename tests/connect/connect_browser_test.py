"""The connect page of server mode in a real browser.

    connect_browser_test.py --tokend PATH --tokenctl PATH --work-dir DIR --artifacts DIR

The deployment under test is the documented one: Debian's nginx terminates
TLS (a certificate from a CA made here, tests/fake_upstream/make_ca.py),
authenticates nobody but sets the user header itself (`X-Forwarded-User`,
from a test cookie: alice by default, bob with `tokend_test_user=bob`) and
proxies to tokend's Unix socket under /tokend/. nginx's workers run as
www-data when the test runs as root, and tokend (root) trusts that uid
(trusted-proxy-uid) and nothing else to name users; the socket is handed to
tokend the way systemd's socket activation does, group www-data, mode 0660,
since a socket tokend makes itself sits in a directory only tokend can enter.
tokend runs `--server` on a throwaway PostgreSQL with two provider templates
([provider.jira], [provider.wiki]) pointing at the fake upstream (https, the
same CA), public-url https://localhost:PORT/tokend.

Debian's headless Chromium, driven by playwright-core from npm (pinned by
tests/connect/package-lock.json, installed into the work dir), trusts exactly
the test certificate, by its SPKI hash. browser.mjs walks the page: needs
login, a refused consent shown as an error, Connect through the popup to
connected with an expiry (no reload), Disconnect revoked at the fake, another
user's state at the callback completing nothing. Screenshots land in the
artifacts dir. Here, around it: bob's flow, whose redirect alice's browser
was given, is still pending afterwards, its code unredeemed (bob then
completes it himself), and no secret appears in any log.

Without chromium, nginx, node or npm the test fails saying what to install
(scripts/setup.sh installs them all)."""
import base64
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
sys.path.insert(0, os.path.join(HERE, "..", "fake_upstream"))

from harness import binaries, free_port, install_packages, stop_process, wait_for, work_dir_arg  # noqa: E402

TOKEND, TOKENCTL = binaries()
WORK = work_dir_arg(os.path.join(REPO, "build", "connect"))


def artifacts_arg(default):
    if "--artifacts" in sys.argv:
        i = sys.argv.index("--artifacts")
        path = os.path.abspath(sys.argv[i + 1])
        del sys.argv[i:i + 2]
        return path
    return default


ARTIFACTS = artifacts_arg(os.path.join(REPO, "build", "artifacts", "connect"))

from client import FakeUpstream, redirect_params  # noqa: E402
from server_mode_test import PgCluster, write_private  # noqa: E402

ALICE = "alice@example.com"
BOB = "bob@example.org"
CLIENT_ID = "connect-app"
CLIENT_SECRET = "cs-MARKER-connect-" + secrets.token_hex(8)
WIKI_CLIENT = "connect-wiki"
WIKI_SECRET = "cs-MARKER-wiki-" + secrets.token_hex(8)
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def missing_tools():
    """What is not installed, each with what to install."""
    missing = []
    if not any(os.access(p, os.X_OK) for p in CHROMIUM_CANDIDATES):
        missing.append("chromium (Debian package 'chromium')")
    if not os.access(NGINX, os.X_OK):
        missing.append("nginx (Debian package 'nginx')")
    if not shutil.which("node") or not shutil.which("npm"):
        missing.append("node and npm (Debian packages 'nodejs' and 'npm')")
    return missing


def spki_hash(cert_pem):
    """base64(SHA-256(SubjectPublicKeyInfo)): what --ignore-certificate-errors-spki-list takes."""
    pub = subprocess.run(["openssl", "x509", "-in", cert_pem, "-noout", "-pubkey"], check=True,
                         capture_output=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub, check=True,
                         capture_output=True).stdout
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


NGINX_CONF = """
daemon off;
master_process on;
worker_processes 1;
{user_line}
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 64; }}
http {{
    # $uri, not $request: the callback's query holds an authorization code.
    log_format noquery '$remote_addr [$time_local] "$request_method $uri" $status $body_bytes_sent';
    access_log {dir}/access.log noquery;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    # Stands in for an authenticating proxy (oauth2-proxy, auth_request...):
    # the user it signed in, here from a test cookie.
    map $cookie_tokend_test_user $tokend_user {{
        default "{alice}";
        "bob" "{bob}";
    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location /tokend/ {{
            proxy_pass http://unix:{socket}:/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-User $tokend_user;   # replaces whatever the client sent
            proxy_set_header X-Tokend-Act-As "";
            proxy_set_header Authorization "";
            proxy_buffering off;                              # /v1/events is a stream
            proxy_read_timeout 1h;
        }}
    }}
}}
"""


class ConnectBrowserTest(unittest.TestCase):
    def setUp(self):
        missing = missing_tools()
        if missing:
            self.fail("the connect page's browser test needs " + ", ".join(missing) +
                      ": run scripts/setup.sh (it installs them)")
        why = install_packages(HERE, WORK, ("browser.mjs",))
        self.assertIsNone(why, why)
        shutil.rmtree(ARTIFACTS, ignore_errors=True)
        os.makedirs(ARTIFACTS)
        self.procs = []
        self.dir = tempfile.mkdtemp(prefix="tokend-connect-", dir="/tmp")
        os.chmod(self.dir, 0o755)
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.pg = PgCluster()
        self.addCleanup(self.pg.stop)
        self.up = FakeUpstream(quiet=True)
        self.addCleanup(self.up.stop)
        self.port = free_port()
        self.public = f"https://localhost:{self.port}/tokend"
        redirect = self.public + "/connect/callback"
        self.up.add_client(CLIENT_ID, CLIENT_SECRET, "client_secret_basic", redirect_uris=[redirect])
        self.up.add_client(WIKI_CLIENT, WIKI_SECRET, "client_secret_basic", redirect_uris=[redirect])

        # nginx's workers: www-data when we are root, else ourselves.
        if os.geteuid() == 0:
            pw = pwd.getpwnam("www-data")
            self.proxy_uid, self.proxy_gid, user_line = pw.pw_uid, pw.pw_gid, "user www-data www-data;"
        else:
            self.proxy_uid, self.proxy_gid, user_line = os.getuid(), os.getgid(), ""
        self.start_tokend()
        self.start_nginx(user_line)
        self.ctx = ssl.create_default_context(cafile=self.up.ca_file)

    def tearDown(self):
        for p in reversed(self.procs):
            stop_process(p)
        logs = ""
        for name in ("tokend.log", "error.log", "access.log"):
            path = os.path.join(self.dir, name)
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    logs += f.read()
        secrets_seen = [t["token"] for t in self.up.tokens() if t.get("token")]
        for s in secrets_seen + [CLIENT_SECRET, WIKI_SECRET]:
            self.assertNotIn(s, logs, "a secret appears in tokend's or nginx's log")

    # --- the deployment ---

    def start_tokend(self):
        d = self.dir
        run = os.path.join(d, "run")
        os.mkdir(run)
        os.chown(run, 0 if os.geteuid() == 0 else os.getuid(), self.proxy_gid)
        os.chmod(run, 0o750)
        self.socket = os.path.join(run, "tokend.sock")
        # The socket as systemd's .socket unit would hand it over:
        # SocketGroup=www-data, SocketMode=0660.
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.socket)
        os.chown(self.socket, os.getuid(), self.proxy_gid)
        os.chmod(self.socket, 0o660)
        listener.listen(128)
        kek = write_private(os.path.join(d, "kek"), secrets.token_hex(32))
        db = "tokend_" + secrets.token_hex(6)
        self.assertIsNotNone(self.pg.psql("postgres", f"CREATE DATABASE {db}"))
        url = write_private(os.path.join(d, "database-url"), self.pg.conninfo(db))
        write_private(os.path.join(d, "jira.secret"), CLIENT_SECRET + "\n")
        write_private(os.path.join(d, "wiki.secret"), WIKI_SECRET + "\n")
        up = self.up
        self.conf = conf = write_private(os.path.join(d, "server.conf"), f"""
database-url-file = {url}
kek-file = {kek}
socket = {self.socket}
trusted-proxy-uid = {self.proxy_uid}
ca-bundle = {up.ca_file}
public-url = {self.public}/
log-level = debug

[provider.jira]
display-name = Jira (fake Atlassian)
description = Issues and boards
provider = generic
client-id = {CLIENT_ID}
client-secret-file = {d}/jira.secret
scopes = openid offline_access
authorize-url = {up.authorize_endpoint}
token-url = {up.token_url}
revocation-url = {up.revocation_url}

[provider.wiki]
display-name = Confluence (fake)
provider = generic
client-id = {WIKI_CLIENT}
client-secret-file = {d}/wiki.secret
scopes = openid offline_access
authorize-url = {up.authorize_endpoint}
token-url = {up.token_url}
""")
        self.log = open(os.path.join(d, "tokend.log"), "ab")
        self.addCleanup(self.log.close)
        fd = listener.fileno()
        # sd_listen_fds: fd 3, LISTEN_FDS=1, LISTEN_PID=the process's own.
        script = f'exec 3<&{fd} {fd}<&-; LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"'
        proc = subprocess.Popen(["/bin/sh", "-c", script, TOKEND, "--server", "--config", conf],
                                stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                pass_fds=(fd,), env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        listener.close()
        self.procs.append(proc)
        self.tokend = proc
        wait_for(lambda: b"ready in server mode" in self.read_log() or proc.poll() is not None,
                 "tokend --server to be ready")
        self.assertIsNone(proc.poll(), self.read_log().decode(errors="replace"))

    def read_log(self):
        with open(os.path.join(self.dir, "tokend.log"), "rb") as f:
            return f.read()

    def start_nginx(self, user_line):
        d = self.dir
        tmp = os.path.join(d, "nginx-tmp")
        os.mkdir(tmp)
        os.chown(tmp, self.proxy_uid, self.proxy_gid)
        ca = os.path.dirname(self.up.ca_file)
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(user_line=user_line, dir=d, tmp=tmp, alice=ALICE, bob=BOB,
                                      port=self.port, cert=os.path.join(ca, "server.pem"),
                                      key=os.path.join(ca, "server.key"), socket=self.socket))
        with open(os.path.join(d, "nginx.stderr"), "ab") as err:
            proc = subprocess.Popen([NGINX, "-c", conf, "-p", d, "-e", os.path.join(d, "error.log")],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        self.procs.append(proc)

        def up():
            if proc.poll() is not None:
                raise AssertionError("nginx exited: " + open(os.path.join(d, "error.log")).read())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False
        wait_for(up, "nginx to listen")

    # --- bob, through nginx as his own browser would ---

    def as_bob(self, method, path, body=None, headers=()):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.public + path, data=data, method=method,
                                     headers={"Cookie": "tokend_test_user=bob",
                                              "Content-Type": "application/json",
                                              # sent by a browser too; nginx replaces it
                                              "X-Forwarded-User": ALICE, **dict(headers)})
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def test_connect_page(self):
        # The user header straight from tokend's own uid (not the proxy's)
        # is refused: only nginx's workers may name users.
        raw = subprocess.run(["curl", "-s", "--unix-socket", self.socket, "-H", f"X-Forwarded-User: {ALICE}",
                              "http://tokend/connect/providers"], capture_output=True, text=True)
        if os.geteuid() == 0:
            self.assertIn("untrusted_user_header", raw.stdout)

        # A change asked from another site's page (cross-site request
        # forgery through the sign-in cookie) is refused on every route.
        for extra in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
            status, text = self.as_bob("POST", "/connect/providers/jira", headers=extra)
            self.assertEqual((status, json.loads(text)["error"]["code"]), (403, "cross_origin"), text)
            status, text = self.as_bob("POST", "/v1/profiles/jira/logout", {}, headers=extra)
            self.assertEqual((status, json.loads(text)["error"]["code"]), (403, "cross_origin"), text)
        status, text = self.as_bob("POST", "/connect/providers/nosuch",
                                   headers={"Origin": f"https://localhost:{self.port}"})
        self.assertEqual(status, 404, text)

        # Bob starts a Connect of his own; the provider's redirect for it
        # (a real code and his state) is what alice's browser will be sent to.
        status, text = self.as_bob("POST", "/connect/providers/jira")
        self.assertEqual(status, 201, text)
        status, text = self.as_bob("POST", "/v1/profiles/jira/login", {"listen": False})
        self.assertEqual(status, 200, text)
        flow = json.loads(text)
        self.assertEqual(flow["redirect_uri"], self.public + "/connect/callback")
        split = urllib.parse.urlsplit(flow["authorize_url"])
        consent = self.up.request("GET", split.path + "?" + split.query)
        self.assertEqual(consent.status, 302)
        bob_redirect = consent.headers["location"]
        self.assertTrue(bob_redirect.startswith(self.public + "/connect/callback?"), bob_redirect)
        exchanges = self.up.stats()["code_exchanges"]

        chromium = next(p for p in CHROMIUM_CANDIDATES if os.access(p, os.X_OK))
        cfg = os.path.join(self.dir, "browser.json")
        with open(cfg, "w") as f:
            json.dump({"chromium": chromium, "spki": spki_hash(os.path.join(os.path.dirname(self.up.ca_file),
                                                                            "server.pem")),
                       "page": self.public + "/connect", "fake": self.up.base_url, "user": ALICE,
                       "foreign_callback": bob_redirect, "artifacts": ARTIFACTS}, f)
        env = dict(os.environ, NODE_EXTRA_CA_CERTS=self.up.ca_file)
        started = time.monotonic()
        r = subprocess.run(["node", os.path.join(WORK, "browser.mjs"), cfg], cwd=WORK, env=env,
                           capture_output=True, text=True, timeout=120)
        print(r.stdout, file=sys.stderr)
        self.assertEqual(r.returncode, 0, f"the browser run failed:\n{r.stdout}\n{r.stderr}\n"
                                          f"tokend's log:\n{self.read_log().decode(errors='replace')[-4000:]}")
        print(f"browser run: {time.monotonic() - started:.1f} s", file=sys.stderr)
        result = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("result: "))[8:])
        self.assertEqual(len(result["screenshots"]), 7)
        for path in result["screenshots"]:
            with open(path, "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n", path)

        # Alice's visit completed nothing of bob's: his flow still waits, his
        # code was not redeemed (codes are single-use: it still works for him).
        status, text = self.as_bob("GET", "/v1/profiles/jira/login")
        self.assertEqual(json.loads(text)["state"], "pending", text)
        # One code was exchanged meanwhile: alice's own Connect.
        self.assertEqual(self.up.stats()["code_exchanges"], exchanges + 1)
        status, text = self.as_bob("GET", "/connect/callback?" + urllib.parse.urlsplit(bob_redirect).query)
        self.assertEqual(status, 200, text)
        self.assertIn('data-ok="true"', text)
        status, text = self.as_bob("GET", "/v1/profiles")
        bob_profiles = {p["name"]: p for p in json.loads(text)["profiles"]}
        self.assertEqual(bob_profiles["jira"]["state"], "valid")
        self.assertTrue(bob_profiles["jira"]["has_token"])

        # SIGHUP: a bad template keeps the running configuration (and says
        # why); a good one is offered at once.
        with open(self.conf) as f:
            good = f.read()
        offered = lambda: [p["name"] for p in json.loads(self.as_bob("GET", "/connect/providers")[1])["providers"]]
        self.assertEqual(offered(), ["jira", "wiki"])
        write_private(self.conf, good + "[provider.drive]\nprovider = generic\nclient-id = x\n"
                                        f"authorize-url = {self.up.authorize_endpoint}\n"
                                        "redirect-uri = https://elsewhere.example/cb\n")
        self.tokend.send_signal(signal.SIGHUP)
        wait_for(lambda: b"SIGHUP: configuration not reloaded" in self.read_log(), "the SIGHUP refusal")
        self.assertIn(b"[provider.drive] sets redirect-uri", self.read_log())
        self.assertEqual(offered(), ["jira", "wiki"])
        write_private(self.conf, good + "[provider.drive]\ndisplay-name = Drive\nprovider = generic\n"
                                        f"client-id = x\nauthorize-url = {self.up.authorize_endpoint}\n"
                                        f"token-url = {self.up.token_url}\n")
        self.tokend.send_signal(signal.SIGHUP)
        wait_for(lambda: b"3 provider(s)" in self.read_log(), "the SIGHUP reload")
        self.assertEqual(offered(), ["drive", "jira", "wiki"])


class TemplateRefusedTest(unittest.TestCase):
    """A bad [provider.NAME] stops the start with exit 2, naming it."""

    def test_bad_template_is_exit_2(self):
        d = tempfile.mkdtemp(prefix="tokend-connect-conf-", dir="/tmp")
        self.addCleanup(shutil.rmtree, d, True)
        url = write_private(os.path.join(d, "database-url"), "host=/nonexistent dbname=x")
        cases = [
            ("public-url = https://t.example\n[provider.jira]\nprovider = generic\nclient-id = a\n"
             "client-secret = s3cret-MARKER\n", "[provider.jira] sets 'client-secret'"),
            ("[provider.jira]\nprovider = generic\nclient-id = a\n", "[provider.jira] needs public-url"),
            ("public-url = http://t.example\n", "is not https"),
        ]
        for text, expected in cases:
            conf = write_private(os.path.join(d, "server.conf"),
                                 f"database-url-file = {url}\ntrusted-proxy-uid = 0\n" + text)
            r = subprocess.run([TOKEND, "--server", "--config", conf], capture_output=True, text=True,
                               timeout=20, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(expected, r.stderr)
            self.assertNotIn("s3cret-MARKER", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)

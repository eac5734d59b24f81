"""tokend + tokenctl end to end: every credential kind, every token format,
status, monitor, exit codes, socket rules, other users, SIGHUP, SIGTERM."""
import json
import os
import shutil
import pwd
import signal
import stat
import subprocess
import threading
import unittest

from harness import EXIT_REFUSED, Daemon, XdgTree, assert_refused, binaries, secret_file, run_ctl, wait_for, http_over_unix

TOKEND, TOKENCTL = binaries()

API_TOKEN = "ATATT3x-api-token-MARKER-0001"
PAT = "pat-MARKER-0002-data-center"
ACCESS = "eyJ.access-MARKER-0003.sig"
REFRESH = "refresh-MARKER-0004"
SECRETS = (API_TOKEN, PAT, ACCESS, REFRESH)


def as_nobody(code, *args):
    """Runs python code as the user nobody. The checkout may sit in root's private home
    directory (0700), so nothing of it is used: the system python, from /."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    return subprocess.run(["runuser", "-u", "nobody", "--", python, "-c", code, *args],
                          capture_output=True, text=True, timeout=20, cwd="/")


class TokenctlTest(unittest.TestCase):
    def setUp(self):
        self.xdg = XdgTree()
        self.env = self.xdg.env
        self.daemon = Daemon(TOKEND, self.env, ["--log-level", "debug"])
        self.daemon.wait_ready(self.xdg.socket)

    def tearDown(self):
        if self.daemon.proc.poll() is None:
            self.daemon.stop()
        self.xdg.close()

    def ctl(self, *args, input=None, expect=0):
        r = run_ctl(TOKENCTL, self.env, *args, input=input)
        self.assertEqual(r.returncode, expect, f"tokenctl {' '.join(args)}\nstdout: {r.stdout}\nstderr: {r.stderr}")
        return r

    def secret_file(self, name, content):
        return secret_file(self.xdg.root, name, content)

    def add_all_kinds(self):
        self.ctl("add", "cloud", "--kind", "api-token", "--site", "https://example.atlassian.net",
                 "--email", "me@example.com", "--token-file", self.secret_file("api", API_TOKEN))
        self.ctl("add", "dc", "--kind", "pat", "--site", "https://jira.corp.example",
                 "--token-file", "-", input=PAT + "\n")
        self.ctl("add", "oauth", "--kind", "oauth2", "--provider", "generic",
                 "--token-url", "https://auth.example/token", "--client-id", "cid",
                 "--token-file", self.secret_file("access", ACCESS),
                 "--refresh-token-file", self.secret_file("refresh", REFRESH), "--expires-in", "3600")

    def test_every_kind_in_every_format(self):
        self.add_all_kinds()
        import base64
        basic = "Basic " + base64.b64encode(f"me@example.com:{API_TOKEN}".encode()).decode()
        cases = {
            "cloud": (API_TOKEN, basic, "Basic"),
            "dc": (PAT, "Bearer " + PAT, "Bearer"),
            "oauth": (ACCESS, "Bearer " + ACCESS, "Bearer"),
        }
        for name, (token, authorization, token_type) in cases.items():
            with self.subTest(profile=name):
                self.assertEqual(self.ctl("token", name).stdout, token + "\n")
                self.assertEqual(self.ctl("token", name, "--format", "raw").stdout, token + "\n")
                self.assertEqual(self.ctl("token", name, "--format", "header").stdout,
                                 f"Authorization: {authorization}\n")
                j = json.loads(self.ctl("token", name, "--format", "json").stdout)
                self.assertEqual(j["token"], token)
                self.assertEqual(j["authorization"], authorization)
                self.assertEqual(j["token_type"], token_type)
                env_out = self.ctl("token", name, "--format", "env").stdout
                parsed = subprocess.run(["sh", "-c", env_out + 'printf %s "$TOKEND_AUTHORIZATION"'],
                                        capture_output=True, text=True).stdout
                self.assertEqual(parsed, authorization)
                ec = json.loads(self.ctl("token", name, "--format", "exec-credential").stdout)
                self.assertEqual(ec["kind"], "ExecCredential")
                self.assertEqual(ec["apiVersion"], "client.authentication.k8s.io/v1")
                self.assertEqual(ec["status"]["token"], token)
                headers = json.loads(self.ctl("headers", name).stdout)
                self.assertEqual(headers, {"Authorization": authorization})
        j = json.loads(self.ctl("token", "oauth", "--format", "json").stdout)
        self.assertTrue(3500 <= j["expires_in"] <= 3600)
        ec = json.loads(self.ctl("token", "oauth", "--format", "exec-credential").stdout)
        self.assertRegex(ec["status"]["expirationTimestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

    def test_status_table_and_json_show_no_secrets(self):
        self.add_all_kinds()
        table = self.ctl("status").stdout
        for name in ("cloud", "dc", "oauth"):
            self.assertIn(name, table)
        self.assertIn("PROFILE", table)
        self.assertIn("does not expire", table)
        self.assertNotIn("\x1b[", table, "no colour when stdout is not a terminal")
        profiles = json.loads(self.ctl("status", "--json").stdout)
        self.assertEqual(sorted(p["name"] for p in profiles), ["cloud", "dc", "oauth"])
        oauth = next(p for p in profiles if p["name"] == "oauth")
        self.assertEqual(oauth["state"], "valid")
        self.assertTrue(oauth["has_refresh_token"])
        self.assertEqual(oauth["config"]["client_id"], "cid")
        detail = self.ctl("status", "oauth").stdout
        self.assertIn("refresh token  yes", detail)
        listing = self.ctl("list").stdout + self.ctl("list", "--json").stdout + detail + table
        listing += json.dumps(profiles)
        for secret in SECRETS:
            self.assertNotIn(secret, listing)
        self.assertEqual(self.ctl("list", "-q").stdout.split(), ["cloud", "dc", "oauth"])

    def test_monitor_sees_profile_events(self):
        mon = subprocess.Popen([TOKENCTL, "monitor", "--json"], env=self.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        lines = []
        reader = threading.Thread(target=lambda: [lines.append(l) for l in mon.stdout], daemon=True)
        reader.start()
        try:
            # The subscription exists once the metrics count the stream.
            wait_for(lambda: "tokend_event_streams 1" in http_over_unix(
                self.xdg.socket, b"GET /v1/metrics HTTP/1.1\r\nConnection: close\r\n\r\n").decode(),
                "monitor subscribed")
            self.add_all_kinds()
            self.ctl("add", "dc", "--kind", "pat", "--site", "https://jira2.corp.example", "--token-file", "-",
                     input=PAT + "\n")
            self.ctl("remove", "cloud")
            want = [("profile_added", "cloud"), ("profile_added", "dc"), ("profile_added", "oauth"),
                    ("profile_updated", "dc"), ("profile_removed", "cloud")]
            wait_for(lambda: len(lines) >= len(want), f"{len(want)} events (have {lines})")
            got = [(json.loads(l)["type"], json.loads(l)["profile"]) for l in lines[:len(want)]]
            self.assertEqual(got, want)
            for l in lines:
                for secret in SECRETS:
                    self.assertNotIn(secret, l)
        finally:
            mon.send_signal(signal.SIGINT)
            mon.wait(timeout=10)

    def test_monitor_ends_with_exit_3_when_tokend_stops(self):
        mon = subprocess.Popen([TOKENCTL, "monitor"], env=self.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        wait_for(lambda: "tokend_event_streams 1" in http_over_unix(
            self.xdg.socket, b"GET /v1/metrics HTTP/1.1\r\nConnection: close\r\n\r\n").decode(),
            "monitor subscribed")
        self.assertEqual(self.daemon.stop(), 0, self.daemon.output())
        self.assertEqual(mon.wait(timeout=20), 3)
        self.assertIn("closed the event stream", mon.stderr.read())

    def test_errors_and_exit_codes(self):
        r = self.ctl("token", "missing", expect=1)
        self.assertIn("no profile named 'missing'", r.stderr)
        self.assertEqual(r.stdout, "")
        self.ctl("token", "missing2", expect=1)
        metrics = http_over_unix(self.xdg.socket, b"GET /v1/metrics HTTP/1.1\r\nConnection: close\r\n\r\n").decode()
        self.assertIn('tokend_token_requests_total{profile="(unknown)",result="not_found"} 2', metrics)
        self.assertNotIn('profile="missing"', metrics)
        self.ctl("add", "empty", "--kind", "oauth2", "--token-url", "https://auth.example/token")
        r = self.ctl("token", "empty", expect=4)
        self.assertIn("tokenctl login empty", r.stderr)
        r = self.ctl("token", expect=2)
        self.assertIn("Usage: tokenctl token", r.stderr)
        self.ctl("frobnicate", expect=2)
        r = self.ctl("token", "empty", "--format", "yaml", expect=2)
        self.assertIn("unknown format 'yaml'", r.stderr)
        r = self.ctl("add", "x", "--kind", "pat", "--site", "https://a.example", "--token-file", "-", input="", expect=2)
        self.assertIn("empty", r.stderr)
        r = self.ctl("add", "x", "--kind", "pat", "--site", "http://plain.example", "--token-file", "-",
                     input="secret-never-echoed\n", expect=1)
        self.assertIn("https", r.stderr)
        self.assertNotIn("secret-never-echoed", r.stderr)
        r = self.ctl("add", "bad/name", "--kind", "pat", "--site", "https://a.example", "--token-file", "-",
                     input="t\n", expect=2)
        self.assertIn("not allowed", r.stderr)
        r = self.ctl("add", "x", "--kind", "pat", "--site", "https://a.example", "--token-file", "-",
                     "--refresh-token-file", "-", input="t\n", expect=2)
        self.assertIn("only one secret", r.stderr)
        # Nothing was stored by the failed adds.
        self.assertEqual(self.ctl("list", "-q").stdout.split(), ["empty"])
        r = self.ctl("token", "empty", "--min-valid", "-5", expect=2)

    def test_daemon_not_reachable_is_exit_3_naming_socket_and_start_command(self):
        env = dict(self.env, TOKEND_SOCKET=os.path.join(self.xdg.root, "nothing.sock"))
        r = run_ctl(TOKENCTL, env, "token", "x")
        self.assertEqual(r.returncode, 3)
        self.assertIn("nothing.sock", r.stderr)
        self.assertIn("systemctl --user start tokend", r.stderr)
        r = run_ctl(TOKENCTL, env, "ping")
        self.assertEqual(r.returncode, 3)

    def test_command_help_lists_its_options(self):
        out = self.ctl("add", "--help").stdout
        for flag in ("--kind", "--token-file", "--client-secret-file", "--sink-dotenv", "--reuse-window"):
            self.assertIn(flag, out)
        self.assertIn("--format", self.ctl("token", "--help").stdout)
        self.assertIn("Usage: tokenctl ping", self.ctl("ping", "--help").stdout)

    def test_ping_version_completion(self):
        self.assertIn("is running on " + self.xdg.socket, self.ctl("ping").stdout)
        self.assertRegex(self.ctl("version").stdout, r"^tokenctl \d+\.\d+\.\d+\n$")
        bash = self.ctl("completion", "bash").stdout
        self.assertIn("complete -F _tokenctl tokenctl", bash)
        r = subprocess.run(["bash", "-n"], input=bash, text=True, capture_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("#compdef tokenctl", self.ctl("completion", "zsh").stdout)
        self.ctl("completion", "fish", expect=2)

    def test_socket_and_directory_permissions(self):
        st = os.stat(self.xdg.socket)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.xdg.socket)).st_mode), 0o700)

    def test_second_daemon_refused_and_stale_socket_replaced(self):
        second = Daemon(TOKEND, self.env)
        assert_refused(self, second, EXIT_REFUSED, "already running", self.xdg.socket)
        self.assertEqual(self.ctl("ping").returncode, 0, "the first daemon keeps serving")
        # kill -9 leaves the socket file behind; the next start replaces it.
        self.daemon.stop(signal.SIGKILL)
        self.assertTrue(os.path.exists(self.xdg.socket))
        self.daemon = Daemon(TOKEND, self.env)
        self.daemon.wait_ready(self.xdg.socket)
        self.assertIn("replaced stale socket", self.daemon.output())
        self.ctl("ping")

    def test_loose_socket_directory_is_refused(self):
        self.assertEqual(self.daemon.stop(), 0)
        os.chmod(os.path.dirname(self.xdg.socket), 0o755)
        d = Daemon(TOKEND, self.env)
        assert_refused(self, d, EXIT_REFUSED, "chmod 700 " + os.path.dirname(self.xdg.socket))

    @unittest.skipUnless(os.geteuid() == 0, "needs root to give the socket directory to another user")
    def test_socket_directory_owned_by_another_user_is_refused(self):
        self.assertEqual(self.daemon.stop(), 0)
        sock_dir = os.path.dirname(self.xdg.socket)
        os.chown(sock_dir, pwd.getpwnam("nobody").pw_uid, -1)
        d = Daemon(TOKEND, self.env)
        out = assert_refused(self, d, EXIT_REFUSED, sock_dir)
        self.assertIn("owned by", out)

    @unittest.skipUnless(os.geteuid() == 0, "needs root to run a client as another user (runuser -u nobody)")
    def test_other_user_gets_403_and_an_audit_event(self):
        # Open the path up on purpose: the peer-credential check must still refuse.
        os.chmod(self.xdg.root, 0o711)
        os.chmod(self.xdg.runtime, 0o711)
        os.chmod(os.path.dirname(self.xdg.socket), 0o711)
        os.chmod(self.xdg.socket, 0o666)
        nobody = pwd.getpwnam("nobody").pw_uid
        code = ("import socket,sys;s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1]);"
                "s.sendall(b'GET /v1/profiles HTTP/1.1\\r\\nConnection: close\\r\\n\\r\\n');"
                "d=b''\nwhile True:\n b=s.recv(4096)\n if not b: break\n d+=b\nprint(d.decode())")
        r = as_nobody(code, self.xdg.socket)
        self.assertIn("HTTP/1.1 403", r.stdout, r.stderr)
        self.assertIn('"forbidden"', r.stdout)
        audit = json.loads(http_over_unix(self.xdg.socket,
                                          b"GET /v1/audit?limit=10 HTTP/1.1\r\nConnection: close\r\n\r\n"
                                          ).decode().split("\r\n\r\n", 1)[1])
        denied = [e for e in audit["events"] if e["kind"] == "peer_denied"]
        self.assertEqual(len(denied), 1, audit)
        self.assertEqual(denied[0]["peer_uid"], nobody)
        self.assertGreater(denied[0]["peer_pid"], 0)
        # allow-uid lets that user in after a SIGHUP reload.
        conf = os.path.join(self.env["XDG_CONFIG_HOME"], "tokend", "tokend.conf")
        with open(conf, "w") as f:
            f.write("allow-uid = nobody\n")
        self.daemon.proc.send_signal(signal.SIGHUP)
        self.daemon.wait_for_line("configuration reloaded")
        r = as_nobody(code, self.xdg.socket)
        self.assertIn("HTTP/1.1 200", r.stdout, r.stderr)

    # -- tokenctl trusts only a private directory and a daemon of its own uid --

    def fake_listener(self, path):
        """A Unix listener at `path` that records every byte it receives."""
        import socket as socketlib
        srv = socketlib.socket(socketlib.AF_UNIX)
        srv.bind(path)
        srv.listen(8)
        srv.settimeout(0.2)
        got = {"connections": 0, "bytes": b""}
        stop = threading.Event()

        def serve():
            while not stop.is_set():
                try:
                    conn, _ = srv.accept()
                except OSError:
                    continue
                got["connections"] += 1
                conn.settimeout(2)
                try:
                    got["bytes"] += conn.recv(65536)
                except OSError:
                    pass
                conn.close()

        t = threading.Thread(target=serve, daemon=True)
        t.start()

        def close():
            stop.set()
            t.join(5)
            srv.close()
        self.addCleanup(close)
        return got

    def test_tokenctl_refuses_a_socket_directory_that_is_not_private(self):
        rogue = os.path.join(self.xdg.root, "rogue")
        os.makedirs(rogue, mode=0o700)
        os.chmod(rogue, 0o755)
        sock = os.path.join(rogue, "tokend.sock")
        got = self.fake_listener(sock)
        env = dict(self.env, TOKEND_SOCKET=sock)
        pat = self.secret_file("rogue-pat", "pat-MARKER-rogue")
        r = run_ctl(TOKENCTL, env, "add", "x", "--kind", "pat", "--site", "https://a.example", "--token-file", pat)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(f"refusing to talk to the socket {sock}", r.stderr)
        self.assertIn("accessible by group or others", r.stderr)
        self.assertIn("chmod 700 " + rogue, r.stderr)
        self.assertNotIn("systemctl", r.stderr)  # starting tokend would not fix this
        # A symlinked directory is refused too, even when it points at a private one.
        os.chmod(rogue, 0o700)
        link = os.path.join(self.xdg.root, "link")
        os.symlink(rogue, link)
        r = run_ctl(TOKENCTL, dict(self.env, TOKEND_SOCKET=os.path.join(link, "tokend.sock")), "token", "x")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("symbolic link", r.stderr)
        self.assertEqual(got["connections"], 0)
        self.assertEqual(got["bytes"], b"")
        # The private directory itself, with a listener of our own uid, is used.
        r = run_ctl(TOKENCTL, env, "token", "x")
        self.assertEqual(got["connections"], 1, r.stderr)

    @unittest.skipUnless(os.geteuid() == 0, "needs root to make another user's directory and daemon")
    def test_tokenctl_refuses_a_directory_or_daemon_of_another_user(self):
        nobody = pwd.getpwnam("nobody")
        # The /tmp fallback's attack: another user made the directory first.
        theirs = os.path.join(self.xdg.root, "theirs")
        os.makedirs(theirs, mode=0o700)
        os.chown(theirs, nobody.pw_uid, nobody.pw_gid)
        r = run_ctl(TOKENCTL, dict(self.env, TOKEND_SOCKET=os.path.join(theirs, "tokend.sock")), "ping")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(f"owned by uid {nobody.pw_uid}", r.stderr)
        # A private directory of ours, but the listener runs as another user
        # (it bound the socket as root, then dropped to nobody before listen()).
        mine = os.path.join(self.xdg.root, "mine")
        os.makedirs(mine, mode=0o700)
        sock = os.path.join(mine, "tokend.sock")
        code = ("import os,socket,sys\n"
                "s=socket.socket(socket.AF_UNIX);s.bind(sys.argv[1]);os.setgid(int(sys.argv[3]));"
                "os.setuid(int(sys.argv[2]));s.listen(4);print('ready',flush=True)\n"
                "c,_=s.accept();c.settimeout(3)\n"
                "try:\n d=c.recv(65536)\nexcept OSError:\n d=b''\n"
                "print('received',len(d),flush=True)\n")
        fake = subprocess.Popen(["/usr/bin/python3", "-c", code, sock, str(nobody.pw_uid), str(nobody.pw_gid)],
                                cwd="/", stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(fake.stdout.readline().strip(), "ready")
            pat = self.secret_file("rogue-pat", "pat-MARKER-rogue")
            r = run_ctl(TOKENCTL, dict(self.env, TOKEND_SOCKET=sock), "add", "x", "--kind", "pat",
                        "--site", "https://a.example", "--token-file", pat)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn(f"runs as uid {nobody.pw_uid}, not as you (uid 0)", r.stderr)
            out, _ = fake.communicate(timeout=20)
            self.assertEqual(out.strip(), "received 0")
        finally:
            if fake.poll() is None:
                fake.kill()
                fake.wait()

    def metric(self, name):
        raw = http_over_unix(self.xdg.socket, b"GET /v1/metrics HTTP/1.1\r\nConnection: close\r\n\r\n").decode()
        for line in raw.split("\r\n\r\n", 1)[1].splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def test_waiting_requests_end_when_their_callers_go(self):
        # Issue 13 finding 9: token?wait=3600 from callers that closed the socket and exited.
        import socket as socketlib
        self.assertEqual(self.daemon.stop(), 0)
        self.daemon = Daemon(TOKEND, self.env, ["--max-connections", "40"])
        self.daemon.wait_ready(self.xdg.socket)
        self.ctl("add", "w", "--kind", "oauth2", "--provider", "generic", "--token-url", "https://auth.example/token",
                 "--client-id", "cid")
        request = b"GET /v1/profiles/w/token?wait=3600 HTTP/1.1\r\nHost: tokend\r\n\r\n"
        callers = []
        for _ in range(30):
            s = socketlib.socket(socketlib.AF_UNIX)
            s.connect(self.xdg.socket)
            s.sendall(request)
            callers.append(s)
        wait_for(lambda: self.metric("tokend_waiting_requests") == 30, "30 waiting requests")
        # One caller half-closes: it still wants its answer and keeps waiting.
        callers[0].shutdown(socketlib.SHUT_WR)
        for s in callers[1:]:
            s.close()
        wait_for(lambda: self.metric("tokend_waiting_requests") == 1, "the gone callers' waits to end")
        wait_for(lambda: self.metric("tokend_http_connections_open") == 2, "their connections to close")
        # Their slots are free again: 30 more callers are not refused with 503.
        more = []
        for _ in range(30):
            s = socketlib.socket(socketlib.AF_UNIX)
            s.connect(self.xdg.socket)
            s.sendall(request)
            more.append(s)
        wait_for(lambda: self.metric("tokend_waiting_requests") == 31, "31 waiting requests")
        for s in more:
            s.close()
        # The half-closed caller gets its answer when the wait ends (a PUT with a token).
        pat = self.secret_file("w-token", "w-access-MARKER")
        self.ctl("add", "w", "--kind", "oauth2", "--provider", "generic", "--token-url", "https://auth.example/token",
                 "--client-id", "cid", "--token-file", pat, "--expires-in", "3600")
        callers[0].settimeout(20)
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = callers[0].recv(65536)
            if not chunk:
                break
            got += chunk
        callers[0].close()
        self.assertTrue(got.startswith(b"HTTP/1.1 200"), got[:200])

    def test_sighup_reloads_and_a_bad_config_keeps_the_old_one(self):
        conf = os.path.join(self.env["XDG_CONFIG_HOME"], "tokend", "tokend.conf")
        with open(conf, "w") as f:
            f.write("max-header-bytes = nonsense\n")
        self.daemon.proc.send_signal(signal.SIGHUP)
        self.daemon.wait_for_line("configuration not reloaded")
        self.assertIn("max-header-bytes", self.daemon.output())
        self.ctl("ping")
        with open(conf, "w") as f:
            f.write("max-header-bytes = 2048\n")
        self.daemon.proc.send_signal(signal.SIGHUP)
        self.daemon.wait_for_line("configuration reloaded")
        raw = http_over_unix(self.xdg.socket, b"GET /v1/health HTTP/1.1\r\nX-Pad: " + b"a" * 4000 + b"\r\n\r\n")
        self.assertTrue(raw.startswith(b"HTTP/1.1 431"), raw[:60])

    def test_sigterm_exits_0_and_no_secret_reaches_logs_or_disk(self):
        self.add_all_kinds()
        for name in ("cloud", "dc", "oauth"):
            self.ctl("token", name)
        self.assertEqual(self.daemon.stop(), 0)
        self.assertFalse(os.path.exists(self.xdg.socket), "socket removed on clean exit")
        out = self.daemon.output()
        data_dir = os.path.dirname(self.xdg.db)
        blobs = [out.encode()]
        for f in os.listdir(data_dir):
            with open(os.path.join(data_dir, f), "rb") as fh:
                blobs.append(fh.read())
        for secret in SECRETS:
            for blob in blobs:
                self.assertNotIn(secret.encode(), blob)


if __name__ == "__main__":
    unittest.main(verbosity=2)

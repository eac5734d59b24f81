"""tokenctl api, exec and headers end to end, with the real tokenctl binary.

`api` runs against a scripted stand-in for tokend on a Unix socket that
speaks the proxy's contract (docs/API.md, ANY /v1/proxy/{name}/{rest}): it
echoes what arrived, streams big answers, answers early, and produces both
tokend-style and upstream-style errors. That tests tokenctl's side (streamed
50 MB bodies both ways in bounded memory, exit codes, messages) without the
daemon's proxy; tests/docs/docs_examples_test.py goes through the real one.

RealProxyTest sends `tokenctl api` through the real tokend's proxy to the
fake Atlassian API (tests/fake_upstream), 50 MB each way included.

`exec` and `headers` run against the real tokend."""
import hashlib
import json
import os
import pty
import select
import signal
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
sys.path.insert(0, os.path.join(HERE, "..", "fake_upstream"))

from client import FakeUpstream, download_sha256  # noqa: E402
from harness import Daemon, XdgTree, binaries, secret_file, run_ctl, wait_for  # noqa: E402

TOKEND, TOKENCTL = binaries()
PAT = "pat-MARKER-exec-0001"
ACCESS = "eyJ.access-MARKER-exec-0002.sig"
BIG = 50 * 1024 * 1024
RSS_LIMIT_KB = 40 * 1024  # tokenctl's peak RSS while moving 50 MB: far below the body size


def pattern(n, seed=0):
    """n deterministic bytes, produced in pieces (never all in memory here either)."""
    block = hashlib.sha256(f"block-{seed}".encode()).digest() * 2048  # 64 KiB
    left = n
    while left > 0:
        piece = block[:min(left, len(block))]
        yield piece
        left -= len(piece)


def pattern_sha256(n, seed=0):
    h = hashlib.sha256()
    for piece in pattern(n, seed):
        h.update(piece)
    return h.hexdigest()


# -- a scripted stand-in for tokend's proxy ---------------------------------------------

class ProxyHandler(socketserver.StreamRequestHandler):
    """One HTTP/1.1 request per connection (tokenctl api sends one)."""

    def handle(self):
        line = self.rfile.readline(65537).decode("latin-1").rstrip("\r\n")
        if not line:
            return
        method, target, _ = line.split(" ", 2)
        headers = []
        while True:
            h = self.rfile.readline(65537).decode("latin-1").rstrip("\r\n")
            if not h:
                break
            name, _, value = h.partition(":")
            headers.append((name, value.strip()))
        hmap = {k.lower(): v for k, v in headers}
        path = target.split("?", 1)[0]
        parts = path.split("/")  # ['', 'v1', 'proxy', PROFILE, ...]
        self.server.seen.append({"method": method, "target": target, "headers": headers})
        if parts[:3] != ["", "v1", "proxy"]:
            return self.send(404, json.dumps({"error": {"code": "not_found", "message": "no such endpoint"}}))
        profile, rest = parts[3], "/".join(parts[4:])
        if profile == "needs-login":
            return self.send(401, json.dumps({"error": {
                "code": "reauth_required", "message": "needs-login needs a new login",
                "command": "tokenctl login needs-login"}}))
        if rest.startswith("early413"):
            # Answer before reading the body, then stop reading: as tokend does
            # for a body over its limit.
            return self.send(413, json.dumps({"error": {"code": "body_too_large",
                                                        "message": "request body is larger than the limit"}}),
                             extra=[("Connection", "close")])
        size, sha, chunked = self.read_body(hmap)
        if rest.startswith("echo"):
            return self.send(200, json.dumps({"method": method, "target": target, "headers": headers,
                                              "body_size": size, "body_sha256": sha, "chunked": chunked}),
                             extra=[("X-Echo", "1")])
        if rest.startswith("download"):
            n = int(target.split("size=", 1)[1].split("&")[0])
            use_chunked = "chunked=1" in target
            self.wfile.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n".encode())
            if use_chunked:
                self.wfile.write(b"Transfer-Encoding: chunked\r\n\r\n")
            else:
                self.wfile.write(f"Content-Length: {n}\r\n\r\n".encode())
            if method == "HEAD":
                return
            for piece in pattern(n, seed=7):
                if use_chunked:
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                else:
                    self.wfile.write(piece)
            if use_chunked:
                self.wfile.write(b"0\r\n\r\n")
            return
        if rest.startswith("upstream404"):
            return self.send(404, json.dumps({"errorMessages": ["Issue does not exist"], "errors": {}}))
        if rest.startswith("policy"):
            return self.send(403, json.dumps({"error": {"code": "policy_denied",
                                                        "message": "profile p is read-only (policy read_only)"}}))
        if rest.startswith("cutoff"):
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly part")
            return
        return self.send(500, "unexpected test path " + rest)

    def read_body(self, hmap):
        h = hashlib.sha256()
        size = 0
        chunked = hmap.get("transfer-encoding", "").lower() == "chunked"
        if chunked:
            while True:
                n = int(self.rfile.readline().split(b";")[0], 16)
                if n == 0:
                    self.rfile.readline()
                    break
                left = n
                while left:
                    b = self.rfile.read(min(left, 65536))
                    h.update(b)
                    left -= len(b)
                size += n
                self.rfile.readline()
        else:
            left = int(hmap.get("content-length", "0"))
            while left:
                b = self.rfile.read(min(left, 65536))
                if not b:
                    break
                h.update(b)
                size += len(b)
                left -= len(b)
        return size, h.hexdigest(), chunked

    def send(self, status, body, extra=()):
        data = body.encode()
        reason = {200: "OK", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 413: "Payload Too Large",
                  500: "Internal Server Error"}[status]
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        for k, v in extra:
            head += f"{k}: {v}\r\n"
        self.wfile.write(head.encode() + b"\r\n" + data)


class FakeProxy(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path):
        self.seen = []
        super().__init__(path, ProxyHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.shutdown()
        self.server_close()


def run_measured(argv, env, stdin=None, stdout=None, timeout=120):
    """Runs argv; returns (exit code, stderr text, peak RSS in KiB)."""
    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen(argv, env=env, stdin=stdin, stdout=stdout or subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                p.kill()
                raise AssertionError(f"{argv} did not finish in {timeout}s")
            time.sleep(0.02)
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return p.returncode, err.read().decode(errors="replace"), usage.ru_maxrss


class ApiTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="tokenctl-api-")
        self.sock = os.path.join(self.dir, "tokend.sock")
        self.proxy = FakeProxy(self.sock)
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TOKEND_SOCKET": self.sock, "NO_COLOR": "1"}

    def tearDown(self):
        self.proxy.close()
        subprocess.run(["rm", "-rf", self.dir])

    def api(self, *args, input=None, expect=0):
        r = run_ctl(TOKENCTL, self.env, "api", *args, input=input, timeout=60)
        self.assertEqual(r.returncode, expect, f"tokenctl api {args}\nstdout: {r.stdout[:2000]}\nstderr: {r.stderr}")
        return r

    def echo(self, *args, **kw):
        return json.loads(self.api(*args, **kw).stdout)

    def test_target_method_and_headers(self):
        e = self.echo("p", "get", "/echo/rest/api/3/search?jql=project = ABC&maxResults=5", "-H", "Accept: text/csv",
                      "-H", "X-Atlassian-Token:no-check")
        self.assertEqual(e["method"], "GET")
        self.assertEqual(e["target"], "/v1/proxy/p/echo/rest/api/3/search?jql=project%20=%20ABC&maxResults=5")
        self.assertIn(["Accept", "text/csv"], e["headers"])
        self.assertIn(["X-Atlassian-Token", "no-check"], e["headers"])
        self.assertFalse(any(k.lower() == "content-type" for k, _ in e["headers"]), "no body, no Content-Type")
        self.assertEqual(e["body_size"], 0)

    def test_data_string_gets_json_content_type(self):
        body = '{"fields": {"summary": "from tokenctl"}}'
        e = self.echo("p", "POST", "echo/rest/api/3/issue", "--data", body)
        self.assertIn(["Content-Type", "application/json"], e["headers"])
        self.assertIn(["Content-Length", str(len(body))], e["headers"])
        self.assertEqual(e["body_sha256"], hashlib.sha256(body.encode()).hexdigest())
        # -H Content-Type wins, and only one is sent.
        e = self.echo("p", "PUT", "echo/x", "--data", "a,b\n", "-H", "content-type: text/csv")
        types = [v for k, v in e["headers"] if k.lower() == "content-type"]
        self.assertEqual(types, ["text/csv"])

    def test_data_file_50mb_streams_with_content_length(self):
        path = os.path.join(self.dir, "big.bin")
        with open(path, "wb") as f:
            for piece in pattern(BIG, seed=3):
                f.write(piece)
        out = os.path.join(self.dir, "out.json")
        with open(out, "wb") as f:
            code, err, rss = run_measured([TOKENCTL, "api", "p", "POST", "echo/upload", "--data", "@" + path,
                                           "-H", "Content-Type: application/octet-stream"], self.env, stdout=f)
        self.assertEqual(code, 0, err)
        with open(out) as f:
            e = json.load(f)
        self.assertEqual(e["body_size"], BIG)
        self.assertEqual(e["body_sha256"], pattern_sha256(BIG, seed=3))
        self.assertFalse(e["chunked"])
        self.assertIn(["Content-Length", str(BIG)], e["headers"])
        self.assertLess(rss, RSS_LIMIT_KB, f"tokenctl held the body in memory? peak RSS {rss} KiB")

    def test_data_stdin_pipe_50mb_streams_chunked(self):
        producer = subprocess.Popen([sys.executable, "-c",
                                     "import sys, hashlib\n"
                                     "b = hashlib.sha256(b'block-5').digest() * 2048\n"
                                     f"n = {BIG}\n"
                                     "while n > 0:\n"
                                     "    p = b[:min(n, len(b))]; sys.stdout.buffer.write(p); n -= len(p)\n"],
                                    stdout=subprocess.PIPE)
        out = os.path.join(self.dir, "out.json")
        with open(out, "wb") as f:
            code, err, rss = run_measured([TOKENCTL, "api", "p", "PUT", "echo/upload", "--data", "-"], self.env,
                                          stdin=producer.stdout, stdout=f)
        producer.stdout.close()
        producer.wait()
        self.assertEqual(code, 0, err)
        with open(out) as f:
            e = json.load(f)
        self.assertTrue(e["chunked"])
        self.assertEqual(e["body_size"], BIG)
        self.assertEqual(e["body_sha256"], pattern_sha256(BIG, seed=5))
        self.assertLess(rss, RSS_LIMIT_KB)

    def test_stdin_redirected_from_a_file_gets_a_length(self):
        path = os.path.join(self.dir, "small.json")
        with open(path, "w") as f:
            f.write('{"a": 1}')
        with open(path, "rb") as f:
            r = subprocess.run([TOKENCTL, "api", "p", "POST", "echo/x", "--data", "@-"], env=self.env, stdin=f,
                               capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        e = json.loads(r.stdout)
        self.assertFalse(e["chunked"])
        self.assertEqual(e["body_size"], 8)

    def test_download_50mb_streams_to_stdout(self):
        for chunked in (False, True):
            with self.subTest(chunked=chunked):
                out = os.path.join(self.dir, "download.bin")
                with open(out, "wb") as f:
                    code, err, rss = run_measured(
                        [TOKENCTL, "api", "p", "GET", f"download?size={BIG}" + ("&chunked=1" if chunked else "")],
                        self.env, stdout=f)
                self.assertEqual(code, 0, err)
                self.assertEqual(os.path.getsize(out), BIG)
                h = hashlib.sha256()
                with open(out, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                self.assertEqual(h.hexdigest(), pattern_sha256(BIG, seed=7))
                self.assertLess(rss, RSS_LIMIT_KB, f"tokenctl held the answer in memory? peak RSS {rss} KiB")

    def test_include_and_head(self):
        r = self.api("p", "GET", "echo/x", "--include")
        head, _, body = r.stdout.partition("\n\n")
        lines = head.split("\n")
        self.assertEqual(lines[0], "HTTP/1.1 200 OK")
        self.assertIn("X-Echo: 1", lines)
        self.assertEqual(json.loads(body)["method"], "GET")
        r = self.api("p", "HEAD", "download?size=123", "-i")
        self.assertEqual(r.stdout.split("\n")[0], "HTTP/1.1 200 OK")
        self.assertIn("Content-Length: 123", r.stdout)
        self.assertTrue(r.stdout.endswith("\n\n"), "HEAD: headers only, no body awaited")
        self.assertEqual(self.api("p", "HEAD", "download?size=123").stdout, "")

    def test_upstream_error_body_to_stdout_status_to_stderr(self):
        r = self.api("p", "GET", "upstream404/rest/api/3/issue/NOPE-1", expect=1)
        self.assertEqual(json.loads(r.stdout), {"errorMessages": ["Issue does not exist"], "errors": {}})
        self.assertEqual(r.stderr, "tokenctl: HTTP 404 Not Found\n")

    def test_tokend_errors_message_to_stderr(self):
        r = self.api("p", "DELETE", "policy/rest/api/3/issue/X-1", expect=1)
        self.assertEqual(r.stdout, "")
        self.assertEqual(r.stderr, "tokenctl: HTTP 403: profile p is read-only (policy read_only)\n")
        r = self.api("needs-login", "GET", "jira/rest/api/3/myself", expect=4)
        self.assertEqual(r.stdout, "")
        self.assertIn("HTTP 401: needs-login needs a new login", r.stderr)
        self.assertIn("tokenctl login needs-login", r.stderr)
        # --include shows the whole answer, tokend's JSON included.
        r = self.api("p", "GET", "policy/x", "-i", expect=1)
        self.assertIn("HTTP/1.1 403 Forbidden", r.stdout)
        self.assertIn('"policy_denied"', r.stdout)

    def test_early_answer_while_uploading(self):
        path = os.path.join(self.dir, "big.bin")
        with open(path, "wb") as f:
            for piece in pattern(BIG, seed=1):
                f.write(piece)
        started = time.monotonic()
        r = self.api("p", "POST", "early413", "--data", "@" + path, expect=1)
        self.assertLess(time.monotonic() - started, 20)
        self.assertEqual(r.stderr, "tokenctl: HTTP 413: request body is larger than the limit\n")

    def test_cut_off_answer(self):
        r = self.api("p", "GET", "cutoff", expect=1)
        self.assertEqual(r.stdout, "only part")
        self.assertIn("was cut off", r.stderr)

    def test_usage_errors_send_nothing(self):
        cases = [
            (["p", "GET", "x", "-H", "Accept application/json"], "Name: value"),
            (["p", "GET", "x", "-H", "X-A: 1\r\nX-B: 2"], "line break"),
            (["p", "GET", "x", "-H", "X Y: 1"], "cannot contain spaces"),
            (["p", "GET", "x", "-H", "Content-Length: 5"], "tokenctl handles this header itself"),
            (["p", "GET", "x", "-H", "Host: example.com"], "tokenctl handles this header itself"),
            (["p", "GET", "x\r\ny"], "control character"),
            (["p", "G T", "x"], "METHOD"),
            (["p", "GET", "/"], "PATH is empty"),
            (["p", "POST", "x", "--data", "@" + os.path.join(self.dir, "missing.json")], "cannot open"),
            (["p", "POST", "x", "--data", "@"], "file name"),
            (["p", "POST", "x", "--data", "@" + self.dir], "directory"),
            (["bad name", "GET", "x"], "profile"),
            (["p", "GET"], "missing PATH"),
            (["p", "GET", "x", "--timeout", "-1"], "--timeout"),
        ]
        for args, says in cases:
            with self.subTest(args=args):
                r = run_ctl(TOKENCTL, self.env, "api", *args)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(says, r.stderr)
                self.assertEqual(r.stdout, "")
        self.assertEqual(self.proxy.seen, [], "a refused command sent something")

    def test_dropped_headers_noted(self):
        r = self.api("p", "GET", "echo/x", "-H", "Authorization: Bearer mine", "-H", "Cookie: a=b")
        self.assertIn("tokend drops the Authorization header", r.stderr)
        self.assertIn("tokend drops the Cookie header", r.stderr)
        self.assertNotIn("Bearer mine", r.stderr)

    def test_daemon_unreachable(self):
        env = dict(self.env, TOKEND_SOCKET=os.path.join(self.dir, "nothing.sock"))
        r = run_ctl(TOKENCTL, env, "api", "p", "GET", "echo/x")
        self.assertEqual(r.returncode, 3)
        self.assertIn("nothing.sock", r.stderr)
        self.assertIn("start it with", r.stderr)


class ExecHeadersTest(unittest.TestCase):
    """exec and headers against the real tokend."""

    @classmethod
    def setUpClass(cls):
        cls.xdg = XdgTree()
        cls.env = cls.xdg.env
        cls.daemon = Daemon(TOKEND, cls.env, ["--log-level", "debug"])
        cls.daemon.wait_ready(cls.xdg.socket)
        cls.ctl_ok("add", "dc", "--kind", "pat", "--site", "https://jira.corp.example",
                   "--token-file", secret_file(cls.xdg.root, "pat", PAT))
        cls.ctl_ok("add", "jira", "--kind", "oauth2", "--provider", "atlassian", "--client-id", "cid",
                   "--token-file", secret_file(cls.xdg.root, "access", ACCESS), "--expires-in", "3600")
        cls.ctl_ok("add", "empty", "--kind", "oauth2", "--provider", "generic", "--client-id", "cid",
                   "--token-url", "https://auth.example/token")

    @classmethod
    def tearDownClass(cls):
        code = cls.daemon.stop()
        log = cls.daemon.output()
        cls.xdg.close()
        assert code == 0, log
        assert PAT not in log and ACCESS not in log, "a token in tokend's log"

    @classmethod
    def ctl_ok(cls, *args):
        r = run_ctl(TOKENCTL, cls.env, *args)
        assert r.returncode == 0, f"tokenctl {args}: {r.stderr}"
        return r

    def exec_env(self, profile, *options):
        """The token variables the command sees."""
        script = ("import json, os; print(json.dumps({k: v for k, v in os.environ.items() "
                  "if k.startswith(('TOKEND_', 'JIRA_', 'MY_'))}))")
        r = run_ctl(TOKENCTL, self.env, "exec", profile, *options, "--", sys.executable, "-c", script)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr, "")
        return json.loads(r.stdout)

    def test_exec_default_variables(self):
        env = self.exec_env("dc")
        self.assertEqual(env, {"TOKEND_TOKEN": PAT, "TOKEND_TOKEN_TYPE": "Bearer",
                               "TOKEND_AUTHORIZATION": "Bearer " + PAT})
        env = self.exec_env("jira")
        self.assertEqual(env["JIRA_OAUTH_ACCESS_TOKEN"], ACCESS)
        self.assertEqual(env["TOKEND_TOKEN"], ACCESS)
        self.assertEqual(env["TOKEND_AUTHORIZATION"], "Bearer " + ACCESS)
        self.assertGreater(int(env["TOKEND_EXPIRES_AT"]), time.time() + 3000)

    def test_exec_env_option_and_stale_values_replaced(self):
        env = dict(self.env, TOKEND_TOKEN="stale", MY_OTHER="kept")
        script = "import os; print(os.environ['MY_TOKEN'], os.environ['TOKEND_TOKEN'], os.environ['MY_OTHER'])"
        r = run_ctl(TOKENCTL, env, "exec", "dc", "--env", "MY_TOKEN", "--min-valid", "30", "--", sys.executable,
                    "-c", script)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, f"{PAT} {PAT} kept\n")

    def test_exec_stdio_and_exit_code_pass_through(self):
        r = run_ctl(TOKENCTL, self.env, "exec", "dc", "--", "sh", "-c", "cat; echo err >&2; exit 42",
                    input="from stdin\n")
        self.assertEqual((r.returncode, r.stdout, r.stderr), (42, "from stdin\n", "err\n"))

    def test_exec_token_not_in_argv_or_output(self):
        # The child's command line and tokenctl's own (seen from /proc while it runs).
        r = run_ctl(TOKENCTL, self.env, "exec", "dc", "--", "sh", "-c",
                    'cat /proc/$$/cmdline /proc/$PPID/cmdline | tr "\\0" " "')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("tokenctl", r.stdout)
        self.assertNotIn(PAT, r.stdout)
        self.assertNotIn(PAT, r.stderr)

    def test_exec_child_killed_by_signal(self):
        r = run_ctl(TOKENCTL, self.env, "exec", "dc", "--", "sh", "-c", "kill -TERM $$")
        self.assertEqual(r.returncode, -signal.SIGTERM, "tokenctl ends by the child's signal")

    def test_exec_forwards_signals_from_processes(self):
        script = (
            "import os, signal, sys, time\n"
            "def on(sig, _):\n"
            "    os.write(1, (signal.Signals(sig).name + '\\n').encode())  # print() is not reentrant\n"
            "    if sig == signal.SIGTERM: sys.exit(3)\n"
            "for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):\n"
            "    signal.signal(s, on)\n"
            "os.write(1, b'ready\\n')\n"
            "while True: time.sleep(1)\n")
        p = subprocess.Popen([TOKENCTL, "exec", "dc", "--", sys.executable, "-c", script], env=self.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            self.assertEqual(p.stdout.readline(), "ready\n")
            for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
                p.send_signal(sig)
                self.assertEqual(p.stdout.readline(), sig.name + "\n")
            p.send_signal(signal.SIGTERM)
            self.assertEqual(p.stdout.readline(), "SIGTERM\n")
            self.assertEqual(p.wait(timeout=20), 3)
            self.assertEqual(p.stdout.read(), "", "a signal delivered twice")
        finally:
            if p.poll() is None:
                p.kill()
            p.stdout.close()
            p.stderr.close()

    def test_exec_does_not_pass_on_the_terminals_signals(self):
        # Under a terminal, Ctrl-C goes to the whole foreground process group,
        # so the child already has it: tokenctl must not send a second one.
        # To see that deterministically the child leaves the foreground group
        # here: then only tokenctl gets the terminal's SIGINT, and the child
        # must get nothing. A SIGINT that a process sends to tokenctl does
        # reach it.
        script = ("import os, signal, sys\n"
                  "os.setpgid(0, 0)\n"
                  "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})\n"
                  "os.write(1, b'ready\\n')\n"
                  "first = signal.sigtimedwait({signal.SIGINT}, 1.5)\n"
                  "os.write(1, b'first ' + (b'none' if first is None else b'from %d' % first.si_pid) + b'\\n')\n"
                  "second = signal.sigtimedwait({signal.SIGINT}, 20)\n"
                  "os.write(1, b'second ' + (b'none' if second is None else b'from %d' % second.si_pid) + b'\\n')\n"
                  "sys.exit(5)\n")
        pid, fd = pty.fork()
        if pid == 0:
            os.execve(TOKENCTL, [TOKENCTL, "exec", "dc", "--", sys.executable, "-c", script], self.env)
        out = b""
        try:
            def read_until(needle, deadline=20):
                nonlocal out
                end = time.monotonic() + deadline
                while needle not in out:
                    if time.monotonic() > end:
                        raise AssertionError(f"no {needle!r} in {out!r}")
                    if select.select([fd], [], [], 0.1)[0]:
                        try:
                            out += os.read(fd, 4096)
                        except OSError:
                            break
            read_until(b"ready")
            os.write(fd, b"\x03")  # the terminal's interrupt character: SIGINT to the foreground group
            read_until(b"first ")
            read_until(b"\n", 5)
            self.assertIn(b"first none", out, "tokenctl passed on a signal from the terminal")
            os.kill(pid, signal.SIGINT)  # from a process: passed on
            read_until(b"second ")
            read_until(b"\n", 5)
            _, status = os.waitpid(pid, 0)
        finally:
            os.close(fd)
        self.assertIn(b"second from %d" % pid, out)
        self.assertEqual(os.waitstatus_to_exitcode(status), 5)

    def test_exec_errors_before_running(self):
        marker = os.path.join(self.xdg.root, "ran")
        cases = [
            (self.env, ["exec", "empty", "--", "touch", marker], 4, "tokenctl login empty"),
            (self.env, ["exec", "nope", "--", "touch", marker], 1, "no profile named 'nope'"),
            (dict(self.env, TOKEND_SOCKET=os.path.join(self.xdg.root, "none.sock")),
             ["exec", "dc", "--", "touch", marker], 3, "none.sock"),
            (self.env, ["exec", "dc", "touch", marker], 2, "put -- before the command"),
            (self.env, ["exec", "dc", "--"], 2, "no command"),
            (self.env, ["exec", "dc", "--env", "A-B", "--", "touch", marker], 2, "not a variable name"),
            (self.env, ["exec", "dc", "--min-valid", "x", "--", "touch", marker], 2, "--min-valid"),
        ]
        for env, args, code, says in cases:
            with self.subTest(args=args):
                r = run_ctl(TOKENCTL, env, *args)
                self.assertEqual(r.returncode, code, r.stderr)
                self.assertIn(says, r.stderr)
                self.assertEqual(r.stdout, "")
                self.assertFalse(os.path.exists(marker), "the command ran")
        r = run_ctl(TOKENCTL, self.env, "exec", "dc", "--", "no-such-command-xyz")
        self.assertEqual(r.returncode, 127)
        self.assertIn("cannot run no-such-command-xyz", r.stderr)
        r = run_ctl(TOKENCTL, self.env, "exec", "dc", "--", self.xdg.root)
        self.assertEqual(r.returncode, 126)

    def test_headers_exact_output(self):
        r = run_ctl(TOKENCTL, self.env, "headers", "dc")
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, '{"Authorization": "Bearer ' + PAT + '"}\n', ""))
        r = run_ctl(TOKENCTL, self.env, "headers", "jira", "--min-valid", "600")
        self.assertEqual(r.stdout, '{"Authorization": "Bearer ' + ACCESS + '"}\n')

    def test_headers_failures_print_nothing_on_stdout(self):
        cases = [
            (self.env, "empty", 4),
            (self.env, "nope", 1),
            (dict(self.env, TOKEND_SOCKET=os.path.join(self.xdg.root, "none.sock")), "dc", 3),
        ]
        for env, profile, code in cases:
            with self.subTest(profile=profile, code=code):
                r = run_ctl(TOKENCTL, env, "headers", profile)
                self.assertEqual(r.returncode, code, r.stderr)
                self.assertEqual(r.stdout, "")
                self.assertTrue(r.stderr.startswith("tokenctl: "), r.stderr)
        # jira's token is valid for an hour: asking for more is capped at what
        # a fresh token gives, so it is served, not refused.
        r = run_ctl(TOKENCTL, self.env, "headers", "jira", "--min-valid", "7200")
        self.assertEqual((r.returncode, r.stdout), (0, '{"Authorization": "Bearer ' + ACCESS + '"}\n'), r.stderr)


class RealProxyTest(unittest.TestCase):
    """tokenctl api through the real tokend's proxy to the fake Atlassian API."""

    @classmethod
    def setUpClass(cls):
        cls.up = FakeUpstream(quiet=True)
        cls.up.add_pat(PAT)
        cls.xdg = XdgTree()
        cls.env = cls.xdg.env
        cls.daemon = Daemon(TOKEND, cls.env, ["--ca-bundle", cls.up.ca_file])
        cls.daemon.wait_ready(cls.xdg.socket)
        for args in (["add", "jira", "--kind", "pat", "--site", cls.up.dc_url,
                      "--token-file", secret_file(cls.xdg.root, "pat", PAT)],
                     ["add", "empty", "--kind", "oauth2", "--provider", "atlassian", "--client-id", "cid"]):
            r = run_ctl(TOKENCTL, cls.env, *args)
            assert r.returncode == 0, r.stderr

    @classmethod
    def tearDownClass(cls):
        code = cls.daemon.stop()
        log = cls.daemon.output()
        cls.xdg.close()
        cls.up.stop()
        assert code == 0, log
        assert PAT not in log, "the PAT in tokend's log"

    def api(self, *args, expect=0):
        r = run_ctl(TOKENCTL, self.env, "api", *args, timeout=120)
        self.assertEqual(r.returncode, expect, f"tokenctl api {args}\nstdout: {r.stdout[:2000]}\nstderr: {r.stderr}")
        return r

    def test_calls_and_errors(self):
        me = json.loads(self.api("jira", "GET", "jira/rest/api/3/myself").stdout)
        self.assertEqual(me["fakeUpstream"]["credential_kind"], "pat")
        e = json.loads(self.api("jira", "POST", "/jira/any/echo?q=a b", "--data", '{"x": 1}', "-H", "X-Test: 1").stdout)
        self.assertEqual((e["method"], e["rest"], e["query"], e["body"]), ("POST", "any/echo", "q=a%20b", '{"x": 1}'))
        self.assertEqual((e["headers"]["content-type"], e["headers"]["x-test"]), ("application/json", "1"))
        self.assertEqual(e["authorization"]["kind"], "pat")
        r = self.api("jira", "GET", "jira/rest/api/3/issue/NOPE-1", expect=1)
        self.assertIn("errorMessages", json.loads(r.stdout))
        self.assertEqual(r.stderr, "tokenctl: HTTP 404 Not Found\n")
        r = self.api("jira", "GET", "jira/../secret", expect=1)
        self.assertEqual(r.stdout, "")
        self.assertTrue(r.stderr.startswith("tokenctl: HTTP 400: "), r.stderr)
        r = self.api("empty", "GET", "jira/rest/api/3/myself", expect=4)
        self.assertEqual(r.stdout, "")
        self.assertIn("tokenctl login empty", r.stderr)

    def test_download_50mb(self):
        out = os.path.join(self.xdg.root, "download.bin")
        for chunked in ("0", "1"):
            with self.subTest(chunked=chunked):
                with open(out, "wb") as f:
                    code, err, rss = run_measured(
                        [TOKENCTL, "api", "jira", "GET", f"jira/rest/api/3/attachment/content/big?size={BIG}&chunked={chunked}"],
                        self.env, stdout=f)
                self.assertEqual(code, 0, err)
                h = hashlib.sha256()
                with open(out, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                self.assertEqual(h.hexdigest(), download_sha256("big", BIG))
                self.assertLess(rss, RSS_LIMIT_KB)

    def test_upload_50mb_file_and_pipe(self):
        # docs/API.md: "Bodies stream both ways (a 50 MB attachment upload does not sit in memory)".
        path = os.path.join(self.xdg.root, "big.bin")
        with open(path, "wb") as f:
            for piece in pattern(BIG, seed=9):
                f.write(piece)
        for source in ("file", "pipe"):
            with self.subTest(source=source):
                out = os.path.join(self.xdg.root, "echo.json")
                with open(out, "wb") as f, open(path, "rb") as data:
                    producer = None
                    stdin = data
                    if source == "pipe":
                        producer = subprocess.Popen(["cat", path], stdout=subprocess.PIPE)
                        stdin = producer.stdout
                    code, err, rss = run_measured(
                        [TOKENCTL, "api", "jira", "POST", "jira/upload/echo", "--data",
                         "@" + path if source == "file" else "-", "-H", "Content-Type: application/octet-stream"],
                        self.env, stdin=stdin, stdout=f)
                    if producer:
                        producer.stdout.close()
                        producer.wait()
                self.assertEqual(code, 0, err)
                with open(out) as f:
                    e = json.load(f)
                # (How tokend frames the body upstream is its business; ApiTest checks that
                # tokenctl sends a pipe chunked.)
                self.assertEqual((e["body_size"], e["body_sha256"]), (BIG, pattern_sha256(BIG, seed=9)))
                self.assertLess(rss, RSS_LIMIT_KB)


if __name__ == "__main__":
    unittest.main()

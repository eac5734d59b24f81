"""tokend under socket activation, the way tokend.socket starts it: the
listening socket is created by someone else and passed as fd 3 (LISTEN_FDS=1,
LISTEN_PID), and tokend only starts when the first client connects.

    python3 tests/service/socket_activation_test.py build/daemon/tokend

systemd-socket-activate (package systemd) plays the part of the socket unit.
It creates the socket, waits for the first connection and then execs tokend in
its own process, so the pid it was started with is tokend's pid. It passes no
environment except what -E names, so every variable tokend needs is given
explicitly.
"""
import json
import os
import shutil
import signal
import socket
import sys
import time
import unittest

from service_support import (DEFAULT_DEADLINE, SANITIZER_VARIABLES, Process,
                             TempDir, main, wait_for)

if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
    sys.exit(f"usage: {sys.argv[0]} PATH_TO_TOKEND [unittest options]")
TOKEND = os.path.abspath(sys.argv.pop(1))

HEALTH_REQUEST = b"GET /v1/health HTTP/1.1\r\nHost: tokend\r\n\r\n"


class HttpResponse:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body


def _recv(sock, end, what):
    sock.settimeout(max(end - time.monotonic(), 0.001))
    try:
        return sock.recv(65536)
    except socket.timeout:
        raise AssertionError(f"timed out waiting for {what}") from None


def read_response(sock, end):
    """Reads one HTTP/1.1 response (Content-Length, chunked or until EOF)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = _recv(sock, end, "the response headers")
        if not chunk:
            raise AssertionError(f"connection closed before the response headers: {buf!r}")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise AssertionError(f"not an HTTP/1.x status line: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()

    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(body) < length:
            chunk = _recv(sock, end, "the response body")
            if not chunk:
                raise AssertionError("connection closed inside the response body")
            body += chunk
        body = body[:length]
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        decoded = b""
        while True:
            while b"\r\n" not in body:
                chunk = _recv(sock, end, "a chunk size")
                if not chunk:
                    raise AssertionError("connection closed inside a chunked body")
                body += chunk
            size_line, body = body.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(body) < size + 2:
                chunk = _recv(sock, end, "chunk data")
                if not chunk:
                    raise AssertionError("connection closed inside a chunk")
                body += chunk
            if size == 0:
                break
            decoded += body[:size]
            body = body[size + 2:]
        body = decoded
    else:
        while True:
            chunk = _recv(sock, end, "the end of the response")
            if not chunk:
                break
            body += chunk
    return HttpResponse(int(parts[1]), headers, body)


class SocketActivationTest(unittest.TestCase):
    def setUp(self):
        self.activate = shutil.which("systemd-socket-activate")
        if self.activate is None:
            self.skipTest("systemd-socket-activate not installed (Debian: apt-get install systemd)")
        if not os.access(TOKEND, os.X_OK):
            self.fail(f"{TOKEND} is not an executable file")
        self.tmp = TempDir()
        home = self.tmp.sub("home")
        runtime = self.tmp.sub("run")
        os.makedirs(home, mode=0o700)
        os.makedirs(runtime, mode=0o700)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": home,
            "XDG_RUNTIME_DIR": runtime,
            "XDG_DATA_HOME": os.path.join(home, ".local", "share"),
            "XDG_CONFIG_HOME": os.path.join(home, ".config"),
            "NO_COLOR": "1",
        }
        for name in SANITIZER_VARIABLES:
            if name in os.environ:
                self.env[name] = os.environ[name]

        # What tokend.socket provides: a 0700 directory, a 0600 socket.
        self.socket_path = os.path.join(runtime, "tokend", "tokend.sock")
        os.makedirs(os.path.dirname(self.socket_path), mode=0o700)
        config_dir = os.path.join(self.env["XDG_CONFIG_HOME"], "tokend")
        os.makedirs(config_dir, mode=0o700)
        self.key_file = os.path.join(config_dir, "db.key")
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
        self.db = os.path.join(self.env["XDG_DATA_HOME"], "tokend", "tokens.db")
        self.proc = None

    def tearDown(self):
        if self.proc is not None:
            self.proc.kill()
        self.tmp.close()

    def start(self, extra_env=None):
        env = dict(self.env, **(extra_env or {}))
        argv = [self.activate, "-l", self.socket_path]
        for name, value in env.items():
            argv += ["-E", f"{name}={value}"]
        argv += [TOKEND, "--db", self.db, "--key-file", self.key_file]
        # umask 077 as in the unit (UMask=0077): the socket is created 0600.
        self.proc = Process(argv, env=env, umask=0o077)

        def socket_ready():
            if not self.proc.running():
                raise AssertionError(
                    f"systemd-socket-activate exited ({self.proc.proc.returncode}):\n{self.proc.output()}")
            return os.path.exists(self.socket_path)
        wait_for(socket_ready, f"the activation socket {self.socket_path}")
        self.socket_inode = os.stat(self.socket_path).st_ino

    def health(self, deadline=DEFAULT_DEADLINE):
        end = time.monotonic() + deadline
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(deadline)
            # systemd-socket-activate binds the path before it listens: in
            # between, a connect is refused. Retried until the deadline.
            while True:
                try:
                    s.connect(self.socket_path)
                    break
                except ConnectionRefusedError:
                    if time.monotonic() >= end or not self.proc.running():
                        raise
                    time.sleep(0.01)
            s.sendall(HEALTH_REQUEST)
            try:
                return read_response(s, end)
            except AssertionError as e:
                raise AssertionError(f"{e}\ntokend output so far:\n{self.proc.output()}") from None

    def assert_healthy(self, response):
        self.assertEqual(response.status, 200, response.body[:500])
        body = json.loads(response.body)
        self.assertIsInstance(body, dict)
        self.assertIn("version", body)

    def stop(self):
        self.assertTrue(self.proc.running(), f"tokend already exited:\n{self.proc.output()}")
        self.proc.proc.send_signal(signal.SIGTERM)
        return self.proc.wait_exit()

    def test_serves_health_on_the_passed_socket_and_sigterm_exits_0(self):
        self.start()
        # The first connection is what makes systemd-socket-activate exec
        # tokend: it is answered only if tokend accepts on the inherited fd 3
        # (a socket tokend bound itself would never see this connection).
        self.assert_healthy(self.health())
        # Still serving after the first request.
        self.assert_healthy(self.health())
        # tokend neither replaced nor re-created the socket it was given.
        self.assertEqual(os.stat(self.socket_path).st_ino, self.socket_inode)

        self.assertEqual(self.stop(), 0, self.proc.output())
        # The socket belongs to the socket unit, which keeps listening on it
        # for the next start: tokend must not remove it.
        self.assertTrue(os.path.exists(self.socket_path),
                        "tokend removed the socket file it did not create")
        with open(self.key_file, "rb") as f:
            self.assertNotIn(f.read().hex(), self.proc.output().lower())

    def test_reports_ready_and_stopping_to_the_notify_socket(self):
        notify_path = self.tmp.sub("notify.sock")
        messages = []
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as n:
            n.bind(notify_path)
            n.setblocking(False)

            def received(state):
                while True:
                    try:
                        messages.append(n.recv(4096).decode(errors="replace"))
                    except BlockingIOError:
                        break
                return any(state in m.split("\n") for m in messages)

            self.start({"NOTIFY_SOCKET": notify_path})
            self.assert_healthy(self.health())
            wait_for(lambda: received("READY=1"), f"READY=1 on NOTIFY_SOCKET (got {messages})")
            self.assertEqual(self.stop(), 0, self.proc.output())
            self.assertTrue(received("STOPPING=1"), f"no STOPPING=1 on NOTIFY_SOCKET (got {messages})")


if __name__ == "__main__":
    main()

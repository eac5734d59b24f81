"""Hostile HTTP against the real tokend: each case gets its status or a close,
never a crash or a hang, and a well-formed request is answered right after."""
import json
import os
import random
import resource
import socket
import time
import unittest

from harness import Daemon, XdgTree, binaries, wait_for

TOKEND, TOKENCTL = binaries()
CLOSE = "close"          # the server closes without an answer
REQUEST_TIMEOUT_MS = 300
IDLE_TIMEOUT_MS = 600


def status_of(raw):
    if raw.startswith(b"HTTP/1.") and len(raw) >= 12:
        return int(raw[9:12])
    return None


def pace(sock, data, gap):
    """Sends one byte at a time with `gap` seconds between: the slow client is
    the input here, not a wait for the server."""
    for i in range(len(data)):
        try:
            sock.sendall(data[i:i + 1])
        except OSError:
            return
        time.sleep(gap)


def chunked(body_parts, trailer=b"0\r\n\r\n"):
    out = b""
    for p in body_parts:
        out += f"{len(p):x}\r\n".encode() + p + b"\r\n"
    return out + trailer


H = b"GET /v1/health HTTP/1.1\r\nHost: t\r\n"
rng = random.Random(1234)

# (name, bytes to send | callable(sock), expected statuses or CLOSE, half-close after send?)
CASES = [
    # garbage
    ("nul bytes", b"\x00\x01\x02\x03\r\n\r\n", {400}, False),
    ("random binary", bytes(rng.randrange(256) for _ in range(2000)) + b"\r\n\r\n", {400, 431}, False),
    ("one word", b"HELLO\r\n\r\n", {400}, False),
    ("method only", b"GET\r\n\r\n", {400}, False),
    ("bad protocol", b"GET /v1/health FTP/1.1\r\n\r\n", {400}, False),
    ("future version", b"GET /v1/health HTTP/9.9\r\n\r\n", {400, 505, 200}, False),
    ("tls client hello", bytes.fromhex("16030100a5010000a10303") + os.urandom(160), {400, 408}, False),
    ("only blank lines", b"\r\n\r\n\r\n\r\n", {400, 408, CLOSE}, False),
    ("utf8 in request line", "GET /v1/héalth HTTP/1.1\r\n\r\n".encode(), {400, 404}, False),
    # methods
    ("unknown method", b"BREW /v1/health HTTP/1.1\r\n\r\n", {501}, False),
    ("lowercase method", b"get /v1/health HTTP/1.1\r\n\r\n", {501}, False),
    ("bad method chars", b"G@T /v1/health HTTP/1.1\r\n\r\n", {400}, False),
    ("huge method", b"A" * 5000 + b" /v1/health HTTP/1.1\r\n\r\n", {400, 431, 501}, False),
    ("TRACE", b"TRACE /v1/health HTTP/1.1\r\n\r\n", {405, 501}, False),
    ("CONNECT authority form", b"CONNECT example.com:443 HTTP/1.1\r\n\r\n", {400}, False),
    ("OPTIONS asterisk", b"OPTIONS * HTTP/1.1\r\n\r\n", {400}, False),
    ("DELETE on list", b"DELETE /v1/profiles HTTP/1.1\r\n\r\n", {405}, False),
    # targets
    ("absolute form", b"GET http://evil.example/v1/health HTTP/1.1\r\n\r\n", {400}, False),
    ("oversized target", b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", {431, 414, 400}, False),
    ("encoded slash", b"GET /v1/profiles/a%2Fb/token HTTP/1.1\r\n\r\n", {400}, False),
    ("encoded nul", b"GET /v1/profiles/a%00/token HTTP/1.1\r\n\r\n", {400}, False),
    ("dot dot segment", b"GET /v1/profiles/%2e%2e/token HTTP/1.1\r\n\r\n", {400, 404}, False),
    ("path traversal", b"GET /v1/../v1/health HTTP/1.1\r\n\r\n", {400, 404}, False),
    ("bad escape", b"GET /v1/health?x=%zz HTTP/1.1\r\n\r\n", {400}, False),
    ("truncated escape", b"GET /v1/health% HTTP/1.1\r\n\r\n", {400}, False),
    ("space in target", b"GET /v1/ health HTTP/1.1\r\n\r\n", {400}, False),
    ("DEL in target", b"GET /v1/he\x7flth HTTP/1.1\r\n\r\n", {400}, False),
    ("bad min_valid", b"GET /v1/profiles/p/token?min_valid=abc HTTP/1.1\r\n\r\n", {400}, False),
    ("negative min_valid", b"GET /v1/profiles/p/token?min_valid=-1 HTTP/1.1\r\n\r\n", {400}, False),
    ("overflow min_valid", b"GET /v1/profiles/p/token?min_valid=99999999999999999999999 HTTP/1.1\r\n\r\n", {400}, False),
    # content length
    ("negative content-length", H + b"Content-Length: -1\r\n\r\n", {400}, False),
    ("huge content-length", H + b"Content-Length: 99999999999999999999999\r\n\r\n", {400, 413}, False),
    ("non-numeric content-length", H + b"Content-Length: abc\r\n\r\n", {400}, False),
    ("conflicting content-length", H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", {400}, False),
    ("content-length over limit", b"PUT /v1/profiles/x HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n", {413}, False),
    ("body shorter than declared then half-close", b"PUT /v1/profiles/x HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc", {CLOSE, 400}, True),
    ("body shorter than declared, stalls", b"PUT /v1/profiles/x HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc", {408}, False),
    # chunked
    ("bad chunk size", b"PUT /v1/profiles/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", {400}, False),
    ("chunk size overflow", b"PUT /v1/profiles/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFFFF\r\n", {400, 413}, False),
    ("chunked without end then half-close", b"PUT /v1/profiles/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", {CLOSE, 400}, True),
    ("chunked not last", b"PUT /v1/profiles/x HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", {400}, False),
    ("unsupported transfer coding", b"PUT /v1/profiles/x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n", {400}, False),
    ("content-length with chunked", b"PUT /v1/profiles/x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {400}, False),
    ("chunked over body limit", b"PUT /v1/profiles/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked([b"a" * 40000] * 3), {413}, False),
    ("bad chunk extension", b"PUT /v1/profiles/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;;;=\x01\r\nhello\r\n0\r\n\r\n", {400}, False),
    ("chunk missing CRLF", b"PUT /v1/profiles/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", {400}, False),
    # headers
    ("header flood", b"GET /v1/health HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(5000)) + b"\r\n", {431}, False),
    ("huge header value", H + b"X-Big: " + b"v" * 20000 + b"\r\n\r\n", {431}, False),
    ("header without colon", H + b"NoColonHere\r\n\r\n", {400}, False),
    ("space in header name", H + b"Bad Name: x\r\n\r\n", {400}, False),
    # RFC 7230 §3.2.4: reject obs-fold or replace it with a space (Beast does the latter).
    ("obs-fold", H + b"X-A: one\r\n  folded\r\n\r\n", {400, 200}, False),
    ("nul in header value", H + b"X-A: a\x00b\r\n\r\n", {400}, False),
    ("bare LF line endings", b"GET /v1/health HTTP/1.1\nHost: t\n\n", {400, 200}, False),
    ("CR without LF", b"GET /v1/health HTTP/1.1\rHost: t\r\r", {400, 408}, False),
    # JSON bodies
    ("deep JSON", None, {400}, False),
    ("not JSON", b"PUT /v1/profiles/x HTTP/1.1\r\nContent-Length: 9\r\n\r\nnot json!", {400}, False),
    ("JSON array", b"PUT /v1/profiles/x HTTP/1.1\r\nContent-Length: 2\r\n\r\n[]", {400}, False),
    ("wrong types", None, {400}, False),
    ("invalid UTF-8 in JSON", None, {400}, False),
    ("control char in field", None, {400}, False),
    ("unknown field", None, {400}, False),
    ("bad profile name", b"PUT /v1/profiles/-bad HTTP/1.1\r\nContent-Length: 15\r\n\r\n{\"kind\":\"pat\"}\n", {400}, False),
    # slow and half-closed clients
    ("slowloris", lambda s: pace(s, H + b"X-Slow: " + b"a" * 40, 0.02), {408}, False),
    ("silent client", b"", {CLOSE}, False),
    ("partial header then half-close", b"GET /v1/health HTTP/1.1\r\nHost", {CLOSE, 400}, True),
    ("full request then half-close", b"GET /v1/health HTTP/1.1\r\n\r\n", {200}, True),
    ("HTTP/1.0 without Host", b"GET /v1/health HTTP/1.0\r\n\r\n", {200}, False),
]


def json_put(name, payload_bytes):
    return (f"PUT /v1/profiles/{name} HTTP/1.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload_bytes)}\r\n\r\n").encode() + payload_bytes


BODIES = {
    "deep JSON": json_put("x", b"[" * 30000 + b"]" * 30000),
    "wrong types": json_put("x", b'{"kind": 5, "site": ["a"]}'),
    "invalid UTF-8 in JSON": json_put("x", b'{"kind":"pat","site":"https://a.example","token":"\xff\xfe"}'),
    "control char in field": json_put("x", b'{"kind":"pat","site":"https://a.example/\\u0000","token":"t"}'),
    "unknown field": json_put("x", b'{"kind":"pat","site":"https://a.example","token":"t","tokn":"typo"}'),
}


class HostileHttpTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.xdg = XdgTree()
        cls.daemon = Daemon(TOKEND, cls.xdg.env, [
            "--max-header-bytes", "8192", "--max-body-bytes", "65536",
            "--request-timeout", f"{REQUEST_TIMEOUT_MS}ms", "--idle-timeout", f"{IDLE_TIMEOUT_MS}ms",
            "--max-connections", "1024"])
        cls.daemon.wait_ready(cls.xdg.socket)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))

    @classmethod
    def tearDownClass(cls):
        code = cls.daemon.stop()
        cls.xdg.close()
        assert code == 0, f"tokend exited {code}:\n{cls.daemon.output()}"

    def connect(self, deadline=10.0):
        # A full listen backlog answers EAGAIN on Unix sockets: retry until
        # the server has accepted enough (bounded by the deadline).
        end = time.monotonic() + deadline
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            try:
                s.connect(self.xdg.socket)
                return s
            except BlockingIOError:
                s.close()
                if time.monotonic() > end:
                    raise
                time.sleep(0.001)

    def read_all(self, s):
        data = b""
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            data += b
        return data

    def assert_still_serving(self):
        s = self.connect()
        s.sendall(b"GET /v1/health HTTP/1.1\r\nConnection: close\r\n\r\n")
        raw = self.read_all(s)
        s.close()
        self.assertEqual(status_of(raw), 200, raw[:200])
        self.assertIsNone(self.daemon.proc.poll(), "tokend died")

    def test_cases(self):
        self.assertGreaterEqual(len(CASES), 50)
        for name, data, expected, half_close in CASES:
            with self.subTest(case=name):
                if data is None:
                    data = BODIES[name]
                s = self.connect()
                try:
                    if callable(data):
                        data(s)
                    elif data:
                        s.sendall(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the server may close before reading everything
                if half_close:
                    s.shutdown(socket.SHUT_WR)
                raw = self.read_all(s)
                s.close()
                got = status_of(raw) if raw else CLOSE
                self.assertIn(got, expected, f"{name}: got {raw[:300]!r}")
                self.assertLessEqual(raw.count(b"HTTP/1.1 "), 1, f"{name}: more than one response: {raw[:600]!r}")
                if got not in (CLOSE, 200):
                    body = raw.split(b"\r\n\r\n", 1)[1].split(b"\n", 1)[0]
                    err = json.loads(body)["error"]
                    self.assertTrue(err["code"] and err["message"], body)
                self.assert_still_serving()

    def test_many_pipelined_requests_are_all_answered(self):
        s = self.connect()
        n = 5000
        s.sendall(b"GET /v1/health HTTP/1.1\r\n\r\n" * (n - 1) + b"GET /v1/health HTTP/1.1\r\nConnection: close\r\n\r\n")
        # (10,000 would do as well: answering does not recurse per request.)
        raw = self.read_all(s)
        s.close()
        self.assertEqual(raw.count(b"HTTP/1.1 200 OK"), n)

    def test_2000_simultaneous_connections(self):
        socks = []
        statuses = {}
        try:
            for _ in range(2000):
                socks.append(self.connect())
            for s in socks:
                try:
                    s.sendall(b"GET /v1/health HTTP/1.1\r\nConnection: close\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # refused over the limit and already closed
            for s in socks:
                raw = self.read_all(s)
                got = status_of(raw) if raw else CLOSE
                statuses[got] = statuses.get(got, 0) + 1
        finally:
            for s in socks:
                s.close()
        self.assertLessEqual(set(statuses), {200, 503, CLOSE}, statuses)
        self.assertGreaterEqual(statuses.get(200, 0), 1024 - 10, statuses)
        # The server counts our 2,000 connections until it has seen each close;
        # until then it rightly answers 503. Poll for recovery, with a deadline.
        def healthy():
            s = self.connect()
            s.sendall(b"GET /v1/health HTTP/1.1\r\nConnection: close\r\n\r\n")
            raw = self.read_all(s)
            s.close()
            self.assertIn(status_of(raw), (200, 503), raw[:200])
            return status_of(raw) == 200
        wait_for(healthy, "tokend to serve again after the connection storm")
        self.assertIsNone(self.daemon.proc.poll(), "tokend died")


if __name__ == "__main__":
    unittest.main(verbosity=2)

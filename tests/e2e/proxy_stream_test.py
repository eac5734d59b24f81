"""The streaming proxy end to end: proxied answers reach the
caller as they arrive, memory stays bounded, long-lived streams neither time
out nor outlive their callers, and they end cleanly when tokend drains.

The fake upstream's gates (`?gate=NAME`) hold the rest of an answer until the
test opens them, so "the caller has the first bytes while the upstream has
not yet sent the rest" is shown by construction, not by timing."""
import hashlib
import json
import os
import signal
import socket
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fake_upstream"))

from client import FakeUpstream, download_sha256  # noqa: E402
from harness import Daemon, XdgTree, binaries, peak_rss_kib, unix_request, wait_for  # noqa: E402

TOKEND, TOKENCTL = binaries()
CLIENT_ID = "stream-app"
CLIENT_SECRET = "cs-MARKER-stream-secret"
API_TOKEN = "ATATT-MARKER-stream-api-token"
EMAIL = "me@example.test"
SANITIZED = os.environ.get("ASAN_OPTIONS") is not None
# Short server timeouts: a stream must outlive them.
TIMEOUT_S = 1


class Conn:
    """One client connection on the socket, reading an HTTP/1.1 answer piece by piece."""

    def __init__(self, path, deadline=20):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(deadline)
        self.s.connect(path)
        self.buf = b""

    def send(self, target, method="GET", extra=""):
        self.s.sendall(f"{method} {target} HTTP/1.1\r\nHost: tokend\r\n{extra}\r\n".encode())

    def head(self):
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return int(lines[0][9:12]), headers

    def chunk(self):
        """The next chunk of a chunked body (b"" for the last)."""
        while b"\r\n" not in self.buf:
            self._more()
        size_line, _, self.buf = self.buf.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        while len(self.buf) < size + 2:
            self._more()
        data, self.buf = self.buf[:size], self.buf[size + 2:]
        return data

    def until(self, needle):
        """Chunks until their bytes contain `needle`; returns them joined."""
        got = b""
        while needle not in got:
            piece = self.chunk()
            if piece == b"":
                raise AssertionError(f"the body ended before {needle!r}; got {got!r}")
            got += piece
        return got

    def closed_by_peer(self):
        """True once the other end closes (after reading anything still in flight)."""
        while True:
            data = self.s.recv(65536)
            if not data:
                return True
            self.buf += data

    def _more(self):
        data = self.s.recv(65536)
        if not data:
            raise ConnectionError(f"closed by tokend; had {self.buf[:200]!r}")
        self.buf += data

    def close(self):
        self.s.close()


class ProxyStreamTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.up = FakeUpstream(quiet=True)

    @classmethod
    def tearDownClass(cls):
        cls.up.stop()

    def setUp(self):
        self.up.reset()
        self.up.add_client(CLIENT_ID, CLIENT_SECRET, "client_secret_basic")
        self.xdg = XdgTree()
        self.daemon = Daemon(TOKEND, self.xdg.env, [
            "--ca-bundle", self.up.ca_file, "--idle-timeout", f"{TIMEOUT_S}s",
            "--request-timeout", f"{TIMEOUT_S}s"])
        self.daemon.wait_ready(self.xdg.socket)
        self.conns = []

    def tearDown(self):
        for c in self.conns:
            c.close()
        if self.daemon.proc.poll() is None:
            self.assertEqual(self.daemon.stop(), 0, self.daemon.output())
        self.xdg.close()

    def put(self, name, body):
        status, text = unix_request(self.xdg.socket, "PUT", f"/v1/profiles/{name}", json.dumps(body))
        self.assertIn(status, (200, 201), text)

    def add_generic(self):
        g = self.up.add_grant(CLIENT_ID, access_lifetime=3600)
        self.put("g", {"kind": "oauth2", "token_url": self.up.token_url, "client_id": CLIENT_ID,
                       "client_secret": CLIENT_SECRET, "access_token": g["access_token"],
                       "refresh_token": g["refresh_token"], "expires_in": 3600, "api_base": self.up.base_url})

    def connect(self):
        c = Conn(self.xdg.socket)
        self.conns.append(c)
        return c

    def open_streams(self):
        _, text = unix_request(self.xdg.socket, "GET", "/v1/metrics")
        for line in text.splitlines():
            if line.startswith("tokend_proxy_open_streams "):
                return int(line.split()[1])
        raise AssertionError("no tokend_proxy_open_streams in /v1/metrics")

    def peak_rss_kib(self):
        return peak_rss_kib(self.daemon.proc.pid)

    def test_server_sent_events_are_relayed_as_they_arrive_and_the_connection_is_kept(self):
        self.add_generic()
        c = self.connect()
        c.send("/v1/proxy/g/events?count=3&gate=sse")
        status, headers = c.head()
        self.assertEqual(status, 200)
        self.assertEqual(headers.get("content-type"), "text/event-stream")
        self.assertEqual(headers.get("transfer-encoding"), "chunked")
        # The first event is here while the upstream holds the second behind its gate.
        self.assertIn(b'data: {"n": 1}', c.until(b"\n\n"))
        self.assertEqual(self.open_streams(), 1)
        self.up.open_gate("sse")
        rest = c.until(b'data: {"n": 3}')
        self.assertIn(b'data: {"n": 2}', rest)
        self.assertEqual(c.chunk(), b"", "the body ends with the last chunk")
        wait_for(lambda: self.open_streams() == 0, "the stream counted as ended")
        # The same connection serves the next request.
        c.send("/v1/health")
        status, _ = c.head()
        self.assertEqual(status, 200)

    def test_a_large_download_streams_before_the_upstream_has_sent_it_with_bounded_memory(self):
        self.up.add_api_token(EMAIL, API_TOKEN)
        self.put("cloud", {"kind": "api-token", "site": self.up.site_url("acme"), "email": EMAIL, "token": API_TOKEN})
        size = 50 * 1000 * 1000
        # Warm up TLS and curl so the RSS figure is about the body.
        self.assertEqual(unix_request(self.xdg.socket, "GET", "/v1/proxy/cloud/jira/rest/api/3/myself")[0], 200)
        before = self.peak_rss_kib()
        c = self.connect()
        c.send(f"/v1/proxy/cloud/jira/rest/api/3/attachment/content/77?size={size}&gate=dl")
        status, headers = c.head()
        self.assertEqual(status, 200)
        self.assertEqual(headers.get("content-length"), str(size), "the upstream's length is passed on")
        while not c.buf:
            c._more()
        # Bytes of the body are here; the upstream has sent one 64 KiB piece and waits.
        first = len(c.buf)
        self.assertGreater(first, 0)
        self.assertLessEqual(first, 64 * 1024)
        self.up.open_gate("dl")
        h = hashlib.sha256(c.buf)
        got = len(c.buf)
        c.buf = b""
        while got < size:
            data = c.s.recv(1 << 20)
            self.assertTrue(data, f"closed after {got} of {size} bytes")
            got += len(data)
            h.update(data)
        self.assertEqual(got, size)
        self.assertEqual(h.hexdigest(), download_sha256(77, size))
        growth_mib = (self.peak_rss_kib() - before) / 1024
        print(f"\n50 MB streamed through the proxy: tokend's peak RSS grew {growth_mib:.1f} MiB", file=sys.stderr)
        if not SANITIZED:
            self.assertLess(growth_mib, 16)

    def test_a_long_lived_stream_outlives_every_timeout(self):
        self.add_generic()
        c = self.connect()
        c.send("/v1/proxy/g/events?count=2&gate=long")
        self.assertEqual(c.head()[0], 200)
        c.until(b"\n\n")
        # Longer than the idle and request timeouts together: nothing may close it.
        c.s.settimeout(TIMEOUT_S * 3)
        with self.assertRaises(socket.timeout):
            c._more()
        c.s.settimeout(20)
        self.assertEqual(self.open_streams(), 1)
        self.up.open_gate("long")
        self.assertIn(b'data: {"n": 2}', c.until(b'data: {"n": 2}'))

    def test_the_upstream_transfer_ends_when_the_caller_leaves(self):
        self.add_generic()
        c = self.connect()
        c.send("/v1/proxy/g/events?count=2&gate=leave")
        self.assertEqual(c.head()[0], 200)
        c.until(b"\n\n")
        self.assertEqual(self.open_streams(), 1)
        c.close()
        self.conns.remove(c)
        wait_for(lambda: self.open_streams() == 0, "the stream ended with its caller")
        self.up.open_gate("leave")
        _, text = unix_request(self.xdg.socket, "GET", "/v1/audit?limit=5")
        proxied = [e for e in json.loads(text)["events"] if e["kind"] == "proxy"]
        self.assertEqual(proxied[0]["detail"]["path"], "events")
        self.assertEqual(proxied[0]["detail"].get("error"), "transient", "an unfinished stream is audited as such")

    def test_sigterm_ends_open_streams_and_tokend_exits_0(self):
        self.add_generic()
        c = self.connect()
        c.send("/v1/proxy/g/events?count=2&gate=drain")
        self.assertEqual(c.head()[0], 200)
        c.until(b"\n\n")
        self.daemon.proc.send_signal(signal.SIGTERM)
        # The caller's connection closes without the last chunk: a cut body never looks complete.
        self.assertTrue(c.closed_by_peer())
        self.assertNotIn(b"0\r\n\r\n", c.buf)
        self.assertEqual(self.daemon.wait_exit(), 0, self.daemon.output())
        self.up.open_gate("drain")


if __name__ == "__main__":
    unittest.main(verbosity=2)

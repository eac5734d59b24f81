#!/usr/bin/env python3
"""Proxy streaming: time to first byte and to last byte of a large download,
through tokend's proxy versus straight from the upstream, in one run, plus
tokend's peak RSS growth while it streams.

    python3 bench/stream_bench.py [--build build] [--size-mb 50] [--runs 5]

The upstream is the TLS fake (tests/fake_upstream) on loopback; the direct
client talks HTTPS to it with the same API token tokend holds, the proxied
client talks HTTP/1.1 to tokend's socket. Both read into a SHA-256 as fast as
they can. Figures are medians over the runs (min and max beside them).
"""
import argparse
import hashlib
import http.client
import json
import os
import socket
import ssl
import statistics
import sys
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "fake_upstream"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))

from client import FakeUpstream, api_token_auth, download_sha256  # noqa: E402
from harness import Daemon, XdgTree, peak_rss_kib, unix_request  # noqa: E402

EMAIL = "bench@example.test"
API_TOKEN = "ATATT-bench-stream-token"


def read_all(recv, first_chunk, t0, size):
    """(ttfb_s, total_s, sha256) of a body whose first bytes are `first_chunk`."""
    ttfb = None
    h = hashlib.sha256()
    got = 0
    data = first_chunk
    while True:
        if data:
            if ttfb is None:
                ttfb = time.perf_counter() - t0
            h.update(data)
            got += len(data)
        if got >= size:
            break
        data = recv()
        if not data:
            break
    return ttfb, time.perf_counter() - t0, h.hexdigest(), got


def direct(up, path, size):
    url = urllib.parse.urlsplit(up.site_url("acme"))
    ctx = ssl.create_default_context(cafile=up.ca_file)
    conn = http.client.HTTPSConnection(url.hostname, url.port, context=ctx, timeout=120)
    conn.connect()
    t0 = time.perf_counter()
    conn.request("GET", url.path + path, headers={"Authorization": api_token_auth(EMAIL, API_TOKEN)})
    resp = conn.getresponse()
    assert resp.status == 200, resp.status
    result = read_all(lambda: resp.read1(1 << 20), b"", t0, size)
    conn.close()
    return result


def proxied(sock_path, path, size):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(120)
    s.connect(sock_path)
    t0 = time.perf_counter()
    s.sendall(f"GET /v1/proxy/cloud/jira{path} HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, _, rest = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:100]
    result = read_all(lambda: s.recv(1 << 20), rest, t0, size)
    s.close()
    return result


def summary(values, scale=1000.0):
    v = [x * scale for x in values]
    return {"median": statistics.median(v), "min": min(v), "max": max(v)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    ap.add_argument("--size-mb", type=int, default=50)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    size = args.size_mb * 1000 * 1000
    path = f"/rest/api/3/attachment/content/77?size={size}"

    up = FakeUpstream(quiet=True)
    xdg = XdgTree()
    daemon = None
    try:
        up.add_api_token(EMAIL, API_TOKEN)
        daemon = Daemon(os.path.join(args.build, "daemon", "tokend"), xdg.env, ["--ca-bundle", up.ca_file])
        daemon.wait_ready(xdg.socket)
        status, text = unix_request(xdg.socket, "PUT", "/v1/profiles/cloud", json.dumps(
            {"kind": "api-token", "site": up.site_url("acme"), "email": EMAIL, "token": API_TOKEN}))
        assert status in (200, 201), text
        assert unix_request(xdg.socket, "GET", "/v1/proxy/cloud/jira/rest/api/3/myself")[0] == 200
        expected = download_sha256(77, size)
        rss_before = peak_rss_kib(daemon.proc.pid)
        rows = {"direct": [], "proxied": []}
        for _ in range(args.runs):
            for name, fn in (("direct", lambda: direct(up, path, size)),
                             ("proxied", lambda: proxied(xdg.socket, path, size))):
                ttfb, total, digest, got = fn()
                assert got == size and digest == expected, f"{name}: {got} bytes, digest {digest}"
                rows[name].append((ttfb, total))
        growth = (peak_rss_kib(daemon.proc.pid) - rss_before) / 1024
        figures = {
            "size_bytes": size, "runs": args.runs,
            "direct": {"ttfb_ms": summary([r[0] for r in rows["direct"]]),
                       "total_ms": summary([r[1] for r in rows["direct"]])},
            "proxied": {"ttfb_ms": summary([r[0] for r in rows["proxied"]]),
                        "total_ms": summary([r[1] for r in rows["proxied"]])},
            "tokend_peak_rss_growth_mib": round(growth, 1),
        }
        print(f"{args.size_mb} MB download, {args.runs} runs each (median [min..max]):")
        for name in ("direct", "proxied"):
            f = figures[name]
            print(f"  {name:8} first byte {f['ttfb_ms']['median']:8.1f} ms "
                  f"[{f['ttfb_ms']['min']:.1f}..{f['ttfb_ms']['max']:.1f}]   "
                  f"last byte {f['total_ms']['median']:8.1f} ms "
                  f"[{f['total_ms']['min']:.1f}..{f['total_ms']['max']:.1f}]")
        print(f"  tokend's peak RSS grew {growth:.1f} MiB while streaming")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(figures, f, indent=2)
    finally:
        if daemon is not None and daemon.proc.poll() is None:
            daemon.stop()
        xdg.close()
        up.stop()


if __name__ == "__main__":
    main()

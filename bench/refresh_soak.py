#!/usr/bin/env python3
"""Refresh soak: N profiles whose tokens live LIFETIME s with a BUFFER s refresh
buffer, for DURATION s against the fake provider (tests/fake_upstream).

Reports: expired tokens served (sampled token requests whose answer was already
expired; must be 0), refreshes per profile per cycle (must be 1: no duplicate
refreshes), peak concurrent refreshes (tokend's metric and the fake's count),
tokend CPU% and RSS.

    bench/refresh_soak.py [--profiles 10000] [--lifetime 120] [--buffer 30]
                          [--duration 600] [--tokend build/daemon/tokend] [--json FILE]
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "fake_upstream"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))
from client import FakeUpstream  # noqa: E402
from harness import Daemon, XdgTree, unix_request as request  # noqa: E402


def proc_stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    return ticks, rss


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", type=int, default=10000)
    ap.add_argument("--lifetime", type=int, default=120)
    ap.add_argument("--buffer", type=int, default=30)
    ap.add_argument("--duration", type=int, default=600)
    ap.add_argument("--tokend", default=os.path.join(HERE, "..", "build", "daemon", "tokend"))
    ap.add_argument("--json")
    a = ap.parse_args()

    up = FakeUpstream(quiet=True)
    xdg = XdgTree()
    d = None
    try:
        up.add_client("soak", "soak-secret", "client_secret_basic")
        up.config(reuse_window=600, access_lifetime=a.lifetime, log_limit=1000)
        d = Daemon(os.path.abspath(a.tokend), xdg.env, ["--ca-bundle", up.ca_file, "--refresh-buffer", f"{a.buffer}s",
                                                        "--max-concurrent-refreshes", "8"])
        d.wait_ready(xdg.socket)
        t0 = time.monotonic()
        grants = {}
        conn = up.connection()  # one keep-alive TLS connection for 10,000 control calls
        for i in range(a.profiles):
            g = up.request("POST", "/_control/grants",
                           json.dumps({"client_id": "soak", "access_lifetime": a.lifetime}),
                           {"Content-Type": "application/json"}, conn=conn).json()
            name = f"p{i:05d}"
            grants[name] = g["grant_id"]
            # Spread the starting ages over one lifetime, as a real population would be.
            age = random.uniform(0, a.lifetime - a.buffer - 5)
            body = json.dumps({"kind": "oauth2", "token_url": up.token_url, "client_id": "soak",
                               "client_secret": "soak-secret", "access_token": g["access_token"],
                               "refresh_token": g["refresh_token"], "expires_in": int(a.lifetime - age),
                               "reuse_window": 600})
            status, text = request(xdg.socket, "PUT", f"/v1/profiles/{name}", body)
            assert status in (200, 201), text
        print(f"{a.profiles} profiles added in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        up.clear_stats()
        pid = d.proc.pid
        hz = os.sysconf("SC_CLK_TCK")
        ticks0, _ = proc_stat(pid)
        start = time.monotonic()
        served = expired = failures = 0
        rss_peak = 0
        names = list(grants)
        while time.monotonic() - start < a.duration:
            name = random.choice(names)
            status, text = request(xdg.socket, "GET", f"/v1/profiles/{name}/token?min_valid=0")
            now = time.time()
            if status == 200:
                served += 1
                if json.loads(text)["expires_at"] <= now:
                    expired += 1
            else:
                failures += 1
            rss_peak = max(rss_peak, proc_stat(pid)[1])
            time.sleep(0.02)  # sampling pace (~50 token requests per second)
        elapsed = time.monotonic() - start
        ticks1, rss = proc_stat(pid)
        _, metrics = request(xdg.socket, "GET", "/v1/metrics")
        stats = up.stats()
        per_grant = [stats["refreshes_by_grant"].get(g, 0) for g in grants.values()]
        # Each profile refreshes once per cycle: about elapsed / (lifetime - buffer - jitter/2).
        cycle = a.lifetime - a.buffer - min(30, a.lifetime / 10) / 2
        expected = elapsed / cycle
        dup = max(stats.get("max_concurrent_by_grant", {}).values() or [0])
        result = {
            "profiles": a.profiles, "lifetime_s": a.lifetime, "buffer_s": a.buffer, "duration_s": round(elapsed),
            "token_requests_sampled": served + failures, "expired_tokens_served": expired,
            "token_request_failures": failures,
            "refreshes": sum(per_grant), "refreshes_per_profile_mean": sum(per_grant) / len(per_grant),
            "refreshes_per_profile_min": min(per_grant), "refreshes_per_profile_max": max(per_grant),
            "expected_cycles": round(expected, 2),
            "refreshes_per_profile_per_cycle": round(sum(per_grant) / len(per_grant) / expected, 3),
            "max_concurrent_refreshes_of_one_profile": dup,
            "peak_concurrent_refreshes_tokend": metric(metrics, "tokend_refreshes_in_flight_peak"),
            "peak_concurrent_token_requests_upstream": stats.get("max_concurrent_token_requests"),
            "reuse_detections": stats.get("reuse_detections"),
            "tokend_cpu_percent": round(100.0 * (ticks1 - ticks0) / hz / elapsed, 2),
            "tokend_rss_mib": round(rss / 1024, 1), "tokend_rss_peak_mib": round(rss_peak / 1024, 1),
            "refresh_failures": metric(metrics, 'tokend_refreshes_total{result="failed"}'),
        }
        print(json.dumps(result, indent=2))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(result, f, indent=2)
        return 0 if expired == 0 else 1
    finally:
        if d is not None and d.proc.poll() is None:
            d.stop()
        up.stop()
        xdg.close()


if __name__ == "__main__":
    sys.exit(main())

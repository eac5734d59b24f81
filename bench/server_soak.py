#!/usr/bin/env python3
"""Server-mode soak: USERS x PROFILES grants whose tokens live LIFETIME s, held
by REPLICAS `tokend --server` processes on one throwaway PostgreSQL, for
DURATION s against the fake provider (tests/fake_upstream), with a random
replica killed with SIGKILL (and restarted) every KILL_EVERY s.

Token requests are sampled on every replica (as random users, min_valid=0).
Reports: expired tokens served (must be 0), the most refreshes of one grant in
flight at the provider at once (the fake's count; must be <= 1), refreshes per
replica (tokend_server_refreshes_ok_total summed over each replica's lives),
grants lost (revoked by the provider's reuse detection, or no longer
refreshable; must be 0), refreshes per grant per cycle, token request failures
(a request that found its replica dead is counted apart), p50/p99 token
latency per replica, how long a killed replica took to answer again, and each
replica's resident memory at the end.

    bench/server_soak.py [--users 10000] [--profiles 2] [--lifetime 120] [--buffer 30]
                         [--replicas 3] [--duration 600] [--kill-every 30]
                         [--tokend build/daemon/tokend] [--seed N] [--json FILE]

The lead's full run is the defaults; a short check: --users 500 --duration 90.
"""
import argparse
import json
import os
import random
import secrets
import signal
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "fake_upstream"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))


def percentile(values, p):
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1))))]


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


class Conn:
    """One keep-alive HTTP/1.1 connection to a replica's socket."""

    def __init__(self, path):
        self.path = path
        self.sock = None
        self.buf = b""

    def request(self, method, target, headers=(), body=None, timeout=30):
        data = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {target} HTTP/1.1\r\nHost: tokend\r\n"
        for k, v in headers:
            head += f"{k}: {v}\r\n"
        head += f"Content-Length: {len(data)}\r\n\r\n"
        if self.sock is None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(self.path)
            self.buf = b""
        try:
            self.sock.sendall(head.encode() + data)
            while b"\r\n\r\n" not in self.buf:
                self._more()
            head_bytes, _, rest = self.buf.partition(b"\r\n\r\n")
            length = 0
            for line in head_bytes.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v.strip())
            while len(rest) < length:
                self.buf = head_bytes + b"\r\n\r\n" + rest
                self._more()
                head_bytes, _, rest = self.buf.partition(b"\r\n\r\n")
            self.buf = rest[length:]
            if b"connection: close" in head_bytes.lower():
                self.close()
            return int(head_bytes[9:12]), rest[:length].decode(errors="replace")
        except Exception:
            self.close()
            raise

    def _more(self):
        b = self.sock.recv(65536)
        if not b:
            raise ConnectionError("closed")
        self.buf += b

    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=10000)
    ap.add_argument("--profiles", type=int, default=2, help="profiles per user")
    ap.add_argument("--lifetime", type=int, default=120)
    ap.add_argument("--buffer", type=int, default=30)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--duration", type=int, default=600)
    ap.add_argument("--kill-every", type=float, default=30)
    ap.add_argument("--tokend", default=os.path.join(HERE, "..", "build", "daemon", "tokend"))
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    tokend = os.path.abspath(a.tokend)

    from client import FakeUpstream  # noqa: E402
    from harness import Daemon, XdgTree, wait_for  # noqa: E402
    sys.argv = sys.argv[:1]  # server_mode_test reads --tokend itself
    from server_mode_test import PgCluster, write_private  # noqa: E402

    class QuietPg(PgCluster):
        """The suite's throwaway server, without its statement log (millions of lines here)."""

        def _run(self, argv, wait):
            return super()._run(["log_statement=none" if x == "log_statement=all" else x for x in argv], wait)

    pg = QuietPg()
    up = FakeUpstream(quiet=True)
    xdg = XdgTree()
    replicas = [None] * a.replicas
    lock = threading.Lock()
    try:
        database = "tokend_soak"
        assert pg.psql("postgres", f"CREATE DATABASE {database}") is not None
        db_file = write_private(os.path.join(xdg.root, "db.conninfo"), pg.conninfo(database) + "\n")
        kek_file = write_private(os.path.join(xdg.root, "kek"), secrets.token_hex(32) + "\n")
        sockets, configs = [], []
        for i in range(a.replicas):
            sockets.append(os.path.join(xdg.root, f"r{i}", "tokend.sock"))
            configs.append(os.path.join(xdg.root, f"r{i}.conf"))
            with open(configs[i], "w") as f:
                f.write(f"database-url-file = {db_file}\nkek-file = {kek_file}\n"
                        f"trusted-proxy-uid = {os.geteuid()}\nsocket = {sockets[i]}\nuser-rate-limit = 0\n")
        lives = [0] * a.replicas
        refreshes_done = [0.0] * a.replicas  # of the replica's earlier lives
        last_metrics = [0.0] * a.replicas

        ready_s = []  # how long each restart after a kill took to answer

        def start(i):
            t = time.monotonic()
            d = Daemon(tokend, xdg.env, ["--server", "--config", configs[i], "--ca-bundle", up.ca_file,
                                         "--refresh-buffer", f"{a.buffer}s", "--log-level", "info"])
            d.wait_ready(sockets[i], deadline=300)
            replicas[i] = d
            lives[i] += 1
            return time.monotonic() - t

        def rss_mib(i):
            with open(f"/proc/{replicas[i].proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return round(int(line.split()[1]) / 1024, 1)
            return None

        def read_metrics(i):
            try:
                c = Conn(sockets[i])
                status, text = c.request("GET", "/v1/server/metrics")
                c.close()
                if status == 200:
                    last_metrics[i] = metric(text, "tokend_server_refreshes_ok_total")
            except (OSError, ConnectionError, ValueError):
                pass

        up.add_client("soak", "soak-secret", "client_secret_basic")
        up.config(reuse_window=600, access_lifetime=a.lifetime, log_limit=1000)
        start(0)
        t0 = time.monotonic()
        grants = {}  # (user, profile) -> grant id
        control = up.connection()
        put = Conn(sockets[0])
        for u in range(a.users):
            user = f"user{u:05d}@example.com"
            for p in range(a.profiles):
                g = up.request("POST", "/_control/grants",
                               json.dumps({"client_id": "soak", "access_lifetime": a.lifetime}),
                               {"Content-Type": "application/json"}, conn=control).json()
                name = f"p{p}"
                grants[(user, name)] = g["grant_id"]
                age = rng.uniform(0, a.lifetime - a.buffer - 5)  # starting ages spread over a lifetime
                status, text = put.request("PUT", f"/v1/profiles/{name}", [("X-Forwarded-User", user)],
                                           {"kind": "oauth2", "token_url": up.token_url, "client_id": "soak",
                                            "client_secret": "soak-secret", "access_token": g["access_token"],
                                            "refresh_token": g["refresh_token"],
                                            "expires_in": int(a.lifetime - age), "reuse_window": 600})
                assert status in (200, 201), text
        put.close()
        print(f"{len(grants)} grants of {a.users} users added in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        for i in range(1, a.replicas):
            start(i)  # each loads every user with profiles
        up.clear_stats()
        # What each replica refreshed before the measured window (replica 0
        # during the population) is left out.
        for i in range(a.replicas):
            read_metrics(i)
            refreshes_done[i] = -last_metrics[i]

        stop = threading.Event()
        samples = [[] for _ in range(a.replicas)]  # latencies in ms
        counts = {"served": 0, "expired": 0, "failures": 0, "replica_down": 0}
        failure_kinds = {}
        keys = list(grants)

        def sampler(i):
            conn = Conn(sockets[i])
            while not stop.is_set():
                user, name = rng.choice(keys)
                t = time.monotonic()
                try:
                    status, text = conn.request("GET", f"/v1/profiles/{name}/token?min_valid=0",
                                                [("X-Forwarded-User", user)])
                except (OSError, ConnectionError, ValueError):
                    with lock:
                        counts["replica_down"] += 1
                    time.sleep(0.05)  # the replica is being restarted: pace the reconnects
                    continue
                ms = (time.monotonic() - t) * 1000
                now = time.time()
                with lock:
                    if status == 200:
                        counts["served"] += 1
                        samples[i].append(ms)
                        if json.loads(text)["expires_at"] <= now:
                            counts["expired"] += 1
                    else:
                        counts["failures"] += 1
                        code = f"{status}"
                        failure_kinds[code] = failure_kinds.get(code, 0) + 1
                time.sleep(0.01)

        threads = [threading.Thread(target=sampler, args=(i,), daemon=True) for i in range(a.replicas)]
        for t in threads:
            t.start()
        start_t = time.monotonic()
        next_kill = start_t + a.kill_every
        kills = []
        while time.monotonic() - start_t < a.duration:
            for i in range(a.replicas):
                read_metrics(i)
            if a.kill_every > 0 and time.monotonic() >= next_kill:
                victim = rng.randrange(a.replicas)
                read_metrics(victim)
                refreshes_done[victim] += last_metrics[victim]
                last_metrics[victim] = 0.0
                replicas[victim].stop(signal.SIGKILL)
                kills.append(round(time.monotonic() - start_t, 1))
                ready_s.append(start(victim))
                next_kill += a.kill_every
            time.sleep(1.0)  # the metrics' reading pace
        stop.set()
        for t in threads:
            t.join(timeout=60)
        elapsed = time.monotonic() - start_t
        for i in range(a.replicas):
            read_metrics(i)
        rss = [rss_mib(i) for i in range(a.replicas)]
        # With 20,000 grants the fake takes a while to list them.
        stats = up.stats(timeout=600)
        by_grant = stats.get("refreshes_by_grant", {})
        per_grant = [by_grant.get(g, 0) for g in grants.values()]
        grant_ids = set(grants.values())
        listed = [g for g in up.grants(timeout=600) if g.get("grant_id") in grant_ids]
        lost = [g["grant_id"] for g in listed if not g.get("alive", True)]
        # Each grant is refreshed once per cycle: about elapsed / (lifetime - buffer - jitter/2)
        # (a lifetime under twice the buffer refreshes at two thirds of it).
        window = min(30, a.lifetime / 10)
        cycle = (a.lifetime * 2 / 3 if a.lifetime < 2 * a.buffer else a.lifetime - a.buffer) - window / 2
        expected = elapsed / cycle
        result = {
            "users": a.users, "profiles_per_user": a.profiles, "grants": len(grants), "replicas": a.replicas,
            "lifetime_s": a.lifetime, "buffer_s": a.buffer, "duration_s": round(elapsed),
            "kill_every_s": a.kill_every, "kills_at_s": kills,
            "token_requests_served": counts["served"], "expired_tokens_served": counts["expired"],
            "token_request_failures": counts["failures"], "token_request_failures_by_status": failure_kinds,
            "token_requests_to_a_dead_replica": counts["replica_down"],
            "max_refreshes_in_flight_per_grant": max(stats.get("max_concurrent_by_grant", {}).values() or [0]),
            "refreshes_at_provider": sum(per_grant),
            "refreshes_per_replica": [int(refreshes_done[i] + last_metrics[i]) for i in range(a.replicas)],
            "refreshes_per_grant_per_cycle": round(sum(per_grant) / len(per_grant) / expected, 3),
            "refreshes_per_grant_min_max": [min(per_grant), max(per_grant)],
            "grants_lost": len(lost), "reuse_detections": stats.get("reuse_detections"),
            "undelivered_refresh_answers": stats.get("undelivered_responses"),
            "restart_to_ready_s_median_max": [round(percentile(ready_s, 50) or 0, 2),
                                              round(max(ready_s or [0]), 2)],
            "rss_mib_per_replica_at_end": rss,
            "token_latency_ms_per_replica": [
                {"p50": round(percentile(s, 50) or 0, 2), "p99": round(percentile(s, 99) or 0, 2), "n": len(s)}
                for s in samples],
        }
        print(json.dumps(result, indent=2))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(result, f, indent=2)
        ok = counts["expired"] == 0 and not lost and result["max_refreshes_in_flight_per_grant"] <= 1
        return 0 if ok else 1
    finally:
        for d in replicas:
            if d is not None and d.proc.poll() is None:
                d.stop()
        up.stop()
        pg.stop()
        xdg.close()


if __name__ == "__main__":
    sys.exit(main())

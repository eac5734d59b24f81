"""Several replicas: three real `tokend --server` processes on one throwaway
PostgreSQL server (Debian's postgresql-15, started here), against the fake
upstream.

Shows that one replica refreshes a grant at a time (the fake counts the
refreshes of each grant and how many were in flight at once), however many
token requests arrive on every replica; that a replica killed with SIGKILL
in the middle of a refresh loses its claim with its connection and another
replica takes the refresh over from the in-flight marker with the grant
intact; and that a user's events on one replica reach that user's event
stream on another, whose cache follows, also after the replicas' listening
connections were cut. Every wait polls against a deadline."""
import json
import os
import signal
import sys
import threading
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fake_upstream"))

from harness import Daemon, XdgTree, binaries, wait_for  # noqa: E402

TOKEND, _ = binaries()  # before server_mode_test's own call takes the arguments
from server_mode_test import EventStream, PgUpstreamCase, exchange  # noqa: E402

CLIENT_ID = "replica-app"
CLIENT_SECRET = "cs-MARKER-replica-secret"
ALICE = "alice@example.com"
USER = [("X-Forwarded-User", ALICE)]
REPLICAS = 3


class ReplicasTest(PgUpstreamCase):
    SECRETS = (CLIENT_SECRET,)

    def setUp(self):
        self.up.reset()
        self.up.add_client(CLIENT_ID, CLIENT_SECRET, "client_secret_basic")
        self.up.config(reuse_window=600)
        self.xdg = XdgTree()
        self.dir = self.xdg.root
        self.new_database()
        self.sockets = []
        self.configs = []
        for i in range(REPLICAS):
            conf, sock = self.replica_config(i)
            self.sockets.append(sock)
            self.configs.append(conf)
        self.replicas = [None] * REPLICAS
        for i in range(REPLICAS):
            self.start(i)

    def tearDown(self):
        for d in self.replicas:
            if d is None:
                continue
            if d.proc.poll() is None:
                self.assertEqual(d.stop(), 0, d.output())
            self.logs.append(d.output())
        self.xdg.close()

    # -- helpers ----------------------------------------------------------------------

    def start(self, i):
        self.replicas[i] = Daemon(TOKEND, self.xdg.env, ["--server", "--config", self.configs[i],
                                                         "--ca-bundle", self.up.ca_file, "--log-level", "debug"])
        self.replicas[i].wait_ready(self.sockets[i])

    def call(self, i, method, target, body=None):
        return exchange(self.sockets[i], method, target, USER, body)

    def put(self, i, grant, **tokens):
        body = {"kind": "oauth2", "token_url": self.up.token_url, "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET, "api_base": self.up.base_url}
        body.update(tokens)
        r = self.call(i, "PUT", "/v1/profiles/jira", body)
        self.assertEqual(r.status, 201, r.text)
        # Every replica knows the profile (the others from replica i's event).
        for k in range(REPLICAS):
            wait_for(lambda k=k: self.call(k, "GET", "/v1/profiles/jira").status == 200,
                     f"replica {k} to know the profile")
        return grant

    def token(self, i):
        r = self.call(i, "GET", "/v1/profiles/jira/token")
        self.assertEqual(r.status, 200, r.text)
        return r.json()["token"]

    def on_all(self, per_replica, method, target):
        """`per_replica` requests on every replica at once; their answers."""
        barrier = threading.Barrier(per_replica * REPLICAS)
        answers = []
        lock = threading.Lock()

        def one(i):
            barrier.wait()
            r = self.call(i, method, target)
            with lock:
                answers.append((i, r))
        threads = [threading.Thread(target=one, args=(i,)) for i in range(REPLICAS) for _ in range(per_replica)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return answers

    def newest_access_token(self, grant_id):
        live = [t for t in self.up.tokens() if t.get("grant_id") == grant_id and t.get("kind") == "access"
                and t.get("valid")]
        return max(live, key=lambda t: t.get("issued_at", 0))["token"] if live else None

    def works_at_provider(self, token):
        return self.up.request("GET", "/me", headers={"Authorization": "Bearer " + token}).status == 200

    def advisory_locks(self):
        return int(self.pg.psql(self.database, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"))

    # -- one refresh at a time ----------------------------------------------------------

    def test_concurrent_requests_on_every_replica_cause_one_refresh(self):
        g = self.up.add_grant(CLIENT_ID, access_lifetime=3600)
        gid = g["grant_id"]
        self.up.config(token_latency=1.5)
        # A refresh token alone: every replica wants to refresh it at once,
        # and every token request needs that refresh.
        self.put(0, g, refresh_token=g["refresh_token"])
        answers = self.on_all(6, "GET", "/v1/profiles/jira/token")
        for i, r in answers:
            self.assertEqual(r.status, 200, f"replica {i}: {r.text}")
        tokens = {r.json()["token"] for _, r in answers}
        self.assertEqual(len(tokens), 1, "every replica served the one refreshed token")
        stats = self.up.stats()
        self.assertEqual(stats["refreshes_by_grant"][gid], 1)
        self.assertEqual(stats["max_concurrent_by_grant"][gid], 1)
        self.assertTrue(self.works_at_provider(tokens.pop()))

        # Forced refreshes on every replica at once: still one.
        self.up.clear_stats()
        self.up.config(token_latency=1.0)
        answers = self.on_all(4, "POST", "/v1/profiles/jira/refresh")
        for i, r in answers:
            self.assertEqual(r.status, 200, f"replica {i}: {r.text}")
        stats = self.up.stats()
        self.assertEqual(stats["refreshes_by_grant"][gid], 1)
        self.assertEqual(stats["max_concurrent_by_grant"][gid], 1)
        self.up.config(token_latency=0)
        newest = self.newest_access_token(gid)
        for i in range(REPLICAS):
            self.assertEqual(self.token(i), newest, f"replica {i} serves the newest token")
        # Who refreshed and who waited shows in each replica's metrics.
        held = 0
        for i in range(REPLICAS):
            r = exchange(self.sockets[i], "GET", "/v1/server/metrics")
            self.assertEqual(r.status, 200, r.text)
            held += int(next(line.split()[1] for line in r.text.splitlines()
                             if line.startswith("tokend_server_refresh_claims_held_elsewhere_total ")))
        self.assertGreaterEqual(held, 2, "the replicas that did not refresh found the claim held")

    # -- takeover after kill -9 ---------------------------------------------------------

    def test_replica_killed_mid_refresh_is_taken_over_with_the_grant_intact(self):
        g = self.up.add_grant(CLIENT_ID, access_lifetime=3600)
        gid = g["grant_id"]
        self.put(0, g, access_token=g["access_token"], refresh_token=g["refresh_token"], expires_in=3600)
        # Replica 0's refresh reaches the provider, which holds the answer.
        self.up.fault("slow", delay=2)
        def doomed_refresh():
            try:
                self.call(0, "POST", "/v1/profiles/jira/refresh")
            except (OSError, ValueError):
                pass  # replica 0 dies before it answers
        doomed = threading.Thread(target=doomed_refresh, daemon=True)
        doomed.start()
        wait_for(lambda: self.up.stats()["in_flight_by_grant"].get(gid) == 1, "replica 0's refresh at the provider")
        # The claim and the in-flight marker are in the database.
        self.assertEqual(self.advisory_locks(), 1)
        marker = self.pg.psql(self.database, "SELECT refresh_inflight_since IS NOT NULL, state FROM credentials")
        self.assertEqual(marker.strip(), "t|refreshing")

        self.replicas[0].stop(signal.SIGKILL)
        self.logs.append(self.replicas[0].output())
        self.replicas[0] = None
        # The claim died with replica 0's connection; the marker stays.
        wait_for(lambda: self.advisory_locks() == 0, "the dead replica's claim to go")
        # The provider rotated the refresh token, and nobody got the answer.
        wait_for(lambda: self.up.stats()["refreshes_by_grant"].get(gid) == 1, "the provider to rotate")
        self.assertEqual(self.up.stats()["undelivered_responses"], 1)
        self.assertTrue(self.up.grant(gid)["alive"])

        # Replica 1 takes it over from the marker: the refresh token it reads
        # is the one replica 0 sent, within the provider's reuse window.
        r = self.call(1, "POST", "/v1/profiles/jira/refresh")
        self.assertEqual(r.status, 200, r.text)
        self.replicas[1].wait_for_line("taking over a refresh left in flight")
        stats = self.up.stats()
        self.assertEqual(stats["refreshes_by_grant"][gid], 2)
        self.assertEqual(stats["max_concurrent_by_grant"][gid], 1)
        self.assertTrue(self.up.grant(gid)["alive"])
        self.assertEqual(self.pg.psql(self.database, "SELECT refresh_inflight_since IS NULL, state FROM credentials")
                         .strip(), "t|valid")
        token = self.token(1)
        self.assertEqual(token, self.newest_access_token(gid))
        self.assertTrue(self.works_at_provider(token))
        # Replica 2 follows (replica 1's event), and the grant keeps
        # refreshing from there.
        wait_for(lambda: self.token(2) == token, "replica 2 to serve the new token")
        r = self.call(2, "POST", "/v1/profiles/jira/refresh")
        self.assertEqual(r.status, 200, r.text)
        self.assertEqual(self.up.stats()["refreshes_by_grant"][gid], 3)
        self.assertTrue(self.up.grant(gid)["alive"])
        self.assertTrue(self.works_at_provider(self.token(2)))

    # -- events across replicas ---------------------------------------------------------

    def test_events_on_one_replica_reach_the_users_stream_on_another(self):
        stream = EventStream(self.sockets[1], USER)
        try:
            stream.wait_for("tokend event stream", "the stream on replica 1 to open")
            g = self.up.add_grant(CLIENT_ID, access_lifetime=3600)
            self.put(0, g, access_token=g["access_token"], refresh_token=g["refresh_token"], expires_in=3600)
            stream.wait_for("event: profile_added", "replica 0's profile_added on replica 1")
            r = self.call(0, "POST", "/v1/profiles/jira/refresh")
            self.assertEqual(r.status, 200, r.text)
            seen = stream.wait_for("event: refreshed", "replica 0's refreshed on replica 1")
            frame = seen[seen.index("event: refreshed"):]
            data = json.loads(frame.split("data: ", 1)[1].split("\n", 1)[0])
            self.assertEqual(data["profile"], "jira")
            # Replica 1's cache followed: it serves replica 0's new token
            # without refreshing itself.
            self.assertEqual(self.token(1), self.token(0))
            self.assertEqual(self.up.stats()["refreshes_by_grant"][g["grant_id"]], 1)
            r = self.call(0, "DELETE", "/v1/profiles/jira")
            self.assertEqual(r.status, 204, r.text)
            stream.wait_for("event: profile_removed", "replica 0's profile_removed on replica 1")
            self.assertEqual(self.call(1, "GET", "/v1/profiles/jira").status, 404)
            # Another user's stream on replica 1 saw none of it.
        finally:
            stream.close()
        # Every replica's listening connection is cut: each reconnects, and
        # events cross again.
        killed = self.pg.psql(self.database, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                             "WHERE application_name = 'tokend-listen'")
        self.assertEqual(int(killed), REPLICAS)

        def reconnected(i):
            r = exchange(self.sockets[i], "GET", "/v1/server/metrics")
            return ("tokend_server_replica_channel_reconnects_total 1\n" in r.text
                    and "tokend_server_replica_channel_up 1\n" in r.text)
        for i in range(REPLICAS):
            wait_for(lambda i=i: reconnected(i), f"replica {i} to listen again")
        bob = EventStream(self.sockets[2], [("X-Forwarded-User", "bob@example.org")])
        try:
            bob.wait_for("tokend event stream", "bob's stream to open")
            g = self.up.add_grant(CLIENT_ID, access_lifetime=3600)
            self.put(0, g, access_token=g["access_token"], refresh_token=g["refresh_token"], expires_in=3600)
            r = exchange(self.sockets[0], "PUT", "/v1/profiles/own", [("X-Forwarded-User", "bob@example.org")],
                         {"kind": "pat", "token": "pat-MARKER-bob", "site": self.up.dc_url})
            self.assertEqual(r.status, 201, r.text)
            seen = bob.wait_for('"profile":"own"', "bob's own event from replica 0")
            self.assertNotIn("jira", seen)
        finally:
            bob.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)

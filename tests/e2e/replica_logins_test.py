"""Login flows across replicas: three real `tokend --server` processes on one
throwaway PostgreSQL server (Debian's postgresql-15, started here), against
the fake upstream.

A login started on one replica is completed on another: the connect page's
callback (the fixed https redirect URI) or `POST .../login/complete` reaches
a replica that did not start the flow; that replica claims the flow from the
database (login_flows, keyed by the SHA-256 of the state), redeems the code
once with the starting replica's PKCE verifier, and the starting replica's
status and event stream tell the outcome. A replay of the redirect to any
replica redeems nothing; another user's request with the state completes
nothing and leaves the flow pending. Every wait polls against a deadline."""
import os
import re
import sys
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fake_upstream"))

from client import redirect_params  # noqa: E402
from harness import Daemon, XdgTree, binaries, wait_for  # noqa: E402

TOKEND, _ = binaries()  # before server_mode_test's own call takes the arguments
from server_mode_test import EventStream, PgUpstreamCase, exchange  # noqa: E402

CLIENT_ID = "replica-login-app"
CLIENT_SECRET = "cs-MARKER-replica-login-secret"
ALICE = "alice@example.com"
BOB = "bob@example.org"
REPLICAS = 3
PUBLIC = "https://tokend.example.test"
REDIRECT = PUBLIC + "/connect/callback"


class ReplicaLoginsTest(PgUpstreamCase):
    SECRETS = (CLIENT_SECRET,)

    def setUp(self):
        self.up.reset()
        self.up.add_client(CLIENT_ID, CLIENT_SECRET, "client_secret_basic")
        self.xdg = XdgTree()
        self.dir = self.xdg.root
        self.new_database()
        self.sockets = []
        self.replicas = []
        for i in range(REPLICAS):
            conf, sock = self.replica_config(i, f"public-url = {PUBLIC}\n")
            self.sockets.append(sock)
            d = Daemon(TOKEND, self.xdg.env, ["--server", "--config", conf, "--ca-bundle", self.up.ca_file,
                                              "--log-level", "debug"])
            self.replicas.append(d)
            d.wait_ready(sock)
        self.states = []

    def tearDown(self):
        for d in self.replicas:
            if d.proc.poll() is None:
                self.assertEqual(d.stop(), 0, d.output())
            out = d.output()
            self.logs.append(out)
            for state in self.states:
                self.assertNotIn(state, out, "a login's state appears in a replica's log")
        self.xdg.close()

    # -- helpers ----------------------------------------------------------------------

    def call(self, i, method, target, body=None, user=ALICE):
        return exchange(self.sockets[i], method, target, [("X-Forwarded-User", user)], body)

    def put_profile(self, i, user=ALICE):
        r = self.call(i, "PUT", "/v1/profiles/jira",
                      {"kind": "oauth2", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                       "authorize_url": self.up.authorize_endpoint, "token_url": self.up.token_url,
                       "redirect_uri": REDIRECT, "scopes": "openid offline_access",
                       "api_base": self.up.base_url}, user=user)
        self.assertEqual(r.status, 201, r.text)
        for k in range(REPLICAS):
            wait_for(lambda k=k: self.call(k, "GET", "/v1/profiles/jira", user=user).status == 200,
                     f"replica {k} to know {user}'s profile")

    def start_login(self, i):
        """Starts Alice's login on replica i and consents at the fake: the redirect's query."""
        r = self.call(i, "POST", "/v1/profiles/jira/login", {"listen": False})
        self.assertEqual(r.status, 200, r.text)
        flow = r.json()
        self.assertEqual(flow["state"], "pending")
        self.assertEqual(flow["redirect_uri"], REDIRECT)
        split = urllib.parse.urlsplit(flow["authorize_url"])
        consent = self.up.request("GET", split.path + "?" + split.query)
        self.assertEqual(consent.status, 302)
        location = consent.headers["location"]
        self.assertTrue(location.startswith(REDIRECT + "?"), location)
        query = urllib.parse.urlsplit(location).query
        self.states.append(redirect_params(location)["state"])
        return flow, query

    def redemptions(self):
        return self.up.stats().get("token_requests_by_grant_type", {}).get("authorization_code", 0)

    def kept_flows(self):
        return int(self.pg.psql(self.database, "SELECT count(*) FROM login_flows"))

    def login_state(self, i):
        r = self.call(i, "GET", "/v1/profiles/jira/login")
        self.assertEqual(r.status, 200, r.text)
        return r.json()

    @staticmethod
    def page_reason(text):
        m = re.search(r'data-reason="([^"]*)"', text)
        return m.group(1) if m else None

    # -- tests ------------------------------------------------------------------------

    def test_connect_callback_on_another_replica_completes_the_flow_once(self):
        self.put_profile(0)
        self.put_profile(1, user=BOB)  # bob has a profile of the same name
        stream = EventStream(self.sockets[0], [("X-Forwarded-User", ALICE)])
        try:
            stream.wait_for("tokend event stream", "alice's stream on replica 0 to open")
            flow, query = self.start_login(0)
            state = redirect_params("?" + query)["state"]
            self.assertEqual(self.kept_flows(), 1)
            # Neither the state nor anything derived but its digest is stored.
            row = self.pg.psql(self.database, "SELECT row_to_json(t)::text FROM login_flows t")
            self.assertNotIn(state, row)
            self.assertIn(REDIRECT, row)

            # Bob, on replica 1, with alice's redirect: nothing is completed,
            # and alice's flow stays pending and kept.
            r = self.call(1, "GET", "/connect/callback?" + query, user=BOB)
            self.assertEqual(r.status, 400, r.text)
            self.assertEqual(self.page_reason(r.text), "not_pending", r.text)
            self.assertEqual(self.redemptions(), 0)
            self.assertEqual(self.kept_flows(), 1)
            self.assertEqual(self.login_state(0)["state"], "pending")
            r = self.call(1, "POST", "/v1/profiles/jira/login/complete", {"redirect_url": REDIRECT + "?" + query},
                          user=BOB)
            self.assertEqual((r.status, r.code), (409, "conflict"), r.text)
            self.assertEqual(self.kept_flows(), 1)

            # Alice's browser, sent to replica 1 by the load balancer.
            r = self.call(1, "GET", "/connect/callback?" + query)
            self.assertEqual(r.status, 200, r.text)
            self.assertIn('data-ok="true"', r.text)
            self.assertEqual(self.redemptions(), 1)
            self.assertEqual(self.kept_flows(), 0)
            self.assertEqual(self.login_state(1)["state"], "succeeded")

            # The starting replica's status and event stream tell the outcome.
            wait_for(lambda: self.login_state(0)["state"] == "succeeded", "replica 0's flow to succeed")
            seen = stream.wait_for("event: login_succeeded", "login_succeeded on replica 0's stream")
            frame = seen[seen.index("event: login_succeeded"):]
            self.assertIn('"profile":"jira"', frame.split("\n\n", 1)[0])
            self.assertEqual(seen.count("event: login_succeeded"), 1)
            # Every replica serves the new token, which works at the provider.
            tokens = {self.call(i, "GET", "/v1/profiles/jira/token").json()["token"] for i in range(REPLICAS)}
            self.assertEqual(len(tokens), 1)
            token = tokens.pop()
            me = self.up.request("GET", "/me", headers={"Authorization": "Bearer " + token})
            self.assertEqual(me.status, 200, me.body[:200])

            # The same redirect again, to the replica that started the flow
            # and to a third: nothing to complete, nothing redeemed.
            for i in (0, 2, 1):
                r = self.call(i, "GET", "/connect/callback?" + query)
                self.assertEqual(r.status, 400, f"replica {i}: {r.text}")
                self.assertEqual(self.page_reason(r.text), "not_pending", r.text)
            self.assertEqual(self.redemptions(), 1)
            self.assertEqual(self.login_state(0)["state"], "succeeded")
            # Bob's flows and profile were never touched.
            r = self.call(1, "GET", "/v1/profiles/jira/login", user=BOB)
            self.assertEqual(r.json()["state"], "none", r.text)
        finally:
            stream.close()

    def test_pasted_redirect_on_another_replica_and_a_replay(self):
        self.put_profile(2)
        flow, query = self.start_login(2)
        r = self.call(0, "POST", "/v1/profiles/jira/login/complete", {"redirect_url": REDIRECT + "?" + query})
        self.assertEqual(r.status, 200, r.text)
        self.assertEqual(r.json()["state"], "succeeded", r.text)
        self.assertEqual(self.redemptions(), 1)
        wait_for(lambda: self.login_state(2)["state"] == "succeeded", "replica 2's flow to succeed")
        for i in (1, 2):
            r = self.call(i, "POST", "/v1/profiles/jira/login/complete", {"redirect_url": REDIRECT + "?" + query})
            self.assertEqual((r.status, r.code), (409, "conflict"), f"replica {i}: {r.text}")
        self.assertEqual(self.redemptions(), 1)

    def test_a_newer_start_or_a_cancel_elsewhere_ends_the_flow(self):
        self.put_profile(0)
        _, old = self.start_login(0)
        _, new = self.start_login(1)
        self.assertEqual(self.kept_flows(), 1)
        wait_for(lambda: self.login_state(0)["state"] == "cancelled", "replica 0's flow to be replaced")
        self.assertEqual(self.login_state(0)["error"]["reason"], "replaced")
        # The replaced flow's redirect completes nothing, anywhere.
        r = self.call(2, "GET", "/connect/callback?" + old)
        self.assertEqual((r.status, self.page_reason(r.text)), (400, "not_pending"), r.text)
        self.assertEqual(self.redemptions(), 0)
        # A cancel on replica 2 ends replica 1's flow.
        r = self.call(2, "DELETE", "/v1/profiles/jira/login")
        self.assertEqual(r.status, 204, r.text)
        self.assertEqual(self.kept_flows(), 0)
        wait_for(lambda: self.login_state(1)["state"] == "cancelled", "replica 1's flow to be cancelled")
        r = self.call(0, "GET", "/connect/callback?" + new)
        self.assertEqual((r.status, self.page_reason(r.text)), (400, "not_pending"), r.text)
        self.assertEqual(self.redemptions(), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)

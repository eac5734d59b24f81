"""The refresh engine end to end: real tokend and tokenctl against the TLS
fake provider (tests/fake_upstream). Every fault mode leads to the state the
design names, a valid token keeps being served, nothing stored changes on a
bad answer, and recovery happens on its own."""
import json
import os
import sys
import threading
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fake_upstream"))

from client import FakeUpstream  # noqa: E402
from harness import Daemon, XdgTree, binaries, secret_file, run_ctl, unix_request, wait_for  # noqa: E402

TOKEND, TOKENCTL = binaries()
CLIENT_ID = "tokend-test"
CLIENT_SECRET = "cs-MARKER-client-secret"
ALL_LOGS = []


class RefreshTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.up = FakeUpstream(quiet=True)
        cls.up.add_client(CLIENT_ID, CLIENT_SECRET, "client_secret_basic")

    @classmethod
    def tearDownClass(cls):
        # No token the fake issued may appear in any tokend log or database.
        issued = [t["token"] for t in cls.up.tokens() if t.get("token")]
        cls.up.stop()
        assert issued, "the fake issued no tokens?"
        for text in ALL_LOGS:
            for t in issued:
                assert t not in text, "an issued token appears in a tokend log"
            assert CLIENT_SECRET not in text

    def setUp(self):
        self.up.clear_faults()
        self.up.config(reuse_window=600, access_lifetime=3600, token_latency=0)
        self.xdg = XdgTree()
        self.env = self.xdg.env
        self.start()

    def start(self):
        self.daemon = Daemon(TOKEND, self.env, ["--ca-bundle", self.up.ca_file, "--http-timeout", "1s",
                                                "--log-level", "debug"])
        self.daemon.wait_ready(self.xdg.socket)

    def tearDown(self):
        if self.daemon.proc.poll() is None:
            self.assertEqual(self.daemon.stop(), 0, self.daemon.output())
        ALL_LOGS.append(self.daemon.output())
        data_dir = os.path.dirname(self.xdg.db)
        issued = [t["token"] for t in self.up.tokens() if t.get("token")]
        for f in os.listdir(data_dir):
            with open(os.path.join(data_dir, f), "rb") as fh:
                blob = fh.read()
            for t in issued:
                self.assertNotIn(t.encode(), blob, f"issued token in {f}")
        self.xdg.close()

    def ctl(self, *args, input=None):
        return run_ctl(TOKENCTL, self.env, *args, input=input, timeout=60)

    def secret_file(self, name, content):
        return secret_file(self.xdg.root, name, content)

    def add_profile(self, name="p", lifetime=3600, reuse_window=600, grant_lifetime=3600):
        """`lifetime`: what tokend is told the supplied token has left;
        `grant_lifetime`: what the provider's refreshed tokens live."""
        g = self.up.add_grant(CLIENT_ID, access_lifetime=grant_lifetime)
        r = self.ctl("add", name, "--kind", "oauth2", "--token-url", self.up.token_url, "--client-id", CLIENT_ID,
                     "--client-secret-file", self.secret_file("cs", CLIENT_SECRET),
                     "--token-file", self.secret_file("at", g["access_token"]),
                     "--refresh-token-file", self.secret_file("rt", g["refresh_token"]),
                     "--expires-in", str(lifetime), "--reuse-window", str(reuse_window))
        self.assertEqual(r.returncode, 0, r.stderr)
        return g

    def status(self, name="p"):
        r = self.ctl("status", name, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)

    def token(self, name="p", min_valid=0):
        r = self.ctl("token", name, "--min-valid", str(min_valid))
        return r.returncode, r.stdout.strip(), r.stderr

    def test_renew_rotates_and_prints_the_new_expiry(self):
        g = self.add_profile()
        before = self.token()[1]
        r = self.ctl("renew", "p")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("p: renewed, valid until", r.stdout)
        after = self.token()[1]
        self.assertNotEqual(before, after)
        grant = self.up.grant(g["grant_id"])
        self.assertEqual(grant["rotations"], 1)
        st = self.status()
        self.assertEqual(st["state"], "valid")
        self.assertIsNotNone(st["next_refresh_at"])
        table = self.ctl("status").stdout
        self.assertIn("in ", table)  # next refresh shown
        # The request used client_secret_basic and the form body.
        entry = [e for e in self.up.log(settle=True) if e.get("path") == "/oauth/token"][-1]
        self.assertTrue(any(k.lower() == "authorization" for k in entry["headers"]))

    def test_fault_matrix(self):
        transient = ["rate_limited", "server_error_500", "bad_gateway_502", "unavailable_503", "truncated_json",
                     "missing_access_token", "expires_in_negative", "expires_in_garbage", "html_200", "slow",
                     "drop", "reset_mid_body", "drop_after_rotate", "huge_body"]
        reauth = ["invalid_grant_standard", "invalid_grant_atlassian", "invalid_client"]
        accepted = ["expires_in_string", "expires_in_absent"]
        for mode in transient + reauth + accepted:
            with self.subTest(mode=mode):
                name = "f-" + mode.replace("_", "-")
                self.add_profile(name)
                before = self.token(name)[1]
                kw = {"retry_after": 1} if mode == "rate_limited" else {"delay": 3} if mode == "slow" else {}
                self.up.fault(mode, count=1, **kw)
                r = self.ctl("renew", name)
                st = self.status(name)
                if mode in accepted:
                    self.assertEqual(r.returncode, 0, r.stderr)
                    self.assertEqual(st["state"], "valid")
                    continue
                if mode in reauth:
                    self.assertEqual(r.returncode, 4, r.stderr)
                    self.assertEqual(st["state"], "reauth_required")
                    code, _, err = self.token(name)
                    self.assertEqual(code, 4)
                    self.assertIn(f"tokenctl login {name}", err)
                    if mode == "invalid_client":
                        self.assertIn("configuration", st["last_error"])
                    continue
                if mode in ("drop", "drop_after_rotate"):
                    # libcurl retries once on a fresh connection when a reused
                    # one dies before any answer; with the reuse window that
                    # retry (same refresh token) succeeds. Both are fine.
                    self.assertIn(r.returncode, (0, 1), r.stderr)
                    wait_for(lambda: self.status(name)["state"] == "valid" and self.token(name)[1] != before,
                             f"{mode}: recovered", deadline=30)
                    continue
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertIn(st["state"], ("backoff", "refreshing"), st)
                if mode == "huge_body":
                    self.assertIn("larger than the limit", st["last_error"])
                self.assertTrue(st["last_error"] or st["state"] == "refreshing")
                # The still-valid token keeps being served, unchanged.
                code, tok, err = self.token(name, 60)
                self.assertEqual((code, tok), (0, before), err)
                # Recovery on its own once the fault is gone (backoff >= 1 s).
                wait_for(lambda: self.status(name)["state"] == "valid" and self.token(name)[1] != before,
                         f"{mode}: automatic recovery", deadline=30)
        self.assertNotIn("AddressSanitizer", self.daemon.output())

    def test_upstream_connections_are_reused(self):
        self.add_profile()
        self.up.clear_log()
        for _ in range(5):
            self.assertEqual(self.ctl("renew", "p").returncode, 0)
        conns = {e["connection"] for e in self.up.log(settle=True) if e.get("path") == "/oauth/token"}
        self.assertEqual(len(conns), 1, f"5 refreshes over {len(conns)} connections")

    def test_500_concurrent_requests_make_one_upstream_refresh(self):
        # Already expired (min_valid is capped at what a fresh token gives, so
        # a token that is still valid would serve them); refreshed ones live 3600.
        self.up.config(token_latency=0.5)
        self.up.clear_stats()
        g = self.add_profile(lifetime=0)
        results = []
        lock = threading.Lock()

        def ask():
            status, text = unix_request(self.xdg.socket, "GET", "/v1/profiles/p/token?min_valid=120", deadline=60)
            with lock:
                results.append((status, json.loads(text).get("token")))

        threads = [threading.Thread(target=ask) for _ in range(500)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        self.assertEqual(len(results), 500)
        self.assertEqual({s for s, _ in results}, {200})
        tokens = {t for _, t in results}
        self.assertEqual(len(tokens), 1, "everyone gets the same new token")
        self.assertNotEqual(tokens.pop(), g["access_token"])
        stats = self.up.stats()
        self.assertEqual(stats["refreshes_by_grant"][g["grant_id"]], 1)
        self.assertEqual(stats["max_concurrent_by_grant"][g["grant_id"]], 1)

    def test_sinks_follow_every_refresh(self):
        env_file = os.path.join(self.xdg.root, "project.env")
        with open(env_file, "w") as f:
            f.write("# written by the token manager script\nJIRA_URL=https://example.atlassian.net\n"
                    "JIRA_OAUTH_ACCESS_TOKEN=stale\nOTHER='kept as is'\n")
        os.chmod(env_file, 0o600)
        token_file = os.path.join(self.xdg.root, "token")
        g = self.up.add_grant(CLIENT_ID, access_lifetime=3600)
        r = self.ctl("add", "s", "--kind", "oauth2", "--token-url", self.up.token_url, "--client-id", CLIENT_ID,
                     "--client-secret-file", self.secret_file("cs", CLIENT_SECRET),
                     "--token-file", self.secret_file("at", g["access_token"]),
                     "--refresh-token-file", self.secret_file("rt", g["refresh_token"]), "--expires-in", "3600",
                     "--sink-file", token_file, "--sink-dotenv", env_file + "=JIRA_OAUTH_ACCESS_TOKEN")
        self.assertEqual(r.returncode, 0, r.stderr)
        for _ in range(2):
            self.assertEqual(self.ctl("renew", "s").returncode, 0)
            current = self.token("s")[1]
            with open(token_file) as f:
                self.assertEqual(f.read(), current + "\n")
            self.assertEqual(os.stat(token_file).st_mode & 0o777, 0o600)
            with open(env_file) as f:
                self.assertEqual(f.read(), "# written by the token manager script\nJIRA_URL=https://example.atlassian.net\n"
                                           f"JIRA_OAUTH_ACCESS_TOKEN={current}\nOTHER='kept as is'\n")

    def test_no_refresh_token_rotated_away_survives_a_restart(self):
        g = self.add_profile()
        self.ctl("renew", "p")
        self.assertEqual(self.daemon.stop(), 0)
        ALL_LOGS.append(self.daemon.output())
        self.start()
        r = self.ctl("renew", "p")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.up.grant(g["grant_id"])["rotations"], 2)
        self.assertTrue(self.up.grant(g["grant_id"])["alive"])


if __name__ == "__main__":
    unittest.main(verbosity=2)

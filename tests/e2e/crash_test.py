"""Crash safety: tokend is killed with SIGKILL at
random instants while short-lived tokens are refreshed continuously, and
restarted after each kill. With the provider's 600 s reuse window (Atlassian)
no round may lose the grant; with a strict window, the losses are counted and
their reason reported.

TOKEND_CRASH_ROUNDS overrides the number of rounds (default 200)."""
import json
import os
import random
import signal
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fake_upstream"))

from client import FakeUpstream  # noqa: E402
from harness import Daemon, XdgTree, binaries, secret_file, run_ctl, wait_for  # noqa: E402

TOKEND, TOKENCTL = binaries()
ROUNDS = int(os.environ.get("TOKEND_CRASH_ROUNDS", "200"))
CLIENT_ID = "crash-test"
CLIENT_SECRET = "cs-crash"


class CrashTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.up = FakeUpstream(quiet=True)
        cls.up.add_client(CLIENT_ID, CLIENT_SECRET, "client_secret_post")

    @classmethod
    def tearDownClass(cls):
        cls.up.stop()

    def setUp(self):
        self.xdg = XdgTree()
        self.env = self.xdg.env

    def tearDown(self):
        self.xdg.close()

    def daemon(self):
        d = Daemon(TOKEND, self.env, ["--ca-bundle", self.up.ca_file, "--refresh-buffer", "1s",
                                      "--http-timeout", "5s"])
        d.wait_ready(self.xdg.socket)
        return d

    def secret_file(self, name, content):
        return secret_file(self.xdg.root, name, content)

    def seed_profile(self, reuse_window):
        g = self.up.add_grant(CLIENT_ID, access_lifetime=1)
        r = run_ctl(TOKENCTL, self.env, "add", "p", "--kind", "oauth2", "--token-url", self.up.token_url,
                    "--client-id", CLIENT_ID, "--client-secret-file", self.secret_file("cs", CLIENT_SECRET),
                    "--token-endpoint-auth", "client_secret_post",
                    "--token-file", self.secret_file("at", g["access_token"]),
                    "--refresh-token-file", self.secret_file("rt", g["refresh_token"]),
                    "--expires-in", "1", "--reuse-window", str(reuse_window))
        self.assertEqual(r.returncode, 0, r.stderr)
        return g["grant_id"]

    def rounds(self, reuse_window, rounds, seed):
        self.up.config(reuse_window=reuse_window, token_latency=0.05, access_lifetime=1)
        rng = random.Random(seed)
        d = self.daemon()
        grant = self.seed_profile(reuse_window)
        d.stop(signal.SIGKILL)
        lost = []
        for i in range(rounds):
            d = self.daemon()
            time.sleep(rng.uniform(0.0, 1.5))  # the random kill instant: input, not a wait
            d.stop(signal.SIGKILL)
            g = self.up.grant(grant)
            if not g["alive"]:
                lost.append((i, g.get("revoked_reason")))
                d = self.daemon()
                grant = self.seed_profile(reuse_window)
                d.stop(signal.SIGKILL)
        return grant, lost

    def test_600s_reuse_window_never_loses_the_grant(self):
        grant, lost = self.rounds(600, ROUNDS, seed=600)
        self.assertEqual(lost, [], f"rounds that lost the grant: {lost}")
        stats = self.up.stats()
        refreshes = stats["refreshes_by_grant"].get(grant, 0)
        self.assertGreater(refreshes, ROUNDS // 4, "the rounds did refresh")
        d = self.daemon()
        try:
            r = run_ctl(TOKENCTL, self.env, "renew", "p")
            self.assertEqual(r.returncode, 0, r.stderr)
            st = json.loads(run_ctl(TOKENCTL, self.env, "status", "p", "--json").stdout)
            self.assertEqual(st["state"], "valid")
        finally:
            self.assertEqual(d.stop(), 0)
        print(f"\n600 s window: {ROUNDS} kill -9 rounds, {refreshes} refreshes, 0 grants lost", file=sys.stderr)

    def test_strict_window_losses_are_reuse_detections(self):
        rounds = max(20, ROUNDS // 4)
        _, lost = self.rounds(0, rounds, seed=0)
        for _, reason in lost:
            self.assertIn("reuse", (reason or "").lower())
        print(f"\nstrict window: {len(lost)} of {rounds} kill -9 rounds lost the grant "
              f"(reasons: {sorted(set(r for _, r in lost))})", file=sys.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)

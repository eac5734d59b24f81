"""tokend starts on the embedded defaults, generates its key, and stops cleanly."""
import os
import stat
import sys
import unittest

from harness import EXIT_REFUSED, EXIT_USAGE, Daemon, XdgTree, assert_refused, binaries

TOKEND, TOKENCTL = binaries()


class LifecycleTest(unittest.TestCase):
    def setUp(self):
        self.xdg = XdgTree()

    def tearDown(self):
        self.xdg.close()

    def test_first_start_generates_key_and_private_files_then_sigterm_exits_0(self):
        d = Daemon(TOKEND, self.xdg.env)
        d.wait_for_line(d.READY_LINE)
        st = os.stat(self.xdg.key_file)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        self.assertEqual(st.st_size, 32)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.xdg.key_file)).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.xdg.db)).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(self.xdg.db).st_mode), 0o600)
        self.assertEqual(d.stop(), 0, d.output())
        self.assertIn("tokend stopped", d.output())

        with open(self.xdg.key_file, "rb") as f:
            key = f.read()
        d = Daemon(TOKEND, self.xdg.env)
        d.wait_for_line(d.READY_LINE)
        self.assertEqual(d.stop(), 0, d.output())
        with open(self.xdg.key_file, "rb") as f:
            self.assertEqual(f.read(), key, "the key must not be regenerated")

    def test_sigint_also_exits_0(self):
        import signal
        d = Daemon(TOKEND, self.xdg.env)
        d.wait_for_line(d.READY_LINE)
        self.assertEqual(d.stop(signal.SIGINT), 0, d.output())

    def test_wrong_key_is_refused_naming_database_and_key_source(self):
        d = Daemon(TOKEND, self.xdg.env)
        d.wait_for_line(d.READY_LINE)
        self.assertEqual(d.stop(), 0)
        with open(self.xdg.db, "rb") as f:
            before = f.read()
        env = dict(self.xdg.env, TOKEND_KEY="ab" * 32)
        d = Daemon(TOKEND, env)
        out = assert_refused(self, d, EXIT_REFUSED, self.xdg.db, "TOKEND_KEY")
        self.assertNotIn("ab" * 32, out)
        with open(self.xdg.db, "rb") as f:
            self.assertEqual(f.read(), before)

    def test_loose_key_file_is_refused_with_the_fix(self):
        d = Daemon(TOKEND, self.xdg.env)
        d.wait_for_line(d.READY_LINE)
        self.assertEqual(d.stop(), 0)
        os.chmod(self.xdg.key_file, 0o644)
        d = Daemon(TOKEND, self.xdg.env)
        assert_refused(self, d, EXIT_REFUSED, f"chmod 600 {self.xdg.key_file}")

    def test_bad_flag_is_usage_error(self):
        d = Daemon(TOKEND, self.xdg.env, ["--no-such-flag"])
        assert_refused(self, d, EXIT_USAGE, "no-such-flag")

    def test_bad_config_file_is_refused_naming_file_and_setting(self):
        conf = os.path.join(self.xdg.env["XDG_CONFIG_HOME"], "tokend", "tokend.conf")
        os.makedirs(os.path.dirname(conf), exist_ok=True)
        with open(conf, "w") as f:
            f.write("max-connections = lots\n")
        d = Daemon(TOKEND, self.xdg.env)
        assert_refused(self, d, EXIT_USAGE, "max-connections", "lots")
        self.assertFalse(os.path.exists(self.xdg.db), "nothing created for a refused start")
        d = Daemon(TOKEND, self.xdg.env, ["--config", conf + ".missing"])
        assert_refused(self, d, EXIT_USAGE, conf + ".missing", "does not exist")


if __name__ == "__main__":
    unittest.main(verbosity=2)

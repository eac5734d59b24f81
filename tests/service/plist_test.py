"""launchd/dev.tokend.tokend.plist: once its placeholders are filled in (by
hand here, and by scripts/install-service.sh the way it installs it), it is a
valid property list with what launchd needs to run tokend as a LaunchAgent.

    python3 tests/service/plist_test.py

Runs on Linux too: the install script renders the macOS files with
--platform macos --no-enable, which touches no service manager.
"""
import os
import plistlib
import re
import shutil
import subprocess
import unittest

from service_support import (INSTALL_SCRIPT, PLIST_TEMPLATE, TempDir, main,
                             make_executable, mode_of)

LABEL = "dev.tokend.tokend"
PLACEHOLDER = re.compile(r"@[A-Z_]+@")


def fill(template_text, values):
    for name, value in values.items():
        template_text = template_text.replace(f"@{name}@", value)
    return template_text


class PlistChecks:
    """The keys launchd needs; home is the user's home the paths must use."""

    def check_agent(self, agent, home, bindir):
        self.assertEqual(agent["Label"], LABEL)

        args = agent["ProgramArguments"]
        self.assertIsInstance(args, list)
        self.assertGreater(len(args), 0)
        self.assertTrue(os.path.isabs(args[0]), args[0])
        self.assertEqual(args[0], os.path.join(bindir, "tokend"))

        self.assertIs(agent["RunAtLoad"], True)
        # Restart after a crash, not after a clean stop.
        self.assertEqual(agent["KeepAlive"], {"SuccessfulExit": False})
        self.assertEqual(agent.get("Umask"), 0o077)

        for key in ("StandardOutPath", "StandardErrorPath"):
            with self.subTest(key=key):
                self.assertTrue(os.path.isabs(agent[key]), agent[key])
                self.assertTrue(agent[key].startswith(os.path.join(home, "Library", "Logs") + "/"),
                                agent[key])

        socket_path = agent["EnvironmentVariables"]["TOKEND_SOCKET"]
        self.assertTrue(os.path.isabs(socket_path), socket_path)
        self.assertTrue(socket_path.endswith("/tokend/tokend.sock"), socket_path)
        return socket_path


class TemplateTest(PlistChecks, unittest.TestCase):
    def setUp(self):
        with open(PLIST_TEMPLATE) as f:
            self.template = f.read()

    def test_placeholders_are_the_ones_the_install_script_fills(self):
        self.assertEqual(set(PLACEHOLDER.findall(self.template)),
                         {"@BINDIR@", "@HOME@", "@SOCKET@"})
        with open(INSTALL_SCRIPT) as f:
            script = f.read()
        for name in ("BINDIR", "HOME", "SOCKET"):
            self.assertIn(f'"{name}=', script, f"install-service.sh does not fill @{name}@")

    def test_filled_template_is_a_valid_launch_agent(self):
        home = "/Users/alice"
        text = fill(self.template, {
            "BINDIR": home + "/.local/bin",
            "HOME": home,
            "SOCKET": "/var/folders/xy/abc/T/tokend/tokend.sock",
        })
        self.assertEqual(PLACEHOLDER.findall(text), [])
        agent = plistlib.loads(text.encode())
        socket_path = self.check_agent(agent, home, home + "/.local/bin")
        self.assertEqual(socket_path, "/var/folders/xy/abc/T/tokend/tokend.sock")

    def test_unfilled_template_fails_the_checks(self):
        # The checks are real: with the placeholders left in, paths are not absolute.
        agent = plistlib.loads(self.template.encode())
        with self.assertRaises(AssertionError):
            self.check_agent(agent, "/Users/alice", "/Users/alice/.local/bin")


class RenderedByInstallScriptTest(PlistChecks, unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        # Characters that need XML escaping and a space, in HOME and TMPDIR.
        self.home = self.tmp.sub("home & <co>")
        self.tmpdir = self.tmp.sub("T dir") + "/"
        os.makedirs(self.home)
        os.makedirs(self.tmpdir)
        self.build = self.tmp.sub("build")
        make_executable(os.path.join(self.build, "daemon", "tokend"))
        make_executable(os.path.join(self.build, "ctl", "tokenctl"))

    def tearDown(self):
        self.tmp.close()

    def install(self, *args):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.home,
            "TMPDIR": self.tmpdir,
            "LANG": "C",
        }
        return subprocess.run(
            ["bash", INSTALL_SCRIPT, "--platform", "macos", "--from", self.build, *args],
            env=env, capture_output=True, text=True, timeout=60)

    def test_installed_agent_has_absolute_paths_of_this_user(self):
        r = self.install("--no-enable")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        plist_path = os.path.join(self.home, "Library", "LaunchAgents", LABEL + ".plist")
        self.assertEqual(mode_of(plist_path), 0o644)
        with open(plist_path, "rb") as f:
            raw = f.read()
        self.assertEqual(PLACEHOLDER.findall(raw.decode()), [])
        agent = plistlib.loads(raw)
        bindir = os.path.join(self.home, ".local", "bin")
        socket_path = self.check_agent(agent, self.home, bindir)
        # The socket is where tokenctl looks for it: $TMPDIR/tokend/tokend.sock.
        self.assertEqual(socket_path, os.path.join(self.tmpdir, "tokend", "tokend.sock"))
        self.assertTrue(os.access(agent["ProgramArguments"][0], os.X_OK))
        # launchd opens the log file but does not create its directory.
        log_dir = os.path.dirname(agent["StandardOutPath"])
        self.assertTrue(os.path.isdir(log_dir))
        self.assertEqual(mode_of(log_dir), 0o700)
        self.assertIn(f"launchctl bootstrap gui/{os.getuid()} ", r.stdout)

        plutil = shutil.which("plutil")
        if plutil:  # macOS only
            lint = subprocess.run([plutil, "-lint", plist_path], capture_output=True, text=True)
            self.assertEqual(lint.returncode, 0, lint.stdout + lint.stderr)

    def test_prefix_is_used_for_program_arguments(self):
        bindir = self.tmp.sub("opt bin")
        r = self.install("--no-enable", "--prefix", bindir)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        with open(os.path.join(self.home, "Library", "LaunchAgents", LABEL + ".plist"), "rb") as f:
            agent = plistlib.load(f)
        self.assertEqual(agent["ProgramArguments"], [os.path.join(bindir, "tokend")])

    def test_enable_dry_run_shows_the_launchctl_commands_and_writes_nothing(self):
        r = self.install("--enable", "--dry-run")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        plist_path = os.path.join(self.home, "Library", "LaunchAgents", LABEL + ".plist")
        self.assertIn(f"run: launchctl bootstrap gui/{os.getuid()} ", r.stdout)
        self.assertFalse(os.path.exists(os.path.join(self.home, "Library")))
        self.assertFalse(os.path.exists(plist_path))


if __name__ == "__main__":
    main()

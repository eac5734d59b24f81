"""scripts/install-service.sh on Linux: what --dry-run announces, what a real
install into a throw-away HOME leaves behind (files, modes, idempotence),
the service-manager calls each mode makes, and --uninstall.

    python3 tests/service/install_test.py

Nothing here touches the real home or the real user manager: HOME is a
temporary directory, and `systemctl` and `unshare` are stand-ins placed first
on PATH that record how they were called.
"""
import os
import shutil
import subprocess
import sys
import unittest

from service_support import (INSTALL_SCRIPT, REPO, SERVICE_UNIT, SOCKET_UNIT,
                             TempDir, main, make_executable, mode_of)

FAKE_SYSTEMCTL = """#!/bin/sh
# Records its arguments; behaves like a reachable user manager unless
# FAKE_NO_MANAGER is set. is-active answers "active" only with FAKE_ACTIVE.
printf '%s\\n' "$*" >>"$FAKE_LOG"
[ -n "${FAKE_NO_MANAGER:-}" ] && exit 1
case "$*" in
*is-active*) [ -n "${FAKE_ACTIVE:-}" ] && exit 0; exit 3 ;;
esac
exit 0
"""

FAKE_UNSHARE = """#!/bin/sh
# Stands in for the user-namespace probe: fails when FAKE_NO_USERNS is set.
[ -n "${FAKE_NO_USERNS:-}" ] && exit 1
exit 0
"""


class InstallTest(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.home = self.tmp.sub("home")
        os.makedirs(self.home)
        # A build tree as CMake lays it out, with stand-in binaries.
        self.build = self.tmp.sub("build")
        self.tokend_src = os.path.join(self.build, "daemon", "tokend")
        self.tokenctl_src = os.path.join(self.build, "ctl", "tokenctl")
        make_executable(self.tokend_src, "#!/bin/sh\necho tokend stand-in\n")
        make_executable(self.tokenctl_src, "#!/bin/sh\necho tokenctl stand-in\n")
        self.fakebin = self.tmp.sub("fakebin")
        make_executable(os.path.join(self.fakebin, "systemctl"), FAKE_SYSTEMCTL)
        make_executable(os.path.join(self.fakebin, "unshare"), FAKE_UNSHARE)
        self.log = self.tmp.sub("systemctl.log")

        self.bindir = os.path.join(self.home, ".local", "bin")
        self.unitdir = os.path.join(self.home, ".config", "systemd", "user")
        self.datadir = os.path.join(self.home, ".local", "share", "tokend")
        self.confdir = os.path.join(self.home, ".config", "tokend")
        self.dropin = os.path.join(self.unitdir, "tokend.service.d", "50-no-private-users.conf")

    def tearDown(self):
        self.tmp.close()

    def run_script(self, *args, **env_extra):
        env = {
            "PATH": self.fakebin + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.home,
            "FAKE_LOG": self.log,
            "LANG": "C",
        }
        env.update(env_extra)
        return subprocess.run(
            ["bash", INSTALL_SCRIPT, "--platform", "linux", "--from", self.build, *args],
            env=env, capture_output=True, text=True, timeout=60)

    def ok(self, *args, **env_extra):
        r = self.run_script(*args, **env_extra)
        self.assertEqual(r.returncode, 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}")
        return r

    def manager_calls(self):
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return f.read().splitlines()

    def read(self, path):
        with open(path, "rb") as f:
            return f.read()

    def tree(self, root):
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            found += [os.path.join(dirpath, n) for n in dirnames + filenames]
        return sorted(found)

    # --- dry run ---------------------------------------------------------------

    def test_dry_run_says_what_it_would_do_and_changes_nothing(self):
        prefix = self.tmp.sub("prefix")
        r = self.ok("--dry-run", "--prefix", prefix)
        lines = r.stdout.splitlines()
        expected = [
            f"[dry-run] mkdir: {prefix} (755)",
            f"[dry-run] install: {self.tokend_src} -> {prefix}/tokend (755)",
            f"[dry-run] install: {self.tokenctl_src} -> {prefix}/tokenctl (755)",
            f"[dry-run] install: {SERVICE_UNIT} -> {self.unitdir}/tokend.service (644)",
            f"[dry-run] install: {SOCKET_UNIT} -> {self.unitdir}/tokend.socket (644)",
            f"[dry-run] mkdir: {self.datadir} (700)",
            f"[dry-run] mkdir: {self.confdir} (700)",
            "[dry-run] run: systemctl --user daemon-reload",
        ]
        for line in expected:
            self.assertIn(line, lines)
        # In that order: binaries, units, data directories, then the manager.
        self.assertEqual([l for l in lines if l in expected], expected)
        self.assertIn("systemctl --user enable --now tokend.socket tokend.service", r.stdout)
        # The prefix is under /tmp, which the unit's PrivateTmp= hides.
        self.assertIn("PrivateTmp", r.stderr)

        self.assertEqual(self.tree(self.home), [])
        self.assertFalse(os.path.exists(prefix))
        self.assertEqual(self.manager_calls(), [])

    def test_dry_run_enable_shows_enable_without_running_it(self):
        r = self.ok("--dry-run", "--enable")
        self.assertIn("[dry-run] run: systemctl --user enable --now tokend.socket tokend.service",
                      r.stdout.splitlines())
        self.assertEqual(self.manager_calls(), [])
        self.assertEqual(self.tree(self.home), [])

    # --- real install ------------------------------------------------------------

    def test_install_places_files_with_the_right_modes_and_leaves_the_manager_alone(self):
        r = self.ok("--no-enable")
        self.assertEqual(mode_of(os.path.join(self.bindir, "tokend")), 0o755)
        self.assertEqual(mode_of(os.path.join(self.bindir, "tokenctl")), 0o755)
        self.assertEqual(self.read(os.path.join(self.bindir, "tokend")), self.read(self.tokend_src))
        self.assertEqual(self.read(os.path.join(self.bindir, "tokenctl")), self.read(self.tokenctl_src))
        for unit, source in (("tokend.service", SERVICE_UNIT), ("tokend.socket", SOCKET_UNIT)):
            path = os.path.join(self.unitdir, unit)
            self.assertEqual(mode_of(path), 0o644)
            # Default prefix: ExecStart=%h/.local/bin/tokend already points there.
            self.assertEqual(self.read(path), self.read(source))
        self.assertEqual(mode_of(self.datadir), 0o700)
        self.assertEqual(mode_of(self.confdir), 0o700)
        self.assertFalse(os.path.exists(self.dropin))
        # No stray temporary files next to what was installed.
        self.assertEqual(sorted(os.listdir(self.bindir)), ["tokenctl", "tokend"])
        self.assertEqual(sorted(os.listdir(self.unitdir)), ["tokend.service", "tokend.socket"])

        self.assertEqual(self.manager_calls(), [], "--no-enable must not call systemctl")
        self.assertIn("systemctl --user daemon-reload", r.stdout)
        self.assertIn("systemctl --user enable --now tokend.socket tokend.service", r.stdout)

    def test_second_install_changes_nothing_and_an_update_replaces_only_what_changed(self):
        self.ok("--no-enable")
        installed = [os.path.join(self.bindir, "tokend"), os.path.join(self.bindir, "tokenctl"),
                     os.path.join(self.unitdir, "tokend.service"),
                     os.path.join(self.unitdir, "tokend.socket")]
        before = {p: os.stat(p).st_mtime_ns for p in installed}

        r = self.ok("--no-enable")
        self.assertNotIn("install:", r.stdout)
        self.assertNotIn("mkdir:", r.stdout)
        for p in installed:
            self.assertIn(f"unchanged: {p}", r.stdout.splitlines())
            self.assertEqual(os.stat(p).st_mtime_ns, before[p], f"{p} was rewritten")

        make_executable(self.tokend_src, "#!/bin/sh\necho tokend stand-in v2\n")
        r = self.ok("--no-enable")
        changed = [l for l in r.stdout.splitlines() if l.startswith("install:")]
        self.assertEqual(changed, [f"install: {self.tokend_src} -> {self.bindir}/tokend (755)"])
        self.assertEqual(self.read(os.path.join(self.bindir, "tokend")), self.read(self.tokend_src))

    def test_custom_prefix_rewrites_exec_start_only(self):
        # % (specifiers) and $ (variables) must come out literal.
        prefix = self.tmp.sub("opt", "my 100% $HOME bin")
        self.ok("--no-enable", "--prefix", prefix)
        self.assertEqual(mode_of(os.path.join(prefix, "tokend")), 0o755)
        with open(SERVICE_UNIT) as f:
            original = f.read().splitlines()
        with open(os.path.join(self.unitdir, "tokend.service")) as f:
            rendered = f.read().splitlines()
        self.assertEqual(len(original), len(rendered))
        diff = [(a, b) for a, b in zip(original, rendered) if a != b]
        escaped = os.path.join(prefix, "tokend").replace("%", "%%")
        self.assertEqual(diff, [("ExecStart=%h/.local/bin/tokend", f'ExecStart="{escaped}"')])

        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            self.skipTest("systemd-analyze not installed: the rendered unit was not verified")
        runtime = self.tmp.sub("run")
        os.makedirs(runtime, mode=0o700)
        v = subprocess.run(
            [analyze, "--user", "verify", "--man=no", "--generators=no",
             os.path.join(self.unitdir, "tokend.service"), os.path.join(self.unitdir, "tokend.socket")],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.home,
                 "XDG_RUNTIME_DIR": runtime, "LANG": "C.UTF-8"},
            capture_output=True, text=True, timeout=60)
        # verify resolves ExecStart and checks the stand-in exists there.
        self.assertEqual((v.returncode, v.stderr), (0, ""))

    def test_a_loose_data_directory_is_reported_not_silently_changed(self):
        os.makedirs(self.datadir, mode=0o755)
        os.chmod(self.datadir, 0o755)
        r = self.ok("--no-enable")
        self.assertIn(f"chmod 700 '{self.datadir}'", r.stderr)
        self.assertEqual(mode_of(self.datadir), 0o755)

    def test_without_user_namespaces_a_drop_in_turns_private_users_off(self):
        r = self.ok("--no-enable", FAKE_NO_USERNS="1")
        self.assertIn("217/USER", r.stderr)
        self.assertEqual(mode_of(self.dropin), 0o644)
        with open(self.dropin) as f:
            lines = [l.strip() for l in f if l.strip() and not l.startswith("#")]
        self.assertEqual(lines, ["[Service]", "PrivateUsers=no"])

        # Once namespaces work, the next install takes the drop-in away again.
        r = self.ok("--no-enable")
        self.assertIn(f"remove: {self.dropin}", r.stdout.splitlines())
        self.assertFalse(os.path.exists(os.path.dirname(self.dropin)))

    # --- service manager -----------------------------------------------------------

    def test_default_mode_reloads_the_manager_and_prints_the_enable_command(self):
        r = self.ok()
        self.assertEqual(self.manager_calls(), ["--user show-environment", "--user daemon-reload"])
        self.assertIn("systemctl --user enable --now tokend.socket tokend.service", r.stdout)

    def test_default_mode_without_a_user_manager_still_installs(self):
        r = self.ok(FAKE_NO_MANAGER="1")
        self.assertIn("no systemd user manager is reachable", r.stderr)
        self.assertNotIn("--user daemon-reload", self.manager_calls())
        self.assertTrue(os.path.exists(os.path.join(self.unitdir, "tokend.service")))

    def test_enable_starts_both_units_and_restarts_a_running_daemon_only_after_a_change(self):
        self.ok("--enable")
        calls = self.manager_calls()
        self.assertIn("--user daemon-reload", calls)
        self.assertIn("--user enable --now tokend.socket tokend.service", calls)
        self.assertNotIn("--user restart tokend.service", calls)
        self.assertLess(calls.index("--user daemon-reload"),
                        calls.index("--user enable --now tokend.socket tokend.service"))

        os.remove(self.log)
        self.ok("--enable", FAKE_ACTIVE="1")
        self.assertNotIn("--user restart tokend.service", self.manager_calls(),
                         "nothing changed, so the running daemon must be left alone")

        os.remove(self.log)
        make_executable(self.tokend_src, "#!/bin/sh\necho tokend stand-in v2\n")
        self.ok("--enable", FAKE_ACTIVE="1")
        self.assertEqual(self.manager_calls()[-2:],
                         ["--user restart tokend.service", "--user --no-pager status tokend.service"])

    def test_enable_without_a_user_manager_fails(self):
        r = self.run_script("--enable", FAKE_NO_MANAGER="1")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("no systemd user manager is reachable", r.stderr)

    def test_uninstall_removes_service_and_binaries_and_keeps_the_data(self):
        self.ok("--no-enable")
        with open(os.path.join(self.datadir, "tokens.db"), "w") as f:
            f.write("stand-in database")
        os.makedirs(os.path.dirname(self.dropin))
        own_dropin = os.path.join(os.path.dirname(self.dropin), "override.conf")
        with open(own_dropin, "w") as f:
            f.write("[Service]\nEnvironment=X=1\n")

        r = self.ok("--uninstall")
        calls = self.manager_calls()
        self.assertIn("--user disable --now tokend.service tokend.socket", calls)
        self.assertEqual(calls[-1], "--user daemon-reload")
        for gone in ("tokend", "tokenctl"):
            self.assertFalse(os.path.exists(os.path.join(self.bindir, gone)))
        for gone in ("tokend.service", "tokend.socket"):
            self.assertFalse(os.path.exists(os.path.join(self.unitdir, gone)))
        # The user's data and their own drop-in stay.
        self.assertTrue(os.path.exists(os.path.join(self.datadir, "tokens.db")))
        self.assertTrue(os.path.isdir(self.confdir))
        self.assertTrue(os.path.exists(own_dropin))
        self.assertIn(self.datadir, r.stdout)

        # Uninstalling again is a no-op.
        r = self.ok("--uninstall", "--no-enable")
        self.assertNotIn("remove:", r.stdout)

    # --- errors ------------------------------------------------------------------------

    def test_usage_errors_exit_2(self):
        other = "macos" if sys.platform.startswith("linux") else "linux"
        for args in (["--bogus"], ["--prefix"], ["--platform", "windows"]):
            with self.subTest(args=args):
                r = self.run_script(*args)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn("install-service.sh:", r.stderr)
        r = subprocess.run(["bash", INSTALL_SCRIPT, "--platform", other],
                           env={"PATH": os.environ["PATH"], "HOME": self.home},
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertEqual(self.tree(self.home), [])

    def test_missing_binary_is_an_error_and_installs_nothing(self):
        empty = self.tmp.sub("empty")
        os.makedirs(empty)
        r = self.run_script("--no-enable", "--from", empty)
        self.assertEqual(r.returncode, 1)
        self.assertIn("no tokend binary", r.stderr)
        self.assertEqual(self.tree(self.home), [])

    def test_help_lists_every_option(self):
        r = self.ok("--help")
        for option in ("--prefix", "--from", "--enable", "--no-enable", "--uninstall",
                       "--dry-run", "--platform", "--help"):
            self.assertIn(option, r.stdout)


if __name__ == "__main__":
    if not sys.platform.startswith("linux"):
        print("install_test.py covers the Linux install; plist_test.py covers macOS", file=sys.stderr)
    main()

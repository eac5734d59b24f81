"""systemd/tokend.service and systemd/tokend.socket (user units), and
systemd/tokend-server.service (server mode, a system unit): systemd-analyze
verify passes with no output at all, and the hardening and path settings the
daemon relies on are present and consistent with each other.

    python3 tests/service/units_test.py
"""
import os
import shutil
import subprocess
import unittest

from service_support import (REPO, SERVICE_UNIT, SOCKET_UNIT, TempDir, main,
                             make_executable)

SERVER_UNIT = os.path.join(REPO, "systemd", "tokend-server.service")

# Commands the units run besides tokend itself; verify checks that they exist.
HOST_COMMANDS = ("/bin/mkdir", "/bin/kill")


def parse_unit(path):
    """{section: {key: [values in order]}}; comments and blank lines dropped."""
    sections = {}
    current = None
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                current = sections.setdefault(line[1:-1], {})
                continue
            assert current is not None, f"{path}: setting outside a section: {line}"
            assert not line.endswith("\\"), f"{path}: continuation lines are not expected: {line}"
            key, sep, value = line.partition("=")
            assert sep, f"{path}: not a key=value line: {line}"
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(section, key):
    values = section.get(key, [])
    if len(values) != 1:
        raise AssertionError(f"expected exactly one {key}=, found {values}")
    return values[0]


def words(section, key):
    return [w for v in section.get(key, []) for w in v.split()]


class VerifyTest(unittest.TestCase):
    """Runs the real systemd-analyze in user mode against a throw-away home."""

    def setUp(self):
        self.analyze = shutil.which("systemd-analyze")
        if self.analyze is None:
            self.skipTest("systemd-analyze not installed (Debian: apt-get install systemd)")
        missing = [c for c in HOST_COMMANDS if not os.access(c, os.X_OK)]
        if missing:
            self.skipTest(f"{', '.join(missing)} missing on this host; the units run them "
                          "(Debian: procps provides /bin/kill)")
        self.tmp = TempDir()
        self.home = self.tmp.sub("home")
        self.runtime = self.tmp.sub("run")
        os.makedirs(self.home)
        os.makedirs(self.runtime, mode=0o700)

    def tearDown(self):
        self.tmp.close()

    def verify(self, *units):
        # %h and %E resolve against this HOME; verify also checks that
        # ExecStart= points at an executable file, hence the stand-in binary.
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.home,
            "XDG_RUNTIME_DIR": self.runtime,
            "LANG": "C.UTF-8",
        }
        return subprocess.run(
            [self.analyze, "--user", "verify", "--man=no", "--generators=no", *units],
            env=env, capture_output=True, text=True, timeout=60)

    def install_stand_in(self):
        make_executable(os.path.join(self.home, ".local", "bin", "tokend"))

    def test_both_units_verify_with_no_warnings(self):
        self.install_stand_in()
        r = self.verify(SERVICE_UNIT, SOCKET_UNIT)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr, "", "systemd-analyze verify printed warnings")
        self.assertEqual(r.stdout, "")

    def test_verify_fails_when_the_binary_is_not_installed(self):
        # The check above would be worthless if verify accepted anything.
        r = self.verify(SERVICE_UNIT, SOCKET_UNIT)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(os.path.join(self.home, ".local", "bin", "tokend"), r.stderr)

    def test_verify_reports_an_unknown_setting_on_stderr(self):
        self.install_stand_in()
        broken_dir = self.tmp.sub("units")
        os.makedirs(broken_dir)
        with open(SERVICE_UNIT) as f:
            text = f.read()
        text = text.replace("ProtectHome=read-only", "ProtectHome=read-only\nProtectHomeDir=yes")
        with open(os.path.join(broken_dir, "tokend.service"), "w") as f:
            f.write(text)
        shutil.copy(SOCKET_UNIT, broken_dir)
        r = self.verify(os.path.join(broken_dir, "tokend.service"),
                        os.path.join(broken_dir, "tokend.socket"))
        self.assertIn("ProtectHomeDir", r.stderr)


class DirectivesTest(unittest.TestCase):
    """The settings the issue asks for, and the ones the daemon depends on."""

    @classmethod
    def setUpClass(cls):
        cls.service_unit = parse_unit(SERVICE_UNIT)
        cls.socket_unit = parse_unit(SOCKET_UNIT)
        cls.service = cls.service_unit["Service"]
        cls.socket = cls.socket_unit["Socket"]

    def test_service_type_lifecycle_and_hardening(self):
        s = self.service
        expected = {
            "Type": "notify",
            "ExecStart": "%h/.local/bin/tokend",
            "ExecReload": "/bin/kill -HUP $MAINPID",
            "Restart": "on-failure",
            "UMask": "0077",
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "read-only",
            "PrivateTmp": "yes",
            "MemoryDenyWriteExecute": "yes",
            "SystemCallFilter": "@system-service",
            # Without it systemd 252 silently skips the mount sandboxing in a
            # user unit (see the comment in the unit).
            "PrivateUsers": "yes",
        }
        for key, value in expected.items():
            with self.subTest(key=key):
                self.assertEqual(one(s, key), value)
        self.assertEqual(sorted(words(s, "RestrictAddressFamilies")),
                         ["AF_INET", "AF_INET6", "AF_UNIX"])

    def test_writable_paths_are_created_before_the_sandbox_and_match_the_daemon_paths(self):
        s = self.service
        writable = words(s, "ReadWritePaths")
        self.assertCountEqual(writable, ["%h/.local/share/tokend", "%E/tokend"])
        # ExecStartPre runs outside the sandbox ("+") and creates exactly these,
        # 0700, so ReadWritePaths= never names a missing directory.
        pre = one(s, "ExecStartPre").split()
        self.assertEqual(pre[:4], ["+/bin/mkdir", "-p", "-m", "0700"])
        self.assertCountEqual(pre[4:], writable)

        env = dict(v.split("=", 1) for v in s.get("Environment", []))
        self.assertNotIn("TOKEND_KEY_FILE", env,
                         "an explicit key file must exist, which breaks key generation on first start")
        self.assertEqual(os.path.dirname(env["TOKEND_DB"]), "%h/.local/share/tokend")
        # The key file and config default to $XDG_CONFIG_HOME/tokend: pinned to %E.
        self.assertEqual(env["XDG_CONFIG_HOME"], "%E")
        self.assertEqual(env["TOKEND_SOCKET"], one(self.socket, "ListenStream"))

    def test_socket_unit(self):
        sock = self.socket
        self.assertEqual(one(sock, "ListenStream"), "%t/tokend/tokend.sock")
        self.assertEqual(one(sock, "SocketMode"), "0600")
        self.assertEqual(one(sock, "DirectoryMode"), "0700")
        self.assertEqual(one(sock, "Accept"), "no")
        self.assertNotIn("Service", sock, "the socket must activate tokend.service")
        self.assertEqual(one(self.socket_unit["Install"], "WantedBy"), "sockets.target")

    def test_service_is_ordered_after_its_socket_and_starts_at_login(self):
        unit = self.service_unit["Unit"]
        self.assertIn("tokend.socket", words(unit, "Requires"))
        self.assertIn("tokend.socket", words(unit, "After"))
        install = self.service_unit["Install"]
        self.assertEqual(one(install, "WantedBy"), "default.target")
        self.assertEqual(one(install, "Also"), "tokend.socket")

    def test_no_setting_that_cannot_work_in_a_user_unit(self):
        # A user manager cannot change users/groups or drop capabilities
        # without a user namespace: these fail the unit (216/GROUP,
        # 218/CAPABILITIES) instead of hardening it.
        for key in ("User", "Group", "DynamicUser", "SupplementaryGroups",
                    "CapabilityBoundingSet", "AmbientCapabilities", "ProtectKernelModules"):
            with self.subTest(key=key):
                self.assertNotIn(key, self.service)
        # StateDirectory= resolves to ~/.config or ~/.local/state depending on
        # the systemd version: the database would move under the user's feet.
        self.assertNotIn("StateDirectory", self.service)

class ServerUnitTest(unittest.TestCase):
    """systemd/tokend-server.service, verified as a system unit."""

    def setUp(self):
        self.unit = parse_unit(SERVER_UNIT)
        self.service = self.unit["Service"]
        self.analyze = shutil.which("systemd-analyze")
        self.tmp = TempDir()

    def tearDown(self):
        self.tmp.close()

    def verify_copy(self, binary):
        """Verifies a copy whose ExecStart= names `binary` (verify checks that
        it is executable; /usr/bin/tokend is not installed here)."""
        if self.analyze is None:
            self.skipTest("systemd-analyze not installed (Debian: apt-get install systemd)")
        with open(SERVER_UNIT) as f:
            text = f.read()
        self.assertEqual(text.count("ExecStart=/usr/bin/tokend "), 1)
        path = self.tmp.sub("tokend-server.service")
        with open(path, "w") as f:
            f.write(text.replace("ExecStart=/usr/bin/tokend ", f"ExecStart={binary} "))
        return subprocess.run([self.analyze, "verify", "--man=no", "--generators=no", path],
                              capture_output=True, text=True, timeout=60)

    def test_verifies_with_no_warnings(self):
        binary = self.tmp.sub("tokend")
        make_executable(binary)
        r = self.verify_copy(binary)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr, "", "systemd-analyze verify printed warnings")

    def test_verify_fails_without_the_binary(self):
        r = self.verify_copy(self.tmp.sub("missing-tokend"))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("missing-tokend", r.stderr)

    def test_runs_server_mode_as_its_own_user_with_the_kek_as_a_credential(self):
        s = self.service
        expected = {
            "Type": "notify",
            "User": "tokend",
            "ExecStart": "/usr/bin/tokend --server --config /etc/tokend/server.conf",
            "ExecReload": "/bin/kill -HUP $MAINPID",
            "Restart": "on-failure",
            "RestartPreventExitStatus": "2",
            "UMask": "0077",
            # tokend reads $CREDENTIALS_DIRECTORY/tokend.kek (store/kek.hpp).
            "LoadCredential": "tokend.kek:/etc/tokend/kek",
            "RuntimeDirectory": "tokend",
            # tokend refuses a socket directory looser than 0700.
            "RuntimeDirectoryMode": "0700",
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "MemoryDenyWriteExecute": "yes",
            "SystemCallFilter": "@system-service",
            "CapabilityBoundingSet": "",
        }
        for key, value in expected.items():
            with self.subTest(key=key):
                self.assertEqual(one(s, key), value)
        self.assertEqual(sorted(words(s, "RestrictAddressFamilies")), ["AF_INET", "AF_INET6", "AF_UNIX"])
        self.assertEqual(one(self.unit["Install"], "WantedBy"), "multi-user.target")


if __name__ == "__main__":
    main()

"""Shared helpers for the service-file tests (Python standard library only).

Waiting is always polling a condition against a deadline; nothing sleeps in
place of a condition. A test whose prerequisite is missing skips with the
reason, and the process then exits 77, which ctest reports as "Skipped"
(SKIP_RETURN_CODE in CMakeLists.txt) instead of "Passed".
"""
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import unittest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))

from harness import DEFAULT_DEADLINE, wait_for  # noqa: E402,F401  (wait_for: for the tests)

SERVICE_UNIT = os.path.join(REPO, "systemd", "tokend.service")
SOCKET_UNIT = os.path.join(REPO, "systemd", "tokend.socket")
PLIST_TEMPLATE = os.path.join(REPO, "launchd", "dev.tokend.tokend.plist")
INSTALL_SCRIPT = os.path.join(REPO, "scripts", "install-service.sh")
SKIP_EXIT_CODE = 77

# Passed on to processes under test so sanitizer builds keep their settings.
SANITIZER_VARIABLES = ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS")


def mode_of(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def make_executable(path, text="#!/bin/sh\nexit 0\n"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)


class TempDir:
    """A private temporary directory, removed on close()."""

    def __init__(self, prefix="tokend-service-"):
        self.path = tempfile.mkdtemp(prefix=prefix)
        os.chmod(self.path, 0o700)

    def sub(self, *parts):
        return os.path.join(self.path, *parts)

    def close(self):
        shutil.rmtree(self.path, ignore_errors=True)


class Process:
    """A child process whose stdout+stderr are collected line by line."""

    def __init__(self, argv, env, umask=-1):
        self.lines = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace", umask=umask)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def output(self):
        with self._lock:
            return "\n".join(self.lines)

    def running(self):
        return self.proc.poll() is None

    def wait_exit(self, deadline=DEFAULT_DEADLINE):
        try:
            code = self.proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"process did not exit within {deadline}s:\n{self.output()}") from None
        self._finish()
        return code

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._finish()

    def _finish(self):
        self._reader.join(timeout=5)
        if not self._reader.is_alive():
            self.proc.stdout.close()


def main():
    """unittest.main, then exit 1 on failure, 77 if anything was skipped, else 0."""
    program = unittest.main(verbosity=2, exit=False)
    result = program.result
    if not result.wasSuccessful():
        sys.exit(1)
    if result.skipped:
        for test, reason in result.skipped:
            print(f"SKIPPED {test.id()}: {reason}", file=sys.stderr)
        sys.exit(SKIP_EXIT_CODE)
    if result.testsRun == 0:
        sys.exit(1)
    sys.exit(0)

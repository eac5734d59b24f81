"""Shared helpers for end-to-end tests that drive the real binaries.

No sleeps stand in for behaviour: every wait polls a condition against a
deadline and fails with what was seen so far.
"""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

DEFAULT_DEADLINE = 20.0


def binaries():
    """--tokend PATH --tokenctl PATH from argv (removed so unittest ignores them)."""
    import sys
    found = {"tokend": "build/daemon/tokend", "tokenctl": "build/ctl/tokenctl"}
    rest = [sys.argv[0]]
    args = sys.argv[1:]
    i = 0
    while i < len(args):
        if args[i] in ("--tokend", "--tokenctl") and i + 1 < len(args):
            found[args[i][2:]] = os.path.abspath(args[i + 1])
            i += 2
        else:
            rest.append(args[i])
            i += 1
    sys.argv[:] = rest
    return found["tokend"], found["tokenctl"]


def work_dir_arg(default):
    """--work-dir DIR from argv (removed so unittest ignores it), else `default`."""
    import sys
    args = sys.argv[1:]
    if "--work-dir" in args:
        i = args.index("--work-dir")
        path = os.path.abspath(args[i + 1])
        del sys.argv[i + 1:i + 3]
        return path
    return default


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    import socket as so
    with so.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install_packages(src, work, files):
    """The npm packages src/package-lock.json pins, installed in `work` (a
    build directory) next to copies of `files` from src; `npm ci` runs again
    only when the lock file changed. Returns why not, or None."""
    import hashlib
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        return "node and npm are not installed (scripts/setup.sh installs Debian's nodejs and npm)"
    os.makedirs(work, exist_ok=True)
    for name in ("package.json", "package-lock.json", *files):
        shutil.copyfile(os.path.join(src, name), os.path.join(work, name))
    with open(os.path.join(src, "package-lock.json"), "rb") as f:
        lock_hash = hashlib.sha256(f.read()).hexdigest()
    stamp = os.path.join(work, "node_modules", ".tokend-lock-sha256")
    installed = None
    if os.path.exists(stamp):
        with open(stamp) as f:
            installed = f.read()
    if installed != lock_hash:
        r = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=work,
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"npm ci failed in {work}:\n{r.stdout}\n{r.stderr}")
        with open(stamp, "w") as f:
            f.write(lock_hash)
    return None


def stop_process(proc, grace=10):
    """SIGTERM, and SIGKILL if it has not exited after `grace` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def unix_request(socket_path, method, target, body=None, deadline=DEFAULT_DEADLINE):
    """One request with Connection: close; returns (status, body text)."""
    data = body.encode() if body else b""
    raw = http_over_unix(socket_path, f"{method} {target} HTTP/1.1\r\nConnection: close\r\n"
                                      f"Content-Length: {len(data)}\r\n\r\n".encode() + data, deadline)
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head[9:12]), payload.decode(errors="replace")


def secret_file(directory, name, content):
    """Writes a secret for tokenctl to read (mode 0600), returns its path."""
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(content + "\n")
    os.chmod(path, 0o600)
    return path


def run_ctl(tokenctl, env, *args, input=None, timeout=DEFAULT_DEADLINE):
    """Runs tokenctl; returns CompletedProcess with text stdout/stderr."""
    return subprocess.run([tokenctl, *args], env=env, input=input, capture_output=True,
                          text=True, timeout=timeout)


def send_and_read_to_close(s, request_bytes):
    """Sends raw bytes on a connected socket, returns everything until the
    server closes it (the socket's timeout bounds each wait); closes it."""
    try:
        s.sendall(request_bytes)
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    finally:
        s.close()
    return b"".join(chunks)


def split_answer(raw):
    """(status, head text, body bytes) of one whole HTTP/1.x answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head[9:12]), head.decode(errors="replace"), body


def http_over_unix(socket_path, request_bytes, deadline=DEFAULT_DEADLINE):
    """Sends raw bytes, returns everything until the server closes (or deadline)."""
    import socket as so
    s = so.socket(so.AF_UNIX, so.SOCK_STREAM)
    s.settimeout(deadline)
    try:
        s.connect(socket_path)
    except OSError:
        s.close()
        raise
    return send_and_read_to_close(s, request_bytes)


def wait_for(predicate, what, deadline=DEFAULT_DEADLINE, interval=0.01):
    """Polls predicate() until it returns something true; fails after deadline."""
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline}s waiting for {what}")
        time.sleep(interval)


class XdgTree:
    """A private HOME with XDG dirs, removed on close."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="tokend-e2e-")
        os.chmod(self.root, 0o700)
        self.home = os.path.join(self.root, "home")
        self.runtime = os.path.join(self.root, "run")
        for d in (self.home, self.runtime):
            os.makedirs(d, mode=0o700)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.home,
            "XDG_RUNTIME_DIR": self.runtime,
            "XDG_DATA_HOME": os.path.join(self.home, ".local", "share"),
            "XDG_CONFIG_HOME": os.path.join(self.home, ".config"),
            "NO_COLOR": "1",
        }
        for sanitizer in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
            if sanitizer in os.environ:
                self.env[sanitizer] = os.environ[sanitizer]

    @property
    def db(self):
        return os.path.join(self.env["XDG_DATA_HOME"], "tokend", "tokens.db")

    @property
    def key_file(self):
        return os.path.join(self.env["XDG_CONFIG_HOME"], "tokend", "db.key")

    @property
    def socket(self):
        return os.path.join(self.runtime, "tokend", "tokend.sock")

    def close(self):
        shutil.rmtree(self.root, ignore_errors=True)


def peak_rss_kib(pid):
    """A process's peak resident set (VmHWM) in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                     "runtime error:", "SUMMARY: ")

# tokend's documented exit codes (tokend --help).
EXIT_REFUSED = 1
EXIT_USAGE = 2


def assert_refused(test, daemon, code, *needles):
    """The daemon exits with exactly `code`, says each needle, and no sanitizer spoke:
    an ASan abort or a UBSan report must not pass for a refusal."""
    got = daemon.wait_exit()
    out = daemon.output()
    test.assertEqual(got, code, out)
    for marker in SANITIZER_MARKERS:
        test.assertNotIn(marker, out)
    for needle in needles:
        test.assertIn(needle, out)
    return out


class Daemon:
    """A running tokend whose stderr is collected line by line."""

    def __init__(self, binary, env, args=()):
        self.lines = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [binary, *args], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def output(self):
        with self._lock:
            return "\n".join(self.lines)

    # tokend's own "tokend VERSION ready" line, logged once it listens; a bare
    # "ready" would also match, say, PostgreSQL's "already exists" notice.
    READY_LINE = re.compile(r"\btokend \S+ ready\b")

    def wait_ready(self, socket_path, deadline=DEFAULT_DEADLINE):
        self.wait_for_line(self.READY_LINE, deadline)
        wait_for(lambda: os.path.exists(socket_path), f"socket {socket_path}", deadline)

    def wait_for_line(self, needle, deadline=DEFAULT_DEADLINE):
        """Waits until the output holds `needle`: a string, or a compiled regex."""
        def found():
            out = self.output()
            return needle.search(out) is not None if hasattr(needle, "search") else needle in out

        def seen():
            if found():
                return True
            if self.proc.poll() is not None:
                self._reader.join(timeout=5)
                if found():
                    return True
                raise AssertionError(
                    f"tokend exited ({self.proc.returncode}) before printing {needle!r}:\n{self.output()}")
            return False
        wait_for(seen, f"{needle!r} in tokend output", deadline)

    def stop(self, sig=signal.SIGTERM, deadline=DEFAULT_DEADLINE):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"tokend did not exit within {deadline}s of signal {sig}")
        self._reader.join(timeout=5)
        self.proc.stdout.close()
        return code

    def wait_exit(self, deadline=DEFAULT_DEADLINE):
        code = self.proc.wait(timeout=deadline)
        self._reader.join(timeout=5)
        self.proc.stdout.close()
        return code

"""tokenctl mcp config end to end, with the real tokenctl binary: each client's
entry printed and merged into its config file (--write, --file or the default
file under a temporary HOME), backups, idempotence, files left alone, exit codes.
No tokend is needed: the command only writes client configuration."""
import json
import os
import stat
import subprocess
import sys
import tempfile
import tomllib
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))

from harness import binaries  # noqa: E402

_, TOKENCTL = binaries()
CTL = os.path.realpath(TOKENCTL)  # what /proc/self/exe names

JSON_CLIENTS = {
    # client: (container key, expected entry for `tokenctl mcp jira`)
    "claude-code": ("mcpServers", {"type": "stdio", "command": CTL, "args": ["mcp", "jira"]}),
    "claude-desktop": ("mcpServers", {"command": CTL, "args": ["mcp", "jira"]}),
    "cursor": ("mcpServers", {"command": CTL, "args": ["mcp", "jira"]}),
    "gemini": ("mcpServers", {"command": CTL, "args": ["mcp", "jira"]}),
    "vscode": ("servers", {"type": "stdio", "command": CTL, "args": ["mcp", "jira"]}),
    "opencode": ("mcp", {"type": "local", "command": [CTL, "mcp", "jira"], "enabled": True}),
}


class McpConfigTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.home = self.tmp.name
        os.makedirs(os.path.join(self.home, "run"), mode=0o700)
        self.env = {"HOME": self.home, "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "XDG_RUNTIME_DIR": os.path.join(self.home, "run")}

    def tearDown(self):
        self.tmp.cleanup()

    def ctl(self, *args, expect=0, env=None):
        r = subprocess.run([TOKENCTL, *args], env=env or self.env, capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, expect, f"tokenctl {' '.join(args)}\nstdout: {r.stdout}\nstderr: {r.stderr}")
        return r

    def path(self, *parts):
        return os.path.join(self.home, *parts)

    def write(self, path, text, mode=0o600):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)

    def read(self, path):
        with open(path) as f:
            return f.read()

    def backups(self, path):
        d, base = os.path.split(path)
        return sorted(n for n in os.listdir(d) if n.startswith(base + ".bak-"))

    def test_print_each_client_writes_nothing(self):
        for client, (container, entry) in JSON_CLIENTS.items():
            with self.subTest(client=client):
                r = self.ctl("mcp", "config", "jira", "--client", client)
                self.assertEqual(json.loads(r.stdout), {container: {"jira": entry}})
                self.assertIn("--write", r.stderr)
        r = self.ctl("mcp", "config", "jira", "--client", "codex")
        self.assertEqual(r.stdout, f'[mcp_servers.jira]\ncommand = "{CTL}"\nargs = ["mcp", "jira"]\n')
        self.assertIn(self.path(".codex", "config.toml"), r.stderr)
        self.assertEqual(sorted(os.listdir(self.home)), ["run"])

    def test_write_each_client_then_again_changes_nothing(self):
        for client, (container, entry) in JSON_CLIENTS.items():
            with self.subTest(client=client):
                f = self.path("cfg", client + ".json")
                r = self.ctl("mcp", "config", "jira", "--client", client, "--write", "--file", f)
                self.assertEqual(r.stdout, f'{f}: added entry "jira"\n')
                self.assertEqual(json.loads(self.read(f)), {container: {"jira": entry}})
                self.assertEqual(stat.S_IMODE(os.stat(f).st_mode), 0o600)
                before = self.read(f)
                r = self.ctl("mcp", "config", "jira", "--client", client, "--write", "--file", f)
                self.assertEqual(r.stdout, f'{f}: entry "jira" is already up to date\n')
                self.assertEqual(self.read(f), before)
                self.assertEqual(self.backups(f), [])

    def test_claude_code_default_file_keeps_everything_else(self):
        f = self.path(".claude.json")
        before = ('{\n  "numStartups": 41,\n  "oauthAccount": {"emailAddress": "me@example.com"},\n'
                  '  "mcpServers": {\n    "github": {"type": "stdio", "command": "npx", "args": ["-y", "gh"]}\n  },\n'
                  '  "projects": {"/src/app": {"mcpServers": {"db": {"command": "pg"}}}}\n}\n')
        self.write(f, before, 0o644)
        r = self.ctl("mcp", "config", "jira", "--client", "claude-code", "--write")
        self.assertTrue(r.stdout.startswith(f'{f}: added entry "jira" (previous file kept as {f}.bak-'), r.stdout)
        after = self.read(f)
        # Every byte up to the end of the github entry, and from the close of mcpServers on, is as it was.
        cut = before.index('"gh"]}') + len('"gh"]}')
        self.assertTrue(after.startswith(before[:cut]))
        self.assertTrue(after.endswith(before[cut:]))
        doc, old = json.loads(after), json.loads(before)
        self.assertEqual(doc["mcpServers"]["jira"], JSON_CLIENTS["claude-code"][1])
        del doc["mcpServers"]["jira"]
        self.assertEqual(doc, old)
        self.assertEqual(stat.S_IMODE(os.stat(f).st_mode), 0o644)
        [backup] = self.backups(f)
        self.assertEqual(self.read(self.path(backup)), before)
        self.ctl("mcp", "config", "jira", "--client", "claude-code", "--write")
        self.assertEqual(self.read(f), after)
        self.assertEqual(len(self.backups(f)), 1)

    def test_codex_table_replaced_not_duplicated(self):
        f = self.path(".codex", "config.toml")
        head = 'model = "o3"\n\n[mcp_servers.github]\ncommand = "npx"\nargs = ["-y", "gh"]\n\n'
        tail = '\n[mcp_servers.other]\ncommand = "uvx"\n'
        self.write(f, head + '[mcp_servers.jira]\ncommand = "/old/tokenctl"\nargs = ["mcp", "old"]\n\n'
                   '[mcp_servers.jira.env]\nTOKEND_SOCKET = "/old.sock"\n' + tail)
        sock = self.path("other.sock")
        r = self.ctl("--socket", sock, "mcp", "config", "jira", "--client", "codex", "--write")
        self.assertIn('replaced entry "jira"', r.stdout)
        text = self.read(f)
        self.assertEqual(text, head + f'[mcp_servers.jira]\ncommand = "{CTL}"\nargs = ["mcp", "jira"]\n\n'
                         f'[mcp_servers.jira.env]\nTOKEND_SOCKET = "{sock}"\n' + tail)
        doc = tomllib.loads(text)
        self.assertEqual(doc["mcp_servers"]["jira"], {"command": CTL, "args": ["mcp", "jira"],
                                                      "env": {"TOKEND_SOCKET": sock}})
        self.assertEqual(sorted(doc["mcp_servers"]), ["github", "jira", "other"])
        self.ctl("--socket", sock, "mcp", "config", "jira", "--client", "codex", "--write", expect=0)
        self.assertEqual(self.read(f), text)

    def test_default_socket_is_not_written_into_the_entry(self):
        default = self.path("run", "tokend", "tokend.sock")
        for args, env in ((["--socket", default], None), ([], dict(self.env, TOKEND_SOCKET=default))):
            r = self.ctl(*args, "mcp", "config", "jira", "--client", "cursor", env=env)
            self.assertNotIn("env", json.loads(r.stdout)["mcpServers"]["jira"])
        r = self.ctl("mcp", "config", "jira", "--client", "cursor", env=dict(self.env, TOKEND_SOCKET="rel/t.sock"))
        self.assertEqual(json.loads(r.stdout)["mcpServers"]["jira"]["env"],
                         {"TOKEND_SOCKET": os.path.join(os.getcwd(), "rel/t.sock")})

    def test_exec_wrapped_local_server(self):
        f = self.path("proj", ".vscode", "mcp.json")
        self.ctl("mcp", "config", "jira", "--client", "vscode", "--name", "jira-local", "--url-env", "JIRA_URL",
                 "--write", "--file", f, "--", "uvx", "mcp-atlassian", "--read-only")
        self.assertEqual(json.loads(self.read(f)), {"servers": {"jira-local": {
            "type": "stdio", "command": CTL,
            "args": ["exec", "jira", "--endpoint", "--url-env", "JIRA_URL", "--", "uvx", "mcp-atlassian",
                     "--read-only"]}}})

    def test_bad_files_are_left_alone(self):
        cases = {
            "comments.json": ("cursor", '{\n  // my servers\n  "mcpServers": {}\n}\n', "has comments (line 2"),
            "broken.json": ("gemini", '{"mcpServers": {"a": {"command": "x"}\n', "is not valid JSON"),
            "array.json": ("claude-desktop", "[]\n", "not an object"),
            "broken.toml": ("codex", 'model = "o3\n', "is not TOML that tokenctl can read"),
            "inline.toml": ("codex", '[mcp_servers]\njira = { command = "x" }\n', "a form tokenctl does not edit"),
        }
        for name, (client, text, says) in cases.items():
            with self.subTest(file=name):
                f = self.path(name)
                self.write(f, text, 0o640)
                r = self.ctl("mcp", "config", "jira", "--client", client, "--write", "--file", f, expect=1)
                self.assertEqual(r.stdout, "")
                self.assertIn(says, r.stderr)
                self.assertIn("nothing was changed", r.stderr)
                self.assertEqual(self.read(f), text)
                self.assertEqual(stat.S_IMODE(os.stat(f).st_mode), 0o640)
                self.assertEqual(self.backups(f), [])

    def test_someone_elses_entry_needs_force(self):
        f = self.path(".cursor", "mcp.json")
        before = '{"mcpServers": {"jira": {"command": "npx", "args": ["mcp-atlassian"]}}}'
        self.write(f, before)
        r = self.ctl("mcp", "config", "jira", "--client", "cursor", "--write", expect=1)
        self.assertIn("runs npx, not tokenctl", r.stderr)
        self.assertEqual(self.read(f), before)
        self.ctl("mcp", "config", "jira", "--client", "cursor", "--write", "--force")
        self.assertEqual(json.loads(self.read(f))["mcpServers"]["jira"], JSON_CLIENTS["cursor"][1])
        [backup] = self.backups(f)
        self.assertEqual(self.read(self.path(".cursor", backup)), before)

    def test_usage_errors(self):
        for args, says in ((["jira"], "missing --client"),
                           (["jira", "--client", "emacs"], "not a client tokenctl knows"),
                           (["jira", "--client", "codex", "--file", "x"], "--file goes with --write"),
                           (["jira", "--client", "codex", "--name", "a b"], "entry name"),
                           (["jira", "--client", "codex", "--wirte"], "unexpected '--wirte'"),
                           (["jira", "--client", "codex", "--"], "no command after --")):
            with self.subTest(args=args):
                r = self.ctl("mcp", "config", *args, expect=2)
                self.assertEqual(r.stdout, "")
                self.assertIn(says, r.stderr)
        r = self.ctl("mcp", "config", "--help")
        self.assertIn("--client CLIENT", r.stdout)
        self.assertEqual(sorted(os.listdir(self.home)), ["run"])

    def test_completion_knows_mcp_config(self):
        bash = self.ctl("completion", "bash").stdout
        self.assertIn("exec mcp api", bash)
        self.assertIn("--client --name --write --file --force", bash)
        self.assertIn("claude-code claude-desktop codex cursor vscode gemini opencode", bash)
        zsh = self.ctl("completion", "zsh").stdout
        self.assertIn("'--client[MCP client]:client:(claude-code claude-desktop codex cursor vscode gemini opencode)'", zsh)


if __name__ == "__main__":
    unittest.main()

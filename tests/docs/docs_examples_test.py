"""Every example under docs/examples/ runs against the real tokend and tokenctl
and the TLS fake provider / fake Atlassian API (tests/fake_upstream), the way
the docs tell people to run it:

- wrap_script.py under `tokenctl exec` (docs/wrapping-scripts.md), the stdio
  MCP server of mcp-stdio.json, token_helper.py, migrate_dotenv.sh;
- add_atlassian_mcp.sh and the headersHelper of mcp.json
  (docs/claude-code-mcp.md), through a real login against the fake MCP server;
- proxy_python.py, proxy_curl.sh and proxy_node.js (docs/proxy-clients.md)
  through tokend's proxy; the Node example is skipped when `node` is not
  installed.

Code that the docs quote after an `<!-- include: examples/FILE -->` marker
must appear in FILE verbatim, so the docs cannot drift from what is tested."""
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
DOCS = os.path.join(REPO, "docs")
EXAMPLES = os.path.join(DOCS, "examples")
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
sys.path.insert(0, os.path.join(REPO, "tests", "fake_upstream"))

from client import FakeUpstream  # noqa: E402
from harness import Daemon, XdgTree, binaries, free_port, run_ctl, secret_file, unix_request, wait_for  # noqa: E402

TOKEND, TOKENCTL = binaries()
BROWSER = os.path.join(REPO, "tests", "e2e", "fake_browser.py")
ATLASSIAN_ID = "atlassian-app"
ATLASSIAN_SECRET = "cs-MARKER-docs-secret"
PAT = "pat-MARKER-docs-0001"
NODE = shutil.which("node")


def example(name):
    return os.path.join(EXAMPLES, name)


class DocsExamplesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.up = FakeUpstream(quiet=True)

    @classmethod
    def tearDownClass(cls):
        cls.up.stop()

    def setUp(self):
        self.up.reset()
        self.up.add_client(ATLASSIAN_ID, ATLASSIAN_SECRET, "client_secret_post")
        self.xdg = XdgTree()
        # The examples call `tokenctl` by name, as a user's would.
        bin_dir = os.path.join(self.xdg.root, "bin")
        os.makedirs(bin_dir)
        os.symlink(TOKENCTL, os.path.join(bin_dir, "tokenctl"))
        self.env = dict(self.xdg.env, PATH=bin_dir + os.pathsep + self.xdg.env["PATH"],
                        SSL_CERT_FILE=self.up.ca_file, ATLASSIAN_API_GATEWAY=self.up.base_url)
        self.daemon = Daemon(TOKEND, self.env, ["--ca-bundle", self.up.ca_file, "--http-timeout", "10s"])
        self.daemon.wait_ready(self.xdg.socket)
        self.secrets = [ATLASSIAN_SECRET, PAT]

    def tearDown(self):
        code = self.daemon.stop()
        log = self.daemon.output()
        self.xdg.close()
        self.assertEqual(code, 0, log)
        issued = [t["token"] for t in self.up.tokens() if t.get("token")]
        for s in self.secrets + issued:
            self.assertNotIn(s, log, "a secret in tokend's log")

    # -- helpers ------------------------------------------------------------------------

    def run_example(self, argv, input=None, cwd=None, expect=0, env=None):
        r = subprocess.run(argv, env=env or self.env, input=input, capture_output=True, text=True, timeout=120,
                           cwd=cwd or self.xdg.root)
        self.assertEqual(r.returncode, expect, f"{argv}\nstdout: {r.stdout}\nstderr: {r.stderr}")
        return r

    def ctl(self, *args, expect=0):
        r = run_ctl(TOKENCTL, self.env, *args, timeout=60)
        self.assertEqual(r.returncode, expect, f"tokenctl {args}\nstdout: {r.stdout}\nstderr: {r.stderr}")
        return r

    def put_profile(self, name, body):
        status, text = unix_request(self.xdg.socket, "PUT", f"/v1/profiles/{name}", json.dumps(body))
        self.assertIn(status, (200, 201), text)
        return json.loads(text)

    def add_atlassian_oauth(self, name="jira"):
        """An Atlassian 3LO profile holding a live token set of the fake (as after a login)."""
        grant = self.up.add_grant(ATLASSIAN_ID, access_lifetime=3600)
        site = self.up.sites()[0]
        self.put_profile(name, {
            "kind": "oauth2", "provider": "atlassian", "client_id": ATLASSIAN_ID,
            "client_secret": ATLASSIAN_SECRET, "token_url": self.up.token_url, "api_base": self.up.base_url,
            "site": site["url"], "cloud_id": site["id"], "access_token": grant["access_token"],
            "refresh_token": grant["refresh_token"], "expires_in": 3600})
        self.secrets += [grant["access_token"], grant["refresh_token"]]
        return grant

    def add_dc_pat(self, name="jira"):
        """A Data Center PAT profile whose site is the fake's /dc."""
        self.up.add_pat(PAT)
        self.ctl("add", name, "--kind", "pat", "--site", self.up.dc_url,
                 "--token-file", secret_file(self.xdg.root, "pat", PAT))

    # -- docs/wrapping-scripts.md --------------------------------------------------------

    def test_wrap_script_under_exec(self):
        grant = self.add_atlassian_oauth()
        # A stale token left in .env by the old token manager: the environment
        # tokenctl exec fills wins (python-dotenv's load_dotenv does not override).
        workdir = os.path.join(self.xdg.root, "project")
        os.makedirs(workdir)
        with open(os.path.join(workdir, ".env"), "w") as f:
            f.write("JIRA_OAUTH_ACCESS_TOKEN=stale-token-from-env-file\n")
        r = self.run_example(["tokenctl", "exec", "jira", "--", sys.executable, example("wrap_script.py")],
                             cwd=workdir)
        self.assertRegex(r.stdout, r"^Logged in to Jira as .+ \(.+\)\n$")
        self.assertNotIn(grant["access_token"], r.stdout + r.stderr)
        # Without tokenctl exec the script has no token.
        r = self.run_example([sys.executable, example("wrap_script.py")], cwd=workdir, expect=1)

    def test_stdio_mcp_server_config(self):
        self.add_atlassian_oauth()
        with open(example("mcp-stdio.json")) as f:
            server = json.load(f)["mcpServers"]["jira"]
        self.assertEqual(server["type"], "stdio")
        self.assertEqual(server["command"], "tokenctl")
        args = [example("jira_mcp_server.py") if a == "/path/to/jira_mcp_server.py" else a for a in server["args"]]
        self.assertIn(example("jira_mcp_server.py"), args)
        messages = [
            {"jsonrpc": "2.0", "id": 1, "method": "initialize",
             "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                        "clientInfo": {"name": "docs-test", "version": "1"}}},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "jira_whoami", "arguments": {}}},
        ]
        r = self.run_example([server["command"], *args], input="".join(json.dumps(m) + "\n" for m in messages))
        replies = {m["id"]: m for m in map(json.loads, r.stdout.splitlines())}
        self.assertEqual(replies[1]["result"]["serverInfo"]["name"], "jira-example")
        self.assertEqual([t["name"] for t in replies[2]["result"]["tools"]], ["jira_whoami"])
        self.assertNotIn("error", replies[3], replies[3])
        self.assertRegex(replies[3]["result"]["content"][0]["text"], r".+ \(.+\)")

    def test_token_helper(self):
        self.add_dc_pat()
        code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
                "from token_helper import tokend_token, tokend_authorization\n"
                "print(tokend_token('jira') == sys.argv[2], tokend_authorization('jira', min_valid=300) == 'Bearer ' + sys.argv[2])\n"
                "try:\n"
                "    tokend_token('nope')\n"
                "except RuntimeError as e:\n"
                "    print(e)\n")
        r = self.run_example([sys.executable, "-c", code, EXAMPLES, PAT])
        self.assertEqual(r.stdout, "True True\ntokenctl token nope failed with exit code 1\n")
        self.assertIn("no profile named 'nope'", r.stderr)
        r = self.run_example([sys.executable, example("token_helper.py"), "jira"])
        self.assertEqual(r.stdout, "Bearer\n")

    def test_migrate_dotenv(self):
        grant = self.up.add_grant(ATLASSIAN_ID, access_lifetime=3600)
        self.secrets += [grant["access_token"], grant["refresh_token"]]
        env_file = os.path.join(self.xdg.root, ".env")
        kept = ["# Jira OAuth (managed by jira_token_manager.py)",
                f"JIRA_OAUTH_CLIENT_ID='{ATLASSIAN_ID}'",
                "JIRA_OAUTH_REDIRECT_URI='http://localhost:8080/callback'",
                "",
                "JIRA_URL=https://acme.atlassian.net  # the site",
                f"JIRA_OAUTH_CLOUD_ID={self.up.sites()[0]['id']}",
                "OTHER_SETTING=1"]
        with open(env_file, "w") as f:
            f.write(f"{kept[0]}\n{kept[1]}\nJIRA_OAUTH_CLIENT_SECRET='{ATLASSIAN_SECRET}'\n{kept[2]}\n{kept[3]}\n"
                    f"JIRA_OAUTH_ACCESS_TOKEN='{grant['access_token']}'\n"
                    f"export JIRA_OAUTH_REFRESH_TOKEN=\"{grant['refresh_token']}\"\n" + "\n".join(kept[4:]) + "\n")
        os.chmod(env_file, 0o600)
        with open(env_file) as f:
            before = f.read()
        # A failed import (tokend refuses a plain-http token URL) leaves the file as it was.
        r = self.run_example(["sh", example("migrate_dotenv.sh"), "jira", env_file,
                              "--token-url", "http://auth.example/token"], expect=1)
        self.assertIn("nothing changed", r.stderr)
        with open(env_file) as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(sorted(os.listdir(self.xdg.root)), sorted(["bin", "home", "run", ".env"]))
        # The fake's endpoints instead of Atlassian's (the preset's defaults).
        r = self.run_example(["sh", example("migrate_dotenv.sh"), "jira", env_file,
                              "--token-url", self.up.token_url, "--api-base", self.up.base_url])
        for s in self.secrets:
            self.assertNotIn(s, r.stdout + r.stderr)
        self.assertIn("jira", r.stdout)

        def env_lines():
            with open(env_file) as f:
                return f.read().splitlines()

        def access_in_file():
            values = [line.split("=", 1)[1].strip("'\"") for line in env_lines()
                      if line.startswith("JIRA_OAUTH_ACCESS_TOKEN=")]
            self.assertEqual(len(values), 1, env_lines())
            return values[0]

        lines = env_lines()
        self.assertFalse([line for line in lines if "REFRESH_TOKEN" in line or "CLIENT_SECRET" in line], lines)
        self.assertEqual([line for line in lines if not line.startswith("JIRA_OAUTH_ACCESS_TOKEN=")], kept)
        self.assertEqual(stat.S_IMODE(os.stat(env_file).st_mode), 0o600)
        # The import had no expiry to go by, so tokend may already have
        # refreshed: the file holds whatever token tokend holds now.
        def file_is_current():
            now = self.ctl("token", "jira").stdout.strip()
            if now and now not in self.secrets:
                self.secrets.append(now)
            return now != "" and access_in_file() == now
        wait_for(file_is_current, "the dotenv sink to hold tokend's current token")
        # tokend refreshes now, and the sink keeps the file's access token current.
        self.ctl("renew", "jira")
        current = self.ctl("token", "jira").stdout.strip()
        self.secrets.append(current)
        self.assertNotEqual(current, grant["access_token"])
        self.assertEqual(access_in_file(), current)
        self.assertEqual([line for line in env_lines() if not line.startswith("JIRA_OAUTH_ACCESS_TOKEN=")], kept)
        # And a script reading the token from the environment works under exec.
        r = self.run_example(["tokenctl", "exec", "jira", "--", sys.executable, example("wrap_script.py")])
        self.assertTrue(r.stdout.startswith("Logged in to Jira as "), r.stdout)

    # -- docs/claude-code-mcp.md ---------------------------------------------------------

    def test_claude_code_headers_helper(self):
        port = free_port()
        env = dict(self.env, MCP_SERVER=self.up.mcp_url, BROWSER=BROWSER, FAKE_BROWSER_CA=self.up.ca_file,
                   FAKE_BROWSER_LOG=os.path.join(self.xdg.root, "browser.log"))
        # What the doc says to run, on the fake MCP server, with a free port for the redirect.
        r = self.run_example(["sh", example("add_atlassian_mcp.sh"), "--redirect-uri",
                              f"http://127.0.0.1:{port}/callback"], env=env)
        self.assertIn("atlassian-mcp is ready", r.stdout)
        self.assertIn("Logged in: atlassian-mcp", r.stdout)
        with open(example("mcp.json")) as f:
            server = json.load(f)["mcpServers"]["atlassian"]
        self.assertEqual(server, {"type": "sse", "url": "https://mcp.atlassian.com/v1/sse",
                                  "headersHelper": "tokenctl headers atlassian-mcp"})
        # Claude Code runs the helper through the shell and reads a JSON object of strings.
        r = self.run_example(["sh", "-c", server["headersHelper"]])
        headers = json.loads(r.stdout)
        self.assertEqual(list(headers), ["Authorization"])
        token = headers["Authorization"].removeprefix("Bearer ")
        self.secrets.append(token)
        self.assertEqual(r.stdout, '{"Authorization": "Bearer ' + token + '"}\n')
        self.assertEqual(self.up.mcp_request(token).status, 200, "the token is not good at the MCP server")
        # A profile that needs a new login: nothing on stdout, exit 4, the command named.
        self.ctl("logout", "atlassian-mcp")
        r = self.run_example(["sh", "-c", server["headersHelper"]], expect=4)
        self.assertEqual(r.stdout, "")
        self.assertIn("tokenctl login atlassian-mcp", r.stderr)

    # -- docs/proxy-clients.md -----------------------------------------------------------

    def test_proxy_python(self):
        self.add_dc_pat()
        r = self.run_example([sys.executable, example("proxy_python.py")])
        self.assertEqual(r.stdout, "Logged in to Jira as dc-user\nDEMO-1: Created through tokend\n")
        self.assertNotIn(PAT, r.stdout + r.stderr)
        # The fake saw the profile's PAT, not anything of the caller's.
        kinds = {e["auth"]["kind"] for e in self.up.api_log() if e.get("auth")}
        self.assertEqual(kinds, {"pat"})

    def test_proxy_curl_and_tokenctl_api(self):
        self.add_dc_pat()
        r = self.run_example(["sh", example("proxy_curl.sh")])
        lines = r.stdout.splitlines()
        self.assertEqual(json.loads(lines[0])["displayName"], "dc-user")
        self.assertRegex(json.loads(lines[1])["key"], r"^DEMO-\d+$")
        # The tokenctl api commands the doc shows next to curl.
        me = json.loads(self.ctl("api", "jira", "GET", "jira/rest/api/3/myself").stdout)
        self.assertEqual(me["displayName"], "dc-user")
        issue_file = os.path.join(self.xdg.root, "issue.json")
        with open(issue_file, "w") as f:
            json.dump({"fields": {"project": {"key": "DEMO"}, "summary": "via tokenctl api",
                                  "issuetype": {"name": "Task"}}}, f)
        created = json.loads(self.ctl("api", "jira", "POST", "jira/rest/api/3/issue", "--data", "@" + issue_file).stdout)
        fetched = json.loads(self.ctl("api", "jira", "GET", f"jira/rest/api/3/issue/{created['key']}").stdout)
        self.assertEqual(fetched["fields"]["summary"], "via tokenctl api")
        r = self.ctl("api", "jira", "GET", "jira/rest/api/3/issue/NOPE-404", expect=1)
        self.assertTrue(r.stderr.startswith("tokenctl: HTTP 404"), r.stderr)
        self.assertIn("errorMessages", r.stdout)

    @unittest.skipIf(NODE is None, "node is not installed")
    def test_proxy_node(self):
        self.add_dc_pat()
        r = self.run_example([NODE, example("proxy_node.js")])
        self.assertEqual(r.stdout, "Logged in to Jira as dc-user\n")
        r = self.run_example([NODE, example("proxy_node.js"), "jira", "jira/rest/api/3/issue/NOPE-1"], expect=1)
        self.assertIn("HTTP 404", r.stderr)
        r = self.run_example([NODE, example("proxy_node.js"), "nope"], expect=1)
        self.assertIn("HTTP 404", r.stderr)
        self.assertIn("no profile named 'nope'", r.stderr)


class DocsQuoteExamplesTest(unittest.TestCase):
    """Blocks the docs quote from docs/examples/ are verbatim excerpts of the files."""

    MARKER = re.compile(r"<!-- include: (examples/[\w.-]+) -->\n+```[\w-]*\n(.*?)```", re.S)

    def test_quoted_blocks_match_the_files(self):
        docs = ["wrapping-scripts.md", "claude-code-mcp.md", "proxy-clients.md"]
        quoted = set()
        for doc in docs:
            with open(os.path.join(DOCS, doc)) as f:
                text = f.read()
            blocks = self.MARKER.findall(text)
            self.assertTrue(blocks, f"{doc} quotes no example")
            for name, block in blocks:
                with self.subTest(doc=doc, example=name):
                    with open(os.path.join(DOCS, name)) as f:
                        self.assertIn(block, f.read(), f"{doc} quotes {name} in a form the file does not have")
                quoted.add(os.path.basename(name))
        # Every example is quoted somewhere (and so is run by DocsExamplesTest).
        self.assertEqual(quoted, set(os.listdir(EXAMPLES)) - {"__pycache__"})

    def test_readme_links_the_docs(self):
        with open(os.path.join(REPO, "README.md")) as f:
            readme = f.read()
        for doc in ("docs/wrapping-scripts.md", "docs/claude-code-mcp.md", "docs/proxy-clients.md"):
            self.assertIn(f"]({doc})", readme)


if __name__ == "__main__":
    unittest.main()

"""The proxy end to end: the real tokend forwarding calls
to the TLS fake provider with the profile's credential. What reaches the
upstream is asserted from the fake's request log."""
import hashlib
import json
import os
import socket
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fake_upstream"))

from client import Blob, FakeUpstream, MultipartBody, api_token_auth, bearer, download_sha256  # noqa: E402
from harness import Daemon, XdgTree, binaries, peak_rss_kib, http_over_unix, secret_file, run_ctl, unix_request  # noqa: E402

TOKEND, TOKENCTL = binaries()
CLIENT_ID = "proxy-app"
CLIENT_SECRET = "cs-MARKER-proxy-secret"
API_TOKEN = "ATATT-MARKER-api-token"
PAT = "NjM-MARKER-pat"
EMAIL = "me@example.test"


class ProxyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.up = FakeUpstream(quiet=True)

    @classmethod
    def tearDownClass(cls):
        cls.up.stop()

    def setUp(self):
        self.up.reset()
        self.up.clear_faults()
        self.up.add_client(CLIENT_ID, CLIENT_SECRET, "client_secret_basic")
        self.xdg = XdgTree()
        self.env = self.xdg.env
        self.daemon = Daemon(TOKEND, self.env, ["--ca-bundle", self.up.ca_file, "--log-level", "debug"])
        self.daemon.wait_ready(self.xdg.socket)

    def tearDown(self):
        if self.daemon.proc.poll() is None:
            self.assertEqual(self.daemon.stop(), 0, self.daemon.output())
        log = self.daemon.output()
        for t in self.up.tokens():
            if t.get("token"):
                self.assertNotIn(t["token"], log)
        self.xdg.close()

    def ctl(self, *args, input=None):
        return run_ctl(TOKENCTL, self.env, *args, input=input, timeout=60)

    def put(self, name, body):
        status, text = unix_request(self.xdg.socket, "PUT", f"/v1/profiles/{name}", json.dumps(body))
        self.assertIn(status, (200, 201), text)

    def add_generic(self, name="g", **extra):
        g = self.up.add_grant(CLIENT_ID, access_lifetime=3600)
        self.put(name, {"kind": "oauth2", "token_url": self.up.token_url, "client_id": CLIENT_ID,
                        "client_secret": CLIENT_SECRET, "access_token": g["access_token"],
                        "refresh_token": g["refresh_token"], "expires_in": 3600, "api_base": self.up.base_url,
                        **extra})
        return g

    def raw(self, method, target, headers=(), body=b""):
        """A request with exactly these bytes in its head; (status, head, body)."""
        head = f"{method} {target} HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n"
        for h in headers:
            head += h + "\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        out = http_over_unix(self.xdg.socket, head.encode() + body)
        head_bytes, _, payload = out.partition(b"\r\n\r\n")
        return int(head_bytes[9:12]), head_bytes.decode(errors="replace"), payload

    def upstream_calls(self, path_prefix):
        return [e for e in self.up.log(settle=True) if e.get("path", "").startswith(path_prefix)]

    # -- forwarding ---------------------------------------------------------------

    def test_generic_get_with_the_profiles_token_only(self):
        g = self.add_generic()
        status, head, body = self.raw("GET", "/v1/proxy/g/me?x=1", ["Authorization: Bearer caller-token",
                                                                   "Cookie: session=caller", "X-Custom: kept",
                                                                   "Connection: close, X-Hop", "X-Hop: dropped"])
        self.assertEqual(status, 200, body)
        self.assertIn("sub", json.loads(body))
        self.assertNotIn("set-cookie", head.lower())
        call = self.upstream_calls("/me")[-1]
        self.assertEqual(call["query"], {"x": "1"})
        headers = {k.lower(): v for k, v in call["headers"].items()}
        self.assertEqual(headers["authorization"], "Bearer " + g["access_token"])
        self.assertNotIn("cookie", headers)
        self.assertNotIn("x-hop", headers)
        self.assertEqual(headers.get("x-custom"), "kept")

    def test_escapes_and_injection_are_refused_before_anything_is_sent(self):
        self.add_generic()
        before = len(self.up.log(settle=True))
        for target in ("/v1/proxy/g/../../_control/reset", "/v1/proxy/g/a/../../x", "/v1/proxy/g//evil.example/x",
                       "/v1/proxy/g/https://evil.example/x", "/v1/proxy/g/me%0d%0aHost:%20evil",
                       "/v1/proxy/g/a%2f..%2f..%2fx", "/v1/proxy/g/a%5c..%5cx", "/v1/proxy/g/me%00"):
            with self.subTest(target=target):
                status, _, body = self.raw("GET", target)
                self.assertEqual(status, 400, body)
        self.assertEqual(len(self.up.log(settle=True)), before, "a refused call reached the upstream")

    def test_policy_read_only_allow_deny_and_rate(self):
        self.add_generic(policy={"read_only": True, "allow": ["me", "oauth"], "deny": ["oauth/userinfo"]})
        self.assertEqual(self.raw("GET", "/v1/proxy/g/me")[0], 200)
        status, _, body = self.raw("POST", "/v1/proxy/g/me", body=b"{}")
        self.assertEqual(status, 403)
        self.assertEqual(json.loads(body)["error"]["code"], "policy_denied")
        self.assertIn("read-only", json.loads(body)["error"]["message"])
        status, _, body = self.raw("GET", "/v1/proxy/g/oauth/userinfo")
        self.assertEqual(status, 403)
        self.assertIn("oauth/userinfo", json.loads(body)["error"]["message"])
        self.assertEqual(self.raw("GET", "/v1/proxy/g/other")[0], 403)
        self.add_generic(name="r", policy={"rate_per_minute": 2})
        self.assertEqual(self.raw("GET", "/v1/proxy/r/me")[0], 200)
        self.assertEqual(self.raw("GET", "/v1/proxy/r/me")[0], 200)
        status, head, body = self.raw("GET", "/v1/proxy/r/me")
        self.assertEqual(status, 429)
        self.assertIn("retry-after:", head.lower())
        self.assertEqual(json.loads(body)["error"]["code"], "rate_limited")
        # Bad policies are refused with the field named, and change nothing.
        status, text = unix_request(self.xdg.socket, "PUT", "/v1/profiles/g",
                                    json.dumps({"kind": "oauth2", "policy": {"read_only": "yes"}}))
        self.assertEqual(status, 400, text)
        self.assertIn("policy.read_only", text)
        self.assertEqual(self.raw("GET", "/v1/proxy/g/me")[0], 200)

    def test_audit_line_per_call(self):
        self.add_generic()
        self.raw("GET", "/v1/proxy/g/me")
        self.raw("GET", "/v1/proxy/g/../x")
        status, text = unix_request(self.xdg.socket, "GET", "/v1/audit?limit=10")
        events = [e for e in json.loads(text)["events"] if e["kind"] == "proxy"]
        self.assertEqual(len(events), 2)
        ok = [e for e in events if e["detail"]["status"] == 200][0]
        self.assertEqual(ok["detail"]["method"], "GET")
        self.assertEqual(ok["detail"]["path"], "me")
        self.assertEqual(ok["peer_uid"], os.getuid())
        self.assertIn("latency_ms", ok["detail"])
        status, text = unix_request(self.xdg.socket, "GET", "/v1/metrics")
        self.assertIn('tokend_proxy_requests_total{profile="g",status="200"} 1', text)

    def test_upstream_connections_are_reused(self):
        self.add_generic()
        for _ in range(5):
            self.assertEqual(self.raw("GET", "/v1/proxy/g/me")[0], 200)
        conns = {e["connection"] for e in self.upstream_calls("/me")}
        self.assertEqual(len(conns), 1, conns)

    def test_unknown_profile_and_missing_api_base(self):
        status, _, body = self.raw("GET", "/v1/proxy/nope/me")
        self.assertEqual(status, 404)
        g = self.up.add_grant(CLIENT_ID, access_lifetime=3600)
        self.put("n", {"kind": "oauth2", "token_url": self.up.token_url, "client_id": CLIENT_ID,
                       "access_token": g["access_token"], "expires_in": 3600})
        status, _, body = self.raw("GET", "/v1/proxy/n/me")
        self.assertEqual(status, 422, body)
        self.assertIn("api_base", json.loads(body)["error"]["message"])


    # -- Atlassian: the same client paths whatever the credential ------------------

    def add_atlassian_kinds(self):
        """Three profiles reaching the same fake site three ways; returns the 3LO grant."""
        self.up.add_client("atl", CLIENT_SECRET, "client_secret_post")
        g = self.up.add_grant("atl", access_lifetime=3600)
        cloud = self.up.sites()[0]["id"]
        self.put("oauth", {"kind": "oauth2", "provider": "atlassian", "client_id": "atl", "client_secret": CLIENT_SECRET,
                           "token_url": self.up.token_url, "api_base": self.up.base_url, "cloud_id": cloud,
                           "access_token": g["access_token"], "refresh_token": g["refresh_token"], "expires_in": 3600})
        self.up.add_api_token(EMAIL, API_TOKEN)
        self.put("cloud", {"kind": "api-token", "site": self.up.site_url("acme"), "email": EMAIL, "token": API_TOKEN})
        self.up.add_pat(PAT)
        self.put("dc", {"kind": "pat", "site": self.up.dc_url + "/jira", "confluence_base": self.up.dc_url + "/confluence",
                        "token": PAT})
        return g, cloud

    def test_crud_for_each_credential_kind(self):
        g, cloud = self.add_atlassian_kinds()
        expected = {
            "oauth": (f"/ex/jira/{cloud}/rest/api/3/issue", bearer(g["access_token"])),
            "cloud": ("/site/acme/rest/api/3/issue", api_token_auth(EMAIL, API_TOKEN)),
            "dc": ("/dc/jira/rest/api/3/issue", bearer(PAT)),
        }
        for name, (upstream_path, auth) in expected.items():
            with self.subTest(profile=name):
                since = self.up.last_seq()
                status, _, body = self.raw("POST", f"/v1/proxy/{name}/jira/rest/api/3/issue",
                                           ["Content-Type: application/json"],
                                           json.dumps({"fields": {"summary": "from " + name}}).encode())
                self.assertEqual(status, 201, body)
                key = json.loads(body)["key"]
                status, _, body = self.raw("GET", f"/v1/proxy/{name}/jira/rest/api/3/issue/{key}")
                self.assertEqual(status, 200, body)
                status, _, body = self.raw("PUT", f"/v1/proxy/{name}/jira/rest/api/3/issue/{key}",
                                           ["Content-Type: application/json"], b'{"fields": {"summary": "edited"}}')
                self.assertEqual(status, 204, body)
                status, _, body = self.raw("DELETE", f"/v1/proxy/{name}/jira/rest/api/3/issue/{key}")
                self.assertEqual(status, 204, body)
                calls = self.up.api_log_at_least(since, 4)
                self.assertEqual([c["method"] for c in calls], ["POST", "GET", "PUT", "DELETE"])
                self.assertEqual(calls[0]["path"], upstream_path)
                self.assertEqual(calls[1]["path"], f"{upstream_path}/{key}")
                for c in calls:
                    headers = {k.lower(): v for k, v in c["headers"].items()}
                    self.assertEqual(headers["authorization"], auth)
                    self.assertTrue(c["auth"]["valid"], c["auth"])
        # Confluence: the gateway, the site's /wiki, and the Data Center base.
        for name, prefix in (("oauth", f"/ex/confluence/{cloud}/"), ("cloud", "/site/acme/wiki/"),
                             ("dc", "/dc/confluence/")):
            with self.subTest(confluence=name):
                since = self.up.last_seq()
                status, _, body = self.raw("GET", f"/v1/proxy/{name}/confluence/rest/api/user/current")
                self.assertEqual(status, 200, body)
                self.assertEqual(self.up.api_log_at_least(since, 1)[0]["path"], prefix + "rest/api/user/current")

    def test_401_gets_one_refresh_and_one_retry(self):
        g, _ = self.add_atlassian_kinds()
        self.up.fault("invalid_token", target="api_ex", count=1)
        since = self.up.last_seq()
        status, _, body = self.raw("GET", "/v1/proxy/oauth/jira/rest/api/3/myself")
        self.assertEqual(status, 200, body)
        calls = self.up.api_log_at_least(since, 2)
        self.assertEqual(len(calls), 2)
        first, second = ({k.lower(): v for k, v in c["headers"].items()}["authorization"] for c in calls)
        self.assertEqual(first, bearer(g["access_token"]))
        self.assertNotEqual(second, first, "the retry did not carry the refreshed token")
        self.assertEqual(self.up.grant(g["grant_id"])["refreshes"], 1)
        # Twice in a row: one refresh, one retry, then the 401 is the answer.
        self.up.fault("invalid_token", target="api_ex", count=2)
        status, _, body = self.raw("GET", "/v1/proxy/oauth/jira/rest/api/3/myself")
        self.assertEqual(status, 401, body)

    def test_429_passed_back_or_waited_out(self):
        self.add_atlassian_kinds()
        self.up.fault("rate_limited", target="api_site", count=1, retry_after=1)
        status, head, body = self.raw("GET", "/v1/proxy/cloud/jira/rest/api/3/myself")
        self.assertEqual(status, 429, body)
        self.assertIn("retry-after: 1", head.lower())
        self.up.fault("rate_limited", target="api_site", count=1, retry_after=1)
        since = self.up.last_seq()
        status, _, body = self.raw("GET", "/v1/proxy/cloud/jira/rest/api/3/myself", ["X-Tokend-Retry-Wait: 5"])
        self.assertEqual(status, 200, body)
        self.assertEqual(len(self.up.api_log(since, settle=True)), 2)
        # A Retry-After longer than the caller will wait is passed back.
        self.up.fault("rate_limited", target="api_site", count=1, retry_after=30)
        status, _, _ = self.raw("GET", "/v1/proxy/cloud/jira/rest/api/3/myself", ["X-Tokend-Retry-Wait: 5"])
        self.assertEqual(status, 429)
        status, _, body = self.raw("GET", "/v1/proxy/cloud/jira/x", ["X-Tokend-Retry-Wait: soon"])
        self.assertEqual(status, 400, body)

    def test_atlassian_paths_outside_jira_and_confluence_are_refused(self):
        self.add_atlassian_kinds()
        before = self.up.last_seq()
        for target in ("/v1/proxy/cloud/bitbucket/x", "/v1/proxy/oauth/admin/x", "/v1/proxy/dc/jira/../../x"):
            with self.subTest(target=target):
                self.assertEqual(self.raw("GET", target)[0], 400)
        self.assertEqual(self.up.api_log(before, settle=True), [])


    # -- large bodies: bounded memory both ways ----------------------------------

    # Under ASan the allocator's quarantine and shadow memory make RSS say
    # nothing about tokend's own buffering: the transfers are still checked.
    SANITIZED = "ASAN_OPTIONS" in os.environ

    def peak_rss_kib(self):
        return peak_rss_kib(self.daemon.proc.pid)

    def stream_request(self, method, target, headers, chunks, length):
        """Sends a body piece by piece over the socket; returns (status, body bytes)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(120)
            s.connect(self.xdg.socket)
            head = f"{method} {target} HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\nContent-Length: {length}\r\n"
            for h in headers:
                head += h + "\r\n"
            s.sendall((head + "\r\n").encode())
            for piece in chunks:
                s.sendall(piece)
            out = b""
            while True:
                data = s.recv(1 << 20)
                if not data:
                    break
                out += data
        head_bytes, _, payload = out.partition(b"\r\n\r\n")
        return int(head_bytes[9:12]), payload

    def test_50mb_upload_and_download_with_bounded_memory(self):
        self.add_atlassian_kinds()
        status, _, body = self.raw("POST", "/v1/proxy/cloud/jira/rest/api/3/issue", ["Content-Type: application/json"],
                                   b'{"fields": {"summary": "with an attachment"}}')
        self.assertEqual(status, 201, body)
        key = json.loads(body)["key"]
        self.assertEqual(self.raw("GET", "/v1/proxy/cloud/jira/rest/api/3/myself")[0], 200)  # warm: TLS, curl
        before = self.peak_rss_kib()
        size = 50 * 1000 * 1000
        multipart = MultipartBody([("file", "big.bin", Blob(7, size), "application/octet-stream")])
        status, payload = self.stream_request(
            "POST", f"/v1/proxy/cloud/jira/rest/api/3/issue/{key}/attachments",
            [f"Content-Type: {multipart.content_type}", "X-Atlassian-Token: no-check"], multipart.chunks(),
            multipart.length)
        self.assertEqual(status, 200, payload[:300])
        got = json.loads(payload)
        self.assertEqual([(a["filename"], a["size"], a["sha256"]) for a in got],
                         [(e["filename"], e["size"], e["sha256"]) for e in multipart.expected])
        up_growth_mib = (self.peak_rss_kib() - before) / 1024
        if not self.SANITIZED:
            self.assertLess(up_growth_mib, 16, f"tokend's peak RSS grew by {up_growth_mib:.1f} MiB for a 50 MB upload")
        # And down again: 50 MB through the proxy, hashed on arrival.
        before = self.peak_rss_kib()
        h = hashlib.sha256()
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(120)
            s.connect(self.xdg.socket)
            s.sendall(f"GET /v1/proxy/cloud/jira/rest/api/3/attachment/content/77?size={size} HTTP/1.1\r\n"
                      "Host: tokend\r\nConnection: close\r\n\r\n".encode())
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += s.recv(65536)
            head, _, rest = buf.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head[:200])
            got_bytes = len(rest)
            h.update(rest)
            while True:
                data = s.recv(1 << 20)
                if not data:
                    break
                got_bytes += len(data)
                h.update(data)
        self.assertEqual(got_bytes, size)
        self.assertEqual(h.hexdigest(), download_sha256(77, size))
        growth_mib = (self.peak_rss_kib() - before) / 1024
        if not self.SANITIZED:
            self.assertLess(growth_mib, 16, f"tokend's peak RSS grew by {growth_mib:.1f} MiB for a 50 MB download")
        print(f"\n50 MB through the proxy: tokend's peak RSS grew {up_growth_mib:.1f} MiB (upload), "
              f"{growth_mib:.1f} MiB (download)", file=sys.stderr)

    def test_upload_over_the_limit_is_refused(self):
        self.add_atlassian_kinds()
        status, payload = self.stream_request("POST", "/v1/proxy/cloud/jira/rest/api/3/issue/X-1/attachments",
                                              ["Content-Type: application/octet-stream"], [], 300 * 1024 * 1024)
        self.assertEqual(status, 413, payload)


if __name__ == "__main__":
    unittest.main()

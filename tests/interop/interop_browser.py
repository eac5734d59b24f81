#!/usr/bin/env python3
"""A user's browser against the interop authorization server (oidc-provider).

    BROWSER=tests/interop/interop_browser.py tokenctl login PROFILE

Follows the server's redirects with cookies (login and consent answer at
once there) until a Location leaves the server, i.e. reaches the client's
redirect URI; then GETs it (the loopback callback tokend serves). As a
module, `Browser.authorize(url)` returns that final Location without
calling it (a person pasting the address bar), and `Browser.device(url)`
submits the device-flow confirmation forms.

Environment: INTEROP_BROWSER_LOG (optional): one JSON line per run with the
statuses seen; never a code or state.
"""
import html
import http.cookiejar
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class Browser:
    def __init__(self, timeout=10.0):
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect,
                                                  urllib.request.HTTPCookieProcessor(self.jar))
        self.timeout = timeout

    def request(self, url, data=None):
        """(status, headers, body text) without following redirects."""
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
        try:
            with self.opener.open(req, timeout=self.timeout) as r:
                return r.status, r.headers, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode("utf-8", "replace")

    def follow(self, url, data=None, limit=20):
        """Follows redirects within the URL's origin; returns (status, headers, body, url, left_at)
        where left_at is the first Location outside that origin (or None)."""
        origin = urllib.parse.urlsplit(url)[:2]
        for _ in range(limit):
            status, headers, body = self.request(url, data)
            data = None
            location = headers.get("Location") if status in (301, 302, 303, 307, 308) else None
            if not location:
                return status, headers, body, url, None
            location = urllib.parse.urljoin(url, location)
            if urllib.parse.urlsplit(location)[:2] != origin:
                return status, headers, body, url, location
            url = location
        raise RuntimeError("too many redirects")

    def authorize(self, authorize_url):
        """The Location the server finally redirects the user to (the redirect URI with the code)."""
        status, _, body, _, left_at = self.follow(authorize_url)
        if left_at is None:
            raise RuntimeError(f"the authorization server did not redirect back ({status}): {body[:300]}")
        return left_at

    @staticmethod
    def form_of(page):
        """(action, fields) of the first form on the page."""
        m = re.search(r'<form[^>]*action="([^"]*)"[^>]*>(.*?)</form>', page, re.S)
        if not m:
            raise RuntimeError(f"no form on the page: {page[:300]}")
        fields = {html.unescape(n): html.unescape(v) for n, v in
                  re.findall(r'<input[^>]*name="([^"]*)"[^>]*value="([^"]*)"', m.group(2))}
        return html.unescape(m.group(1)), fields

    def device(self, verification_uri, user_code):
        """Enters the user code, confirms, signs in, consents; returns the last page."""
        status, _, page, url, _ = self.follow(verification_uri)
        for _ in range(3):
            if "Device signed in" in page:
                return page
            action, fields = self.form_of(page)
            fields.setdefault("user_code", user_code)
            if not fields["user_code"]:
                fields["user_code"] = user_code
            status, _, page, url, _ = self.follow(urllib.parse.urljoin(url, action), data=fields)
        if "Device signed in" not in page:
            raise RuntimeError(f"the device flow did not finish ({status}): {page[:300]}")
        return page


def main():
    if len(sys.argv) != 2:
        print("usage: interop_browser.py AUTHORIZE_URL", file=sys.stderr)
        return 2
    record = {}
    try:
        b = Browser()
        location = b.authorize(sys.argv[1])
        record["redirected"] = True
        status, _, body = b.request(location)
        record["callback_status"] = status
        record["callback_excerpt"] = body[:200]
    except Exception as e:  # noqa: BLE001 - reported in the log, never raised to tokenctl
        record["error"] = str(e)[:300]
    log = os.environ.get("INTEROP_BROWSER_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

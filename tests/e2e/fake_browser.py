#!/usr/bin/env python3
"""A stand-in for a web browser in tokend's end-to-end tests.

    BROWSER=tests/e2e/fake_browser.py tokenctl login PROFILE
    fake_browser.py AUTHORIZE_URL

tokenctl runs ``$BROWSER URL``. This script plays the user's browser with
the fake upstream: it GETs the authorization URL (HTTPS, trusting the CA in
FAKE_BROWSER_CA), reads the ``302`` Location itself (redirects are never
followed automatically), then GETs that Location, i.e. the loopback callback
that tokend serves over plain http. The consent decision is the fake
upstream's (knob ``consent``), not this script's.

Environment:

* ``FAKE_BROWSER_CA``: CA file trusted for https (the fake upstream's
  ``ca.pem``); unset: the system's trust store.
* ``FAKE_BROWSER_LOG``: if set, one JSON line is appended per run:
  ``{"mode", "time", "authorize_url", "authorize_status", "location",
  "callback_status", "callback_body_excerpt", "error"}``; in replay mode also
  ``"replay_status", "replay_body_excerpt"``; without a redirect
  ``"authorize_body_excerpt"``.
* ``FAKE_BROWSER_MODE``: ``follow`` (default: authorize, then the callback
  once), ``authorize_only`` (print the Location on stdout and log it, do not
  call the callback: for tests that paste it into ``tokenctl login
  --no-browser``), ``replay`` (call the callback twice, as a reloaded tab does).
* ``FAKE_BROWSER_TIMEOUT``: seconds per request (default 10).

Exit status: 0 whatever the servers answered (failures go to the log), 2 on
a usage error of this script. It never reads stdin (tokenctl may be reading
a pasted URL from it) and finishes within two or three request timeouts.
Codes and states never go to stderr; the log file and, in authorize_only
mode, stdout get the Location because that is what they are for.
"""
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

MODES = ("follow", "authorize_only", "replay")
EXCERPT = 300


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Makes urllib hand 3xx answers back as HTTPError instead of following them."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _opener(ca_file):
    context = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    # No proxies: the callback is on a loopback address, and so is the fake upstream.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect,
                                       urllib.request.HTTPSHandler(context=context))


def _get(opener, url, timeout):
    """(status, headers, body) of one GET; HTTP errors are answers, not exceptions."""
    request = urllib.request.Request(url, headers={"User-Agent": "fake-browser/1",
                                                   "Accept": "text/html"})
    try:
        with opener.open(request, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers, err.read()


def _excerpt(body):
    return body[:EXCERPT].decode("utf-8", "replace")


def _describe(exc):
    """Exception type and reason, for the log file (never stderr: a URL may be in it)."""
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}: {reason if reason is not None else exc}"


def _say(message):
    sys.stderr.write(f"fake_browser: {message}\n")
    sys.stderr.flush()


def _append_log(path, record):
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)   # one write: lines of concurrent runs do not interleave
    finally:
        os.close(fd)


def run(url, mode, ca_file, timeout):
    record = {"mode": mode, "time": time.time(), "authorize_url": url, "authorize_status": None,
              "location": None, "callback_status": None, "callback_body_excerpt": None,
              "error": None}
    opener = _opener(ca_file)
    try:
        status, headers, body = _get(opener, url, timeout)
    except (OSError, ValueError, urllib.error.URLError) as exc:
        record["error"] = "authorize: " + _describe(exc)
        _say(f"authorization request failed ({type(exc).__name__})")
        return record
    record["authorize_status"] = status
    location = headers.get("Location")
    if location is not None:
        location = urllib.parse.urljoin(url, location)
    record["location"] = location
    if location is None or not 300 <= status < 400:
        record["error"] = "authorize: no redirect"
        record["authorize_body_excerpt"] = _excerpt(body)
        _say(f"the authorization endpoint answered {status} without a redirect")
        return record
    if mode == "authorize_only":
        print(location, flush=True)
        return record
    if urllib.parse.urlsplit(location).scheme not in ("http", "https"):
        record["error"] = "callback: not an http(s) URL"
        _say("the redirect does not go to an http(s) URL; not following it")
        return record
    calls = 2 if mode == "replay" else 1
    for i in range(calls):
        prefix = "callback" if i == 0 else "replay"
        try:
            status, _, body = _get(opener, location, timeout)
        except (OSError, ValueError, urllib.error.URLError) as exc:
            record[prefix + "_status"] = None
            record[prefix + "_body_excerpt"] = None
            record["error"] = f"{prefix}: " + _describe(exc)
            _say(f"{prefix} request failed ({type(exc).__name__})")
            continue
        record[prefix + "_status"] = status
        record[prefix + "_body_excerpt"] = _excerpt(body)
    return record


def main(argv):
    if len(argv) != 2 or argv[1] in ("-h", "--help") or not argv[1].strip():
        sys.stderr.write("usage: fake_browser.py AUTHORIZE_URL\n"
                         "env: FAKE_BROWSER_CA, FAKE_BROWSER_LOG, "
                         f"FAKE_BROWSER_MODE ({'|'.join(MODES)}), FAKE_BROWSER_TIMEOUT\n")
        return 2
    mode = os.environ.get("FAKE_BROWSER_MODE") or "follow"
    if mode not in MODES:
        _say(f"FAKE_BROWSER_MODE must be one of {', '.join(MODES)}")
        return 2
    try:
        timeout = float(os.environ.get("FAKE_BROWSER_TIMEOUT") or 10)
    except ValueError:
        _say("FAKE_BROWSER_TIMEOUT must be a number of seconds")
        return 2
    record = run(argv[1], mode, os.environ.get("FAKE_BROWSER_CA") or None, timeout)
    log = os.environ.get("FAKE_BROWSER_LOG")
    if log:
        try:
            _append_log(log, record)
        except OSError as exc:
            _say(f"cannot write FAKE_BROWSER_LOG ({type(exc).__name__})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

#!/usr/bin/env python3
"""For scripts that run longer than a token lives: ask tokend for the token
each time it is needed instead of reading it once. tokend answers from memory
(a refresh happens in the background, before expiry), so calling this per
request costs a few milliseconds.

    from token_helper import tokend_token, tokend_authorization
    headers = {"Authorization": tokend_authorization("jira")}
"""
import subprocess


def tokend_token(profile, min_valid=60):
    """The bare token, valid for at least min_valid seconds."""
    return _tokenctl("token", profile, "--min-valid", str(min_valid))


def tokend_authorization(profile, min_valid=60):
    """The whole Authorization header value ("Bearer ..." or "Basic ...")."""
    line = _tokenctl("token", profile, "--min-valid", str(min_valid), "--format", "header")
    return line.split(": ", 1)[1]


def _tokenctl(*args):
    # tokenctl's exit codes: 3 tokend not running, 4 a new login is needed
    # (its message names the command); stderr is passed through for those.
    result = subprocess.run(["tokenctl", *args], stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"tokenctl {args[0]} {args[1]} failed with exit code {result.returncode}")
    return result.stdout.strip()


if __name__ == "__main__":
    import sys
    print(tokend_authorization(sys.argv[1] if len(sys.argv) > 1 else "jira").split(" ", 1)[0])

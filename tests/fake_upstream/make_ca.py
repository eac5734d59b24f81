#!/usr/bin/env python3
"""Creates a throw-away test CA and a server certificate signed by it.

    python3 make_ca.py DIR [--days N] [--key-type rsa|ec]

writes into DIR:

    ca.pem      CA certificate   basicConstraints=critical,CA:TRUE
                                 keyUsage=critical,keyCertSign,cRLSign
    ca.key      CA private key (0600)
    server.pem  server certificate for IP:127.0.0.1, DNS:localhost, IP:::1
                                 basicConstraints=CA:FALSE
                                 keyUsage=digitalSignature,keyEncipherment
                                 extendedKeyUsage=serverAuth
    server.key  server private key (0600)

Everything is done with the ``openssl`` command line tool (works with
OpenSSL 3.0 as shipped by Debian 12); the result is checked with
``openssl verify`` before returning. Importable: ``make_ca(dir)`` returns a
dict of the four paths.
"""
import argparse
import os
import secrets
import subprocess
import sys
import tempfile

DEFAULT_DAYS = 3

_CONFIG = """\
[ req ]
distinguished_name = req_dn
prompt             = no
[ req_dn ]
CN = unused
[ v3_ca ]
basicConstraints       = critical, CA:TRUE
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
[ v3_server ]
basicConstraints       = CA:FALSE
keyUsage               = digitalSignature, keyEncipherment
extendedKeyUsage       = serverAuth
subjectAltName         = IP:127.0.0.1, DNS:localhost, IP:::1
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid, issuer
"""


def _openssl(*args, cwd):
    """Runs openssl with a private umask; raises with its stderr on failure."""
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                          umask=0o077, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _new_key_args(key_type):
    if key_type == "rsa":
        return ["-newkey", "rsa:2048"]
    if key_type == "ec":
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    raise ValueError(f"unknown key type {key_type!r}")


def make_ca(directory, days=DEFAULT_DAYS, key_type="rsa"):
    """Creates ca.pem, ca.key, server.pem, server.key in `directory`.

    Returns {"ca_file", "ca_key", "cert_file", "key_file"} (absolute paths).
    """
    directory = os.path.abspath(directory)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    paths = {
        "ca_file": os.path.join(directory, "ca.pem"),
        "ca_key": os.path.join(directory, "ca.key"),
        "cert_file": os.path.join(directory, "server.pem"),
        "key_file": os.path.join(directory, "server.key"),
    }
    with tempfile.TemporaryDirectory(prefix="make_ca-", dir=directory) as work:
        cfg = os.path.join(work, "openssl.cnf")
        with open(cfg, "w") as f:
            f.write(_CONFIG)
        csr = os.path.join(work, "server.csr")
        tag = secrets.token_hex(4)
        _openssl("req", "-x509", "-new", *_new_key_args(key_type), "-nodes", "-sha256",
                 "-days", str(days), "-subj", f"/O=tokend tests/CN=fake upstream test CA {tag}",
                 "-config", cfg, "-extensions", "v3_ca",
                 "-keyout", paths["ca_key"], "-out", paths["ca_file"], cwd=work)
        _openssl("req", "-new", *_new_key_args(key_type), "-nodes", "-sha256",
                 "-subj", "/O=tokend tests/CN=localhost", "-config", cfg,
                 "-keyout", paths["key_file"], "-out", csr, cwd=work)
        _openssl("x509", "-req", "-in", csr, "-CA", paths["ca_file"], "-CAkey", paths["ca_key"],
                 "-set_serial", "0x" + secrets.token_hex(16), "-sha256", "-days", str(days),
                 "-extfile", cfg, "-extensions", "v3_server", "-out", paths["cert_file"], cwd=work)
    for key in ("ca_key", "key_file"):
        os.chmod(paths[key], 0o600)
    for cert in ("ca_file", "cert_file"):
        os.chmod(paths[cert], 0o644)
    out = _openssl("verify", "-CAfile", paths["ca_file"], "-purpose", "sslserver",
                   paths["cert_file"], cwd=directory)
    if not out.strip().endswith("OK"):
        raise RuntimeError(f"openssl verify did not accept the server certificate: {out!r}")
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir")
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS)
    parser.add_argument("--key-type", choices=("rsa", "ec"), default="rsa")
    args = parser.parse_args(argv)
    try:
        paths = make_ca(args.dir, days=args.days, key_type=args.key_type)
    except (RuntimeError, OSError) as e:
        print(f"make_ca: {e}", file=sys.stderr)
        return 1
    for name in ("ca_file", "ca_key", "cert_file", "key_file"):
        print(paths[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())

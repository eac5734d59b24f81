#!/bin/sh
# tokend must link SQLCipher and never plain SQLite: whichever of the two is
# loaded first wins, and sqlite3_key on a plain SQLite handle crashes.
set -eu
bin="$1"
deps=$(ldd "$bin")
echo "$deps"
if ! echo "$deps" | grep -q 'libsqlcipher\.so'; then
  echo "FAIL: $bin does not link libsqlcipher" >&2
  exit 1
fi
if echo "$deps" | grep -q 'libsqlite3\.so'; then
  echo "FAIL: $bin links libsqlite3 next to libsqlcipher" >&2
  exit 1
fi
echo "ok: $bin links libsqlcipher and not libsqlite3"

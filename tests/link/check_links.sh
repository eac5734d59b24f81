#!/bin/sh
# Link rules that protect behaviour:
#   check_links.sh daemon BIN  - tokend links SQLCipher and never plain SQLite:
#       whichever is loaded first wins, and sqlite3_key on a plain SQLite
#       handle crashes.
#   check_links.sh ctl BIN     - tokenctl links none of libcurl, libuv,
#       libsqlcipher: loading libcurl alone costs 10-15 ms per call.
set -eu
mode="$1"
bin="$2"
deps=$(ldd "$bin")
echo "$deps"
fail() { echo "FAIL: $*" >&2; exit 1; }
case "$mode" in
  daemon)
    echo "$deps" | grep -q 'libsqlcipher\.so' || fail "$bin does not link libsqlcipher"
    if echo "$deps" | grep -q 'libsqlite3\.so'; then fail "$bin links libsqlite3 next to libsqlcipher"; fi
    echo "ok: $bin links libsqlcipher and not libsqlite3" ;;
  ctl)
    for lib in libcurl libuv libsqlcipher libsqlite3; do
      if echo "$deps" | grep -q "$lib"; then fail "$bin links $lib"; fi
    done
    echo "ok: $bin links none of libcurl, libuv, libsqlcipher, libsqlite3" ;;
  *) fail "usage: check_links.sh daemon|ctl BINARY" ;;
esac

// Where the database key comes from, first found wins:
//   1. --key-file / TOKEND_KEY_FILE (must exist)
//   2. systemd credential $CREDENTIALS_DIRECTORY/tokend.key
//   3. TOKEND_KEY (64 hex characters)
//   4. the default key file, if it exists
//   5. first start only (no database yet): 32 random bytes written to the
//      default key file, 0600.
// A key of 32 bytes (binary, or 64 hex characters) is applied as a raw key
// with no KDF; anything else is a passphrase and goes through SQLCipher's KDF.
#pragma once

#include <filesystem>
#include <string>

#include "core/error.hpp"
#include "core/paths.hpp"
#include "core/secret.hpp"

namespace tokend::store {

enum class KeyKind { raw, passphrase };

struct DbKey {
  Secret material;  // 32 raw bytes, or the passphrase
  KeyKind kind = KeyKind::raw;
  std::string source;  // for messages: "key file /x/db.key", "TOKEND_KEY", ...
};

struct KeyOptions {
  std::filesystem::path key_file;
  bool key_file_explicit = false;
  std::filesystem::path database;  // to decide whether a key may be generated
};

Result<DbKey> resolve_key(const KeyOptions& options, const EnvLookup& env);

// Interprets the contents of a key file or credential. Trailing whitespace
// is ignored for text keys; an empty key is an error.
Result<DbKey> key_from_contents(const Secret& contents, std::string source);

inline constexpr std::size_t k_raw_key_bytes = 32;

}  // namespace tokend::store

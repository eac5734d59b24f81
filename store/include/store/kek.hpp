// The key-encryption key (KEK) of the PostgreSQL store: it wraps the random
// data key of every row that holds a secret (store/pg_store.hpp).
//
// Where it comes from, first found wins:
//   1. --kek-file / TOKEND_KEK_FILE (must exist; 0600, owned by us)
//   2. systemd credential $CREDENTIALS_DIRECTORY/tokend.kek (works with
//      LoadCredentialEncrypted=)
//   3. TOKEND_KEK (64 hex characters). Read it through
//      process_env_without({k_kek_env}) (core/paths.hpp): the variable is
//      then wiped from the environment block and unset before anything runs.
// The key is 32 bytes: a file holds them raw or as 64 hex characters. There
// is no passphrase form and no generated default: every replica of a server
// must use the same key, so it is made once by the operator
// (openssl rand -hex 32).
//
// The key id names the key in every row it wraps, so keys can rotate. It is
// --kek-id / TOKEND_KEK_ID when given, otherwise derived from the key
// ("kek-" and 16 hex characters of HMAC-SHA256(key, "tokend key id")):
// stable for a key, different for another one, and no help in guessing it.
#pragma once

#include <filesystem>
#include <string>

#include "core/error.hpp"
#include "core/paths.hpp"
#include "core/secret.hpp"

namespace tokend::store {

inline constexpr const char* k_kek_env = "TOKEND_KEK";
inline constexpr const char* k_kek_file_env = "TOKEND_KEK_FILE";
inline constexpr const char* k_kek_id_env = "TOKEND_KEK_ID";
inline constexpr const char* k_kek_credential = "tokend.kek";

struct Kek {
  Secret material;     // 32 bytes
  std::string id;      // stored in each row; 1-64 of [A-Za-z0-9._-]
  std::string source;  // for messages: "KEK file /etc/tokend/kek", "TOKEND_KEK", ...
};

struct KekOptions {
  std::filesystem::path key_file;  // --kek-file; empty: TOKEND_KEK_FILE or the next source
  std::string key_id;              // --kek-id; empty: TOKEND_KEK_ID or derived
};

Result<Kek> resolve_kek(const KekOptions& options, const EnvLookup& env);

// A KEK from the bytes of a file or credential: 32 raw bytes, or 64 hex
// characters with optional trailing whitespace. `id` empty: derived.
Result<Kek> kek_from_contents(const Secret& contents, std::string source, std::string id = {});

// The derived id of a key.
std::string derived_kek_id(const Secret& material);

// Checks an id given by the operator.
Result<> validate_kek_id(std::string_view id);

}  // namespace tokend::store

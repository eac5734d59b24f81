#include "store/pg_store.hpp"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <spdlog/spdlog.h>

#include <array>

#include "core/random.hpp"
#include "store/detail/envelope.hpp"
#include "store/detail/pg.hpp"

namespace tokend::store {

namespace detail {

// What a PgDatabase and every store it handed out share.
struct PgShared {
  pg::Connection conn;
  Kek kek;
  const Clock* clock;
};

}  // namespace detail

namespace {

using detail::pg::Params;
using detail::pg::Rows;
using detail::pg::Transaction;

// The first part of every piece of additional data: the envelope scheme of
// this store, so a value encrypted for anything else never opens here.
constexpr std::string_view k_aad_scheme = "tokend-pg-v1";
constexpr std::string_view k_key_check_plaintext = "tokend key check";
// pg_advisory_xact_lock key for the key checks and rotation: "tokkey".
constexpr std::int64_t k_key_lock = 0x746f6b6b6579;
constexpr std::size_t k_max_user_id = 256;

// The rows that hold secrets, and the column naming the row within a user.
struct SecretTable {
  const char* table;
  const char* row_column;
  const char* what;  // for messages
};
constexpr SecretTable k_profiles_table{"profiles", "name", "profile"};
constexpr SecretTable k_credentials_table{"credentials", "profile", "credential"};
constexpr SecretTable k_login_flows_table{"login_flows", "profile", "login flow"};
// Expired login flows deleted by one statement (at start, and with each new
// flow), so the work of one is bounded.
constexpr std::int64_t k_login_flow_prune_batch = 500;

// --- the envelope of a row --------------------------------------------------

std::string data_key_aad(std::string_view kek_id, const SecretTable& t, std::string_view user,
                         std::string_view row) {
  return detail::associated_data({k_aad_scheme, "data-key", kek_id, t.table, user, row});
}

std::string column_aad(const SecretTable& t, std::string_view user, std::string_view row,
                       std::string_view column) {
  return detail::associated_data({k_aad_scheme, t.table, user, row, column});
}

std::string key_check_aad(std::string_view kek_id) {
  return detail::associated_data({k_aad_scheme, "key-check", kek_id});
}

// A fresh data key for one write of a row, and the same key wrapped by the
// KEK. Every write of a row's secrets makes a new one.
struct RowKey {
  Secret key;
  std::string wrapped;
};

Result<RowKey> new_row_key(const Kek& kek, const SecretTable& t, std::string_view user,
                           std::string_view row) {
  auto key = random_secret(detail::k_aes256_key_bytes);
  if (!key) return std::unexpected(key.error());
  auto wrapped = detail::seal(kek.material, key->reveal(), data_key_aad(kek.id, t, user, row));
  if (!wrapped) return std::unexpected(wrapped.error());
  return RowKey{std::move(*key), std::move(*wrapped)};
}

std::string row_name(const SecretTable& t, std::string_view user, std::string_view row) {
  return fmt::format("{} '{}' of user '{}'", t.what, row, user);
}

// Inside a transaction that has just written a data key wrapped by `kek`:
// the key must still be the database's. A replica still on the old key after
// `tokend rotate-key` would otherwise write a row (a new profile's secret, an
// empty credential's first tokens) that no key opens any more. The rotation
// locks both tables against writers, so this check, made after the write,
// sees either the key before the rotation (which then re-wraps the row) or
// the rotation's result.
Result<> check_key_still_current(detail::pg::Connection& conn, const Kek& kek, const SecretTable& t,
                                 std::string_view user, std::string_view row) {
  auto rows = conn.exec("SELECT 1 FROM key_checks WHERE kek_id = $1", Params().text(kek.id));
  if (!rows) return std::unexpected(rows.error());
  if (!rows->empty()) return {};
  return fail(Errc::wrong_key,
              fmt::format("the {} was not written: the key-encryption key from {} (id '{}') is "
                          "no longer the database's, which was rotated (tokend rotate-key); "
                          "point kek-file at the new key and reload tokend (SIGHUP)",
                          row_name(t, user, row), kek.source, kek.id));
}

Result<Secret> unwrap_row_key(const Kek& kek, std::string_view row_kek_id, std::string_view wrapped,
                              const SecretTable& t, std::string_view user, std::string_view row) {
  if (row_kek_id != kek.id) {
    return fail(
        Errc::wrong_key,
        fmt::format("the {} is encrypted under key id '{}', but the key-encryption key "
                    "from {} has id '{}'; the database's key was rotated (tokend rotate-key): "
                    "point kek-file at the new key and reload tokend (SIGHUP)",
                    row_name(t, user, row), row_kek_id, kek.source, kek.id));
  }
  auto key = detail::open(kek.material, wrapped, data_key_aad(kek.id, t, user, row));
  if (!key) {
    return fail(Errc::corrupt, fmt::format("the data key of the {} does not decrypt under key id "
                                           "'{}': it was moved from another row or altered",
                                           row_name(t, user, row), kek.id));
  }
  return key;
}

Result<std::string> encrypt_column(const RowKey& rk, const Secret& value, const SecretTable& t,
                                   std::string_view user, std::string_view row,
                                   std::string_view column) {
  if (value.empty()) return std::string();
  return detail::seal(rk.key, value.reveal(), column_aad(t, user, row, column));
}

Result<Secret> decrypt_column(const Secret& data_key, std::string_view envelope,
                              const SecretTable& t, std::string_view user, std::string_view row,
                              std::string_view column) {
  if (envelope.empty()) return Secret();
  auto plain = detail::open(data_key, envelope, column_aad(t, user, row, column));
  if (!plain) {
    return fail(Errc::corrupt,
                fmt::format("the {} of the {} does not decrypt: it was moved from another row "
                            "or altered ({})",
                            column, row_name(t, user, row), plain.error().message));
  }
  return plain;
}

Result<Secret> key_check_value(const Kek& kek) {
  auto sealed = detail::seal(kek.material, k_key_check_plaintext, key_check_aad(kek.id));
  if (!sealed) return std::unexpected(sealed.error());
  return Secret::adopt(std::move(*sealed));
}

// The key of a login flow: SHA-256 of its state (the state is never kept).
std::string state_digest(const Secret& state) {
  std::string out(EVP_MAX_MD_SIZE, '\0');
  unsigned int size = 0;
  const auto v = state.reveal();
  if (EVP_Digest(v.data(), v.size(), reinterpret_cast<unsigned char*>(out.data()), &size,
                 EVP_sha256(), nullptr) != 1) {
    size = 0;
  }
  out.resize(size);
  return out;
}

Result<> prune_login_flows(detail::pg::Connection& conn, std::int64_t now_ms) {
  auto r = conn.exec(
      "DELETE FROM login_flows WHERE ctid IN (SELECT ctid FROM login_flows WHERE expires_at <= $1 "
      "LIMIT $2)",
      Params().int8(now_ms).int8(k_login_flow_prune_batch));
  if (!r) return std::unexpected(r.error());
  return {};
}

Error not_found(std::string_view name) {
  return Error{Errc::not_found, fmt::format("no profile named '{}'", name)};
}

// Well-formed UTF-8 (no overlong forms, no surrogates, nothing past
// U+10FFFF) without C0 controls or DEL.
bool valid_utf8_without_controls(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) return false;
    std::size_t extra = 0;
    unsigned char low = 0x80;  // the range of the second byte
    unsigned char high = 0xbf;
    if (c < 0x80) {
      extra = 0;
    } else if (c >= 0xc2 && c <= 0xdf) {
      extra = 1;
    } else if (c >= 0xe0 && c <= 0xef) {
      extra = 2;
      if (c == 0xe0) low = 0xa0;
      if (c == 0xed) high = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      extra = 3;
      if (c == 0xf0) low = 0x90;
      if (c == 0xf4) high = 0x8f;
    } else {
      return false;
    }
    if (i + extra >= s.size()) return false;
    for (std::size_t k = 1; k <= extra; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if (k == 1 ? (b < low || b > high) : (b & 0xc0U) != 0x80U) return false;
    }
    i += extra + 1;
  }
  return true;
}

Result<> validate_user_id(std::string_view user) {
  if (user.empty() || user.size() > k_max_user_id || !valid_utf8_without_controls(user)) {
    return fail(Errc::invalid_argument,
                "a user id is 1-256 bytes of UTF-8 without control characters");
  }
  return {};
}

// --- reading rows -----------------------------------------------------------

constexpr const char* k_profile_columns =
    "SELECT name, kind, provider, config, kek_id, wrapped_key, client_secret, created_at, "
    "updated_at FROM profiles WHERE user_id = $1";

Result<Profile> profile_from_row(const Rows& r, int i, const Kek& kek, std::string_view user) {
  Profile p;
  p.name = r.text(i, 0);
  auto kind = parse_credential_kind(r.bytes(i, 1));
  if (!kind) return std::unexpected(Error{Errc::corrupt, kind.error().message});
  p.kind = *kind;
  p.provider = r.text(i, 2);
  auto config = read_config_column(r.bytes(i, 3), p.name);
  if (!config) return std::unexpected(config.error());
  p.config = std::move(*config);
  if (!r.is_null(i, 6)) {
    auto key = unwrap_row_key(kek, r.bytes(i, 4), r.bytes(i, 5), k_profiles_table, user, p.name);
    if (!key) return std::unexpected(key.error());
    auto secret =
        decrypt_column(*key, r.bytes(i, 6), k_profiles_table, user, p.name, "client_secret");
    if (!secret) return std::unexpected(secret.error());
    p.client_secret = std::move(*secret);
  }
  p.created_at_ms = r.int8(i, 7);
  p.updated_at_ms = r.int8(i, 8);
  return p;
}

constexpr const char* k_credential_columns =
    "SELECT profile, kek_id, wrapped_key, access_token, refresh_token, previous_refresh_token, "
    "previous_refresh_until, token_type, scope, expires_at, obtained_at, generation, state, "
    "last_error, refresh_inflight_since FROM credentials WHERE user_id = $1";

Result<Credential> credential_from_row(const Rows& r, int i, const Kek& kek,
                                       std::string_view user) {
  Credential c;
  c.profile = r.text(i, 0);
  if (!r.is_null(i, 3) || !r.is_null(i, 4) || !r.is_null(i, 5)) {
    auto key =
        unwrap_row_key(kek, r.bytes(i, 1), r.bytes(i, 2), k_credentials_table, user, c.profile);
    if (!key) return std::unexpected(key.error());
    constexpr std::array<std::pair<int, const char*>, 3> k_columns{
        {{3, "access_token"}, {4, "refresh_token"}, {5, "previous_refresh_token"}}};
    std::array<Secret*, 3> out{&c.access_token, &c.refresh_token, &c.previous_refresh_token};
    for (std::size_t k = 0; k < k_columns.size(); ++k) {
      const auto& [col, column] = k_columns[k];
      auto plain =
          decrypt_column(*key, r.bytes(i, col), k_credentials_table, user, c.profile, column);
      if (!plain) return std::unexpected(plain.error());
      *out[k] = std::move(*plain);
    }
  }
  c.previous_refresh_until_ms = r.opt_int8(i, 6);
  c.token_type = r.text(i, 7);
  c.scope = r.text(i, 8);
  c.expires_at_ms = r.opt_int8(i, 9);
  c.obtained_at_ms = r.opt_int8(i, 10);
  c.generation = r.int8(i, 11);
  auto state = parse_cred_state(r.bytes(i, 12));
  if (!state) return std::unexpected(state.error());
  c.state = *state;
  c.last_error = r.text(i, 13);
  c.refresh_inflight_since_ms = r.opt_int8(i, 14);
  return c;
}

// --- the key check ----------------------------------------------------------

Error wrong_kek(const Kek& kek, std::string_view detail) {
  return Error{Errc::wrong_key,
               fmt::format("the key-encryption key from {} (id '{}') does not open this "
                           "database: {}. Nothing was changed; use the key its rows were "
                           "written with",
                           kek.source, kek.id, detail)};
}

// Proves `kek` is the database's key before anything is read or written; on
// a database without one yet, makes it the database's key when `may_adopt`.
Result<> check_kek(detail::pg::Connection& conn, const Kek& kek, std::int64_t now_ms,
                   bool may_adopt = true) {
  auto tx = Transaction::begin(conn);
  if (!tx) return std::unexpected(tx.error());
  if (auto r = conn.exec("SELECT pg_advisory_xact_lock($1)", Params().int8(k_key_lock)); !r) {
    return std::unexpected(r.error());
  }
  auto rows = conn.exec("SELECT kek_id, check_value FROM key_checks ORDER BY kek_id");
  if (!rows) return std::unexpected(rows.error());
  std::string others;
  for (int i = 0; i < rows->size(); ++i) {
    if (rows->bytes(i, 0) != kek.id) {
      others += (others.empty() ? "'" : ", '") + rows->text(i, 0) + "'";
      continue;
    }
    if (!detail::open(kek.material, rows->bytes(i, 1), key_check_aad(kek.id))) {
      return std::unexpected(wrong_kek(kek, "it is not the key that has this id"));
    }
    return tx->commit();
  }
  if (!others.empty()) {
    return std::unexpected(
        wrong_kek(kek, fmt::format("the rows are encrypted under key id {}", others)));
  }
  if (!may_adopt) {
    return std::unexpected(wrong_kek(kek, "the database has no key check to prove it against"));
  }
  // No key yet: a new database, unless encrypted rows lost their key check
  // (then no key can be proven right, and none is made the database's key).
  auto encrypted = conn.exec(
      "SELECT (SELECT count(*) FROM profiles WHERE wrapped_key IS NOT NULL) + "
      "(SELECT count(*) FROM credentials WHERE wrapped_key IS NOT NULL)");
  if (!encrypted) return std::unexpected(encrypted.error());
  if (encrypted->int8(0, 0) != 0) {
    return fail(Errc::corrupt,
                "the database holds encrypted rows but no key check (the key_checks table was "
                "emptied); nothing was changed: restore key_checks or the database from a "
                "backup");
  }
  auto value = key_check_value(kek);
  if (!value) return std::unexpected(value.error());
  if (auto r =
          conn.exec("INSERT INTO key_checks (kek_id, check_value, created_at) VALUES ($1, $2, $3)",
                    Params().text(kek.id).bytes(value->reveal()).int8(now_ms));
      !r) {
    return std::unexpected(r.error());
  }
  return tx->commit();
}

}  // namespace

// --- PgDatabase -------------------------------------------------------------

PgDatabase::PgDatabase(std::shared_ptr<detail::PgShared> shared) : m_shared(std::move(shared)) {}
PgDatabase::PgDatabase(PgDatabase&&) noexcept = default;
PgDatabase& PgDatabase::operator=(PgDatabase&&) noexcept = default;
PgDatabase::~PgDatabase() = default;

Result<PgDatabase> PgDatabase::open(const Secret& conninfo, Kek kek, const Clock& clock) {
  if (kek.material.size() != detail::k_aes256_key_bytes) {
    return fail(Errc::config,
                fmt::format("the key-encryption key from {} is not 32 bytes", kek.source));
  }
  if (auto r = validate_kek_id(kek.id); !r) return std::unexpected(r.error());
  auto conn = detail::pg::Connection::open(conninfo);
  if (!conn) return std::unexpected(conn.error());
  if (auto r = detail::pg::migrate(*conn); !r) {
    return std::unexpected(r.error().context("preparing the PostgreSQL schema"));
  }
  if (auto r = check_kek(*conn, kek, to_unix_ms(clock.wall_now())); !r) {
    return std::unexpected(r.error());
  }
  // Login flows that expired while no replica ran.
  if (auto r = prune_login_flows(*conn, to_unix_ms(clock.wall_now())); !r) {
    return std::unexpected(r.error().context("deleting expired login flows"));
  }
  return PgDatabase(std::make_shared<detail::PgShared>(
      detail::PgShared{std::move(*conn), std::move(kek), &clock}));
}

Result<> check_user_id(std::string_view user_id) {
  return validate_user_id(user_id);
}

Result<PgStore> PgDatabase::store_for(std::string_view user_id) {
  if (auto r = validate_user_id(user_id); !r) return std::unexpected(r.error());
  return PgStore(m_shared, std::string(user_id));
}

const std::string& PgDatabase::key_id() const {
  return m_shared->kek.id;
}

Result<std::vector<std::string>> PgDatabase::users() {
  auto rows = m_shared->conn.exec("SELECT DISTINCT user_id FROM profiles ORDER BY user_id");
  if (!rows) return std::unexpected(rows.error());
  std::vector<std::string> out;
  out.reserve(static_cast<std::size_t>(rows->size()));
  for (int i = 0; i < rows->size(); ++i) out.emplace_back(rows->bytes(i, 0));
  return out;
}

Result<> PgDatabase::notify(const char* channel, std::string_view payload) {
  auto r = m_shared->conn.exec("SELECT pg_notify($1, $2)", Params().text(channel).text(payload));
  if (!r) return std::unexpected(r.error());
  return {};
}

Result<int> PgDatabase::schema_version() {
  return detail::pg::schema_version(m_shared->conn);
}

Result<bool> PgDatabase::use_key(Kek kek) {
  const Kek& current = m_shared->kek;
  if (kek.material.size() != detail::k_aes256_key_bytes) {
    return fail(Errc::config,
                fmt::format("the key-encryption key from {} is not 32 bytes", kek.source));
  }
  if (auto r = validate_kek_id(kek.id); !r) return std::unexpected(r.error());
  if (kek.id == current.id && kek.material.size() == current.material.size() &&
      CRYPTO_memcmp(kek.material.reveal().data(), current.material.reveal().data(),
                    kek.material.size()) == 0) {
    return false;
  }
  if (auto r = check_kek(m_shared->conn, kek, to_unix_ms(m_shared->clock->wall_now()),
                         /*may_adopt=*/false);
      !r) {
    return std::unexpected(r.error());
  }
  m_shared->kek = std::move(kek);
  return true;
}

Result<> PgDatabase::rotate_key(Kek new_kek) {
  auto& conn = m_shared->conn;
  const Kek& old = m_shared->kek;
  if (new_kek.material.size() != detail::k_aes256_key_bytes) {
    return fail(Errc::config,
                fmt::format("the key-encryption key from {} is not 32 bytes", new_kek.source));
  }
  if (auto r = validate_kek_id(new_kek.id); !r) return std::unexpected(r.error());
  if (new_kek.id == old.id) {
    return fail(Errc::invalid_argument,
                fmt::format("the new key-encryption key has the current key's id '{}'; give "
                            "it an id of its own",
                            old.id));
  }
  auto tx = Transaction::begin(conn);
  if (!tx) return std::unexpected(tx.error());
  if (auto r = conn.exec("SELECT pg_advisory_xact_lock($1)", Params().int8(k_key_lock)); !r) {
    return std::unexpected(r.error());
  }
  // Writers (of any replica) wait until the rotation commits; readers go on.
  if (auto r = conn.exec("LOCK TABLE profiles, credentials, login_flows IN EXCLUSIVE MODE"); !r) {
    return std::unexpected(r.error());
  }
  {
    auto current =
        conn.exec("SELECT check_value FROM key_checks WHERE kek_id = $1", Params().text(old.id));
    if (!current) return std::unexpected(current.error());
    if (current->empty() ||
        !detail::open(old.material, current->bytes(0, 0), key_check_aad(old.id))) {
      return std::unexpected(wrong_kek(old, "the database moved to another key meanwhile"));
    }
  }
  for (const SecretTable& t : {k_profiles_table, k_credentials_table, k_login_flows_table}) {
    auto rows = conn.exec(fmt::format("SELECT user_id, {}, kek_id, wrapped_key FROM {} WHERE "
                                      "wrapped_key IS NOT NULL",
                                      t.row_column, t.table)
                              .c_str());
    if (!rows) return std::unexpected(rows.error());
    const std::string update =
        fmt::format("UPDATE {} SET kek_id = $3, wrapped_key = $4 WHERE user_id = $1 AND {} = $2",
                    t.table, t.row_column);
    for (int i = 0; i < rows->size(); ++i) {
      const std::string_view user = rows->bytes(i, 0);
      const std::string_view row = rows->bytes(i, 1);
      auto key = unwrap_row_key(old, rows->bytes(i, 2), rows->bytes(i, 3), t, user, row);
      if (!key) return std::unexpected(key.error().context("rotating the key-encryption key"));
      auto wrapped =
          detail::seal(new_kek.material, key->reveal(), data_key_aad(new_kek.id, t, user, row));
      if (!wrapped) return std::unexpected(wrapped.error());
      if (auto r = conn.exec(update.c_str(),
                             Params().text(user).text(row).text(new_kek.id).bytes(*wrapped));
          !r) {
        return std::unexpected(r.error());
      }
    }
  }
  auto value = key_check_value(new_kek);
  if (!value) return std::unexpected(value.error());
  if (auto r = conn.exec("DELETE FROM key_checks"); !r) return std::unexpected(r.error());
  if (auto r =
          conn.exec("INSERT INTO key_checks (kek_id, check_value, created_at) VALUES ($1, $2, $3)",
                    Params()
                        .text(new_kek.id)
                        .bytes(value->reveal())
                        .int8(to_unix_ms(m_shared->clock->wall_now())));
      !r) {
    return std::unexpected(r.error());
  }
  if (auto r = tx->commit(); !r) return std::unexpected(r.error());
  m_shared->kek = std::move(new_kek);
  return {};
}

// --- PgStore ----------------------------------------------------------------

PgStore::PgStore(std::shared_ptr<detail::PgShared> shared, std::string user)
    : m_shared(std::move(shared)), m_user(std::move(user)) {}
PgStore::PgStore(PgStore&&) noexcept = default;
PgStore& PgStore::operator=(PgStore&&) noexcept = default;
PgStore::~PgStore() = default;

Result<> PgStore::put_profile(const Profile& p) {
  if (auto r = validate_profile_name(p.name); !r) return r;
  auto& conn = m_shared->conn;
  const std::int64_t now = to_unix_ms(m_shared->clock->wall_now());
  const std::string config = config_column(p.config);
  std::optional<RowKey> key;
  std::string secret_column;
  if (!p.client_secret.empty()) {
    auto k = new_row_key(m_shared->kek, k_profiles_table, m_user, p.name);
    if (!k) return std::unexpected(k.error());
    auto sealed =
        encrypt_column(*k, p.client_secret, k_profiles_table, m_user, p.name, "client_secret");
    if (!sealed) return std::unexpected(sealed.error());
    key = std::move(*k);
    secret_column = std::move(*sealed);
  }
  Params params;
  params.text(m_user).text(p.name).text(to_string(p.kind)).text(p.provider).text(config);
  if (key) {
    params.text(m_shared->kek.id).bytes(key->wrapped).bytes(secret_column);
  } else {
    params.null_text().bytes_or_null({}).bytes_or_null({});
  }
  params.int8(now);

  auto tx = Transaction::begin(conn);
  if (!tx) return std::unexpected(tx.error());
  if (auto r = conn.exec(
          "INSERT INTO profiles (user_id, name, kind, provider, config, kek_id, wrapped_key, "
          "client_secret, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) "
          "ON CONFLICT (user_id, name) DO UPDATE SET kind = EXCLUDED.kind, "
          "provider = EXCLUDED.provider, config = EXCLUDED.config, kek_id = EXCLUDED.kek_id, "
          "wrapped_key = EXCLUDED.wrapped_key, client_secret = EXCLUDED.client_secret, "
          "updated_at = EXCLUDED.updated_at",
          params);
      !r) {
    return std::unexpected(r.error());
  }
  if (auto r = conn.exec(
          "INSERT INTO credentials (user_id, profile) VALUES ($1, $2) ON CONFLICT DO NOTHING",
          Params().text(m_user).text(p.name));
      !r) {
    return std::unexpected(r.error());
  }
  if (key) {
    if (auto r = check_key_still_current(conn, m_shared->kek, k_profiles_table, m_user, p.name);
        !r) {
      return r;
    }
  }
  return tx->commit();
}

Result<Profile> PgStore::get_profile(std::string_view name) {
  auto rows = m_shared->conn.exec((std::string(k_profile_columns) + " AND name = $2").c_str(),
                                  Params().text(m_user).text(name));
  if (!rows) return std::unexpected(rows.error());
  if (rows->empty()) return std::unexpected(not_found(name));
  return profile_from_row(*rows, 0, m_shared->kek, m_user);
}

Result<std::vector<Profile>> PgStore::list_profiles() {
  auto rows = m_shared->conn.exec((std::string(k_profile_columns) + " ORDER BY name").c_str(),
                                  Params().text(m_user));
  if (!rows) return std::unexpected(rows.error());
  std::vector<Profile> out;
  out.reserve(static_cast<std::size_t>(rows->size()));
  for (int i = 0; i < rows->size(); ++i) {
    auto p = profile_from_row(*rows, i, m_shared->kek, m_user);
    if (!p) return std::unexpected(p.error());
    out.push_back(std::move(*p));
  }
  return out;
}

Result<> PgStore::delete_profile(std::string_view name) {
  // One statement: the credential goes with it (ON DELETE CASCADE).
  auto rows = m_shared->conn.exec("DELETE FROM profiles WHERE user_id = $1 AND name = $2",
                                  Params().text(m_user).text(name));
  if (!rows) return std::unexpected(rows.error());
  if (rows->affected() == 0) return std::unexpected(not_found(name));
  return {};
}

Result<Credential> PgStore::read_credential_row(std::string_view name, bool for_update) {
  const std::string sql =
      std::string(k_credential_columns) + " AND profile = $2" + (for_update ? " FOR UPDATE" : "");
  auto rows = m_shared->conn.exec(sql.c_str(), Params().text(m_user).text(name));
  if (!rows) return std::unexpected(rows.error());
  if (rows->empty()) return std::unexpected(not_found(name));
  return credential_from_row(*rows, 0, m_shared->kek, m_user);
}

Result<Credential> PgStore::get_credential(std::string_view name) {
  return read_credential_row(name, false);
}

Result<std::vector<Credential>> PgStore::list_credentials() {
  auto rows = m_shared->conn.exec((std::string(k_credential_columns) + " ORDER BY profile").c_str(),
                                  Params().text(m_user));
  if (!rows) return std::unexpected(rows.error());
  std::vector<Credential> out;
  out.reserve(static_cast<std::size_t>(rows->size()));
  for (int i = 0; i < rows->size(); ++i) {
    auto c = credential_from_row(*rows, i, m_shared->kek, m_user);
    if (!c) return std::unexpected(c.error());
    out.push_back(std::move(*c));
  }
  return out;
}

Result<std::int64_t> PgStore::store_token_set(std::string_view name, const TokenSet& t,
                                              std::optional<std::int64_t> expected_generation,
                                              std::optional<std::int64_t> keep_previous_until_ms) {
  // A refresh token alone is a token set too (an import from another tool):
  // the token service refreshes it at once.
  if (t.access_token.empty() && t.refresh_token.empty()) {
    return fail(Errc::invalid_argument, "a token set needs an access token or a refresh token");
  }
  auto& conn = m_shared->conn;
  auto tx = Transaction::begin(conn);
  if (!tx) return std::unexpected(tx.error());
  // The row lock holds off every other writer of this credential (another
  // replica's too) until the commit, so the generation check is exact.
  auto current = read_credential_row(name, /*for_update=*/true);
  if (!current) return std::unexpected(current.error());
  if (expected_generation && *expected_generation != current->generation) {
    return fail(Errc::conflict,
                fmt::format("credential of '{}' changed meanwhile (generation {} instead of {})",
                            name, current->generation, *expected_generation));
  }
  // A rotated refresh token demotes the current one to "previous"; a response
  // without a refresh token keeps the current one.
  const bool rotated = !t.refresh_token.empty() && !current->refresh_token.empty() &&
                       !(t.refresh_token == current->refresh_token);
  const Secret& new_refresh = t.refresh_token.empty() ? current->refresh_token : t.refresh_token;
  const Secret& previous = rotated ? current->refresh_token : current->previous_refresh_token;
  const std::optional<std::int64_t> previous_until =
      previous.empty() ? std::nullopt
                       : (rotated ? keep_previous_until_ms : current->previous_refresh_until_ms);
  const std::int64_t generation = current->generation + 1;

  auto key = new_row_key(m_shared->kek, k_credentials_table, m_user, name);
  if (!key) return std::unexpected(key.error());
  std::array<std::string, 3> sealed;
  const std::array<std::pair<const Secret*, const char*>, 3> columns{
      {{&t.access_token, "access_token"},
       {&new_refresh, "refresh_token"},
       {&previous, "previous_refresh_token"}}};
  for (std::size_t i = 0; i < columns.size(); ++i) {
    auto s = encrypt_column(*key, *columns[i].first, k_credentials_table, m_user, name,
                            columns[i].second);
    if (!s) return std::unexpected(s.error());
    sealed[i] = std::move(*s);
  }
  if (auto r = conn.exec(
          "UPDATE credentials SET kek_id = $3, wrapped_key = $4, access_token = $5, "
          "refresh_token = $6, previous_refresh_token = $7, previous_refresh_until = $8, "
          "token_type = $9, scope = $10, expires_at = $11, obtained_at = $12, generation = $13, "
          "state = 'valid', last_error = '', refresh_inflight_since = NULL "
          "WHERE user_id = $1 AND profile = $2",
          Params()
              .text(m_user)
              .text(name)
              .text(m_shared->kek.id)
              .bytes(key->wrapped)
              .bytes_or_null(sealed[0])
              .bytes_or_null(sealed[1])
              .bytes_or_null(sealed[2])
              .int8(previous_until)
              .text(t.token_type)
              .text(t.scope)
              .int8(t.expires_at_ms)
              .int8(t.obtained_at_ms)
              .int8(generation));
      !r) {
    return std::unexpected(r.error());
  }
  if (auto r = check_key_still_current(conn, m_shared->kek, k_credentials_table, m_user, name);
      !r) {
    return std::unexpected(r.error());
  }
  if (auto r = tx->commit(); !r) return std::unexpected(r.error());
  return generation;
}

namespace {

// The advisory lock key of one credential: 64 bits of a hash of the user
// and the profile (neither holds a newline). Two credentials that collide
// only make one replica wait for the other's refresh.
std::string claim_key(std::string_view user, std::string_view profile) {
  return fmt::format("tokend-refresh\n{}\n{}", user, profile);
}

}  // namespace

Result<RefreshClaim> PgStore::claim_refresh(std::string_view name) {
  auto& conn = m_shared->conn;
  bool ours = false;
  auto held = m_claims.find(name);
  if (held != m_claims.end() && held->second == conn.resets()) {
    ours = true;
  } else {
    if (held != m_claims.end()) m_claims.erase(held);  // the session that held it is gone
    auto rows = conn.exec("SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                          Params().text(claim_key(m_user, name)));
    if (!rows) return std::unexpected(rows.error());
    ours = rows->int8(0, 0) != 0;
    // A reset while asking is a new session: what it answered is about
    // that one, which now holds the lock.
    if (ours) m_claims.emplace(std::string(name), conn.resets());
  }
  auto credential = read_credential_row(name, /*for_update=*/false);
  if (!credential) {
    if (ours) release_refresh(name);
    return std::unexpected(credential.error());
  }
  return RefreshClaim{ours, std::move(*credential)};
}

void PgStore::release_refresh(std::string_view name) {
  auto held = m_claims.find(name);
  if (held == m_claims.end()) return;
  const bool same_session = held->second == m_shared->conn.resets();
  m_claims.erase(held);
  if (!same_session) return;  // the lock ended with its session
  auto rows = m_shared->conn.exec("SELECT pg_advisory_unlock(hashtextextended($1, 0))",
                                  Params().text(claim_key(m_user, name)));
  if (!rows) {
    // The claim ends with the session at the latest; until then this
    // replica is the only one that refreshes the credential.
    spdlog::warn("user '{}', profile {}: releasing the refresh claim: {}", m_user, name,
                 rows.error().message);
  }
}

Result<> PgStore::mark_refresh_inflight(std::string_view name, std::int64_t at_ms) {
  auto rows = m_shared->conn.exec(
      "UPDATE credentials SET refresh_inflight_since = $3, state = 'refreshing' "
      "WHERE user_id = $1 AND profile = $2",
      Params().text(m_user).text(name).int8(at_ms));
  if (!rows) return std::unexpected(rows.error());
  if (rows->affected() == 0) return std::unexpected(not_found(name));
  return {};
}

Result<> PgStore::set_state(std::string_view name, CredState state, std::string_view last_error) {
  auto rows = m_shared->conn.exec(
      "UPDATE credentials SET state = $3, last_error = $4, refresh_inflight_since = NULL "
      "WHERE user_id = $1 AND profile = $2",
      Params().text(m_user).text(name).text(to_string(state)).text(last_error));
  if (!rows) return std::unexpected(rows.error());
  if (rows->affected() == 0) return std::unexpected(not_found(name));
  return {};
}

Result<> PgStore::clear_credential(std::string_view name) {
  auto rows = m_shared->conn.exec(
      "UPDATE credentials SET kek_id = NULL, wrapped_key = NULL, access_token = NULL, "
      "refresh_token = NULL, previous_refresh_token = NULL, previous_refresh_until = NULL, "
      "token_type = '', scope = '', expires_at = NULL, obtained_at = NULL, "
      "generation = generation + 1, state = 'empty', last_error = '', "
      "refresh_inflight_since = NULL WHERE user_id = $1 AND profile = $2",
      Params().text(m_user).text(name));
  if (!rows) return std::unexpected(rows.error());
  if (rows->affected() == 0) return std::unexpected(not_found(name));
  return {};
}

// Takes the next ids of this user's audit log (the sequence row is locked
// until the commit, so concurrent appenders of one user queue up) and
// inserts the events under them. Returns the last id.
Result<std::int64_t> PgStore::insert_audit_events(const std::vector<const AuditEvent*>& events) {
  auto& conn = m_shared->conn;
  const auto n = static_cast<std::int64_t>(events.size());
  auto last = conn.exec(
      "INSERT INTO audit_sequences (user_id, last_id) VALUES ($1, $2) ON CONFLICT (user_id) "
      "DO UPDATE SET last_id = audit_sequences.last_id + EXCLUDED.last_id RETURNING last_id",
      Params().text(m_user).int8(n));
  if (!last) return std::unexpected(last.error());
  const std::int64_t last_id = last->int8(0, 0);
  std::int64_t id = last_id - n;
  const std::int64_t now = to_unix_ms(m_shared->clock->wall_now());
  for (const AuditEvent* e : events) {
    const std::string detail = e->detail.dump(-1, ' ', false, json::Json::error_handler_t::replace);
    if (auto r = conn.exec(
            "INSERT INTO audit_events (user_id, id, at, kind, profile, peer_uid, peer_pid, "
            "detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            Params()
                .text(m_user)
                .int8(++id)
                .int8(e->at_ms != 0 ? e->at_ms : now)
                .text(e->kind)
                .text(e->profile)
                .int8(e->peer_uid)
                .int8(e->peer_pid)
                .text(detail));
        !r) {
      return std::unexpected(r.error());
    }
  }
  return last_id;
}

// Both deletes are range scans of this user's part of an index.
Result<> PgStore::prune_audit_in_transaction() {
  auto& conn = m_shared->conn;
  if (m_retention.max_rows > 0) {
    if (auto r = conn.exec("DELETE FROM audit_events WHERE user_id = $1 AND id <= "
                           "(SELECT last_id FROM audit_sequences WHERE user_id = $1) - $2",
                           Params().text(m_user).int8(m_retention.max_rows));
        !r) {
      return std::unexpected(r.error());
    }
  }
  if (m_retention.max_age.count() > 0) {
    const std::int64_t cutoff =
        to_unix_ms(m_shared->clock->wall_now()) - m_retention.max_age.count();
    if (auto r = conn.exec("DELETE FROM audit_events WHERE user_id = $1 AND at < $2",
                           Params().text(m_user).int8(cutoff));
        !r) {
      return std::unexpected(r.error());
    }
  }
  return {};
}

Result<> PgStore::prune_audit() {
  auto tx = Transaction::begin(m_shared->conn);
  if (!tx) return std::unexpected(tx.error());
  if (auto r = prune_audit_in_transaction(); !r) return r;
  return tx->commit();
}

Result<std::int64_t> PgStore::append_audit(const AuditEvent& event) {
  auto tx = Transaction::begin(m_shared->conn);
  if (!tx) return std::unexpected(tx.error());
  auto id = insert_audit_events({&event});
  if (!id) return id;
  if (auto r = prune_audit_in_transaction(); !r) return std::unexpected(r.error());
  if (auto r = tx->commit(); !r) return std::unexpected(r.error());
  return id;
}

Result<> PgStore::append_audit_batch(const std::vector<AuditEvent>& events) {
  if (events.empty()) return {};
  std::vector<const AuditEvent*> pointers;
  pointers.reserve(events.size());
  for (const auto& e : events) pointers.push_back(&e);
  auto tx = Transaction::begin(m_shared->conn);
  if (!tx) return std::unexpected(tx.error());
  if (auto r = insert_audit_events(pointers); !r) return std::unexpected(r.error());
  if (auto r = prune_audit_in_transaction(); !r) return r;
  return tx->commit();
}

Result<std::vector<AuditEvent>> PgStore::recent_audit(std::size_t limit) {
  auto rows = m_shared->conn.exec(
      "SELECT id, at, kind, profile, peer_uid, peer_pid, detail FROM audit_events "
      "WHERE user_id = $1 ORDER BY id DESC LIMIT $2",
      Params().text(m_user).int8(static_cast<std::int64_t>(limit)));
  if (!rows) return std::unexpected(rows.error());
  std::vector<AuditEvent> out;
  out.reserve(static_cast<std::size_t>(rows->size()));
  for (int i = 0; i < rows->size(); ++i) {
    AuditEvent e;
    e.id = rows->int8(i, 0);
    e.at_ms = rows->int8(i, 1);
    e.kind = rows->text(i, 2);
    e.profile = rows->text(i, 3);
    e.peer_uid = rows->opt_int8(i, 4);
    e.peer_pid = rows->opt_int8(i, 5);
    auto detail = json::parse(rows->bytes(i, 6), "stored audit detail");
    e.detail = detail ? std::move(*detail) : json::Json::object();
    out.push_back(std::move(e));
  }
  return out;
}

// --- login flows across replicas -------------------------------------------

namespace {

constexpr const char* k_login_flow_columns =
    "profile, kek_id, wrapped_key, code_verifier, redirect_uri, issuer, "
    "issuer_required::int::bigint, "
    "resource, scopes, replica, flow_id, started_at, expires_at";

Result<PendingLogin> login_flow_from_row(const Rows& r, int i, const Kek& kek,
                                         std::string_view user) {
  PendingLogin f;
  f.profile = r.text(i, 0);
  auto key =
      unwrap_row_key(kek, r.bytes(i, 1), r.bytes(i, 2), k_login_flows_table, user, f.profile);
  if (!key) return std::unexpected(key.error());
  if (!r.is_null(i, 3)) {
    auto verifier =
        decrypt_column(*key, r.bytes(i, 3), k_login_flows_table, user, f.profile, "code_verifier");
    if (!verifier) return std::unexpected(verifier.error());
    f.code_verifier = std::move(*verifier);
  }
  f.redirect_uri = r.text(i, 4);
  f.issuer = r.text(i, 5);
  f.issuer_required = r.int8(i, 6) != 0;
  f.resource = r.text(i, 7);
  auto scopes = json::parse(r.bytes(i, 8), "a login flow's scopes");
  if (!scopes || !scopes->is_array()) {
    return fail(Errc::corrupt, fmt::format("the scopes of the {} are not a JSON array",
                                           row_name(k_login_flows_table, user, f.profile)));
  }
  for (const auto& s : *scopes) {
    if (s.is_string()) f.scopes.push_back(s.get<std::string>());
  }
  f.replica = r.text(i, 9);
  f.flow_id = r.int8(i, 10);
  f.started_at_ms = r.int8(i, 11);
  f.expires_at_ms = r.int8(i, 12);
  return f;
}

}  // namespace

Result<> PgStore::put_login_flow(const Secret& state, const PendingLogin& flow) {
  if (state.empty()) return fail(Errc::invalid_argument, "a login flow needs a state");
  if (auto r = validate_profile_name(flow.profile); !r) return r;
  auto& conn = m_shared->conn;
  const std::int64_t now = to_unix_ms(m_shared->clock->wall_now());
  auto key = new_row_key(m_shared->kek, k_login_flows_table, m_user, flow.profile);
  if (!key) return std::unexpected(key.error());
  auto verifier = encrypt_column(*key, flow.code_verifier, k_login_flows_table, m_user,
                                 flow.profile, "code_verifier");
  if (!verifier) return std::unexpected(verifier.error());
  if (auto r = prune_login_flows(conn, now); !r) return r;
  // Params holds views: the values it sends live until the statement ran.
  const std::string digest = state_digest(state);
  const std::string scopes =
      json::Json(flow.scopes).dump(-1, ' ', false, json::Json::error_handler_t::replace);
  Params params;
  params.text(m_user)
      .text(flow.profile)
      .bytes(digest)
      .text(m_shared->kek.id)
      .bytes(key->wrapped)
      .bytes_or_null(*verifier)
      .text(flow.redirect_uri)
      .text(flow.issuer)
      .text(flow.issuer_required ? "true" : "false")
      .text(flow.resource)
      .text(scopes)
      .text(flow.replica)
      .int8(flow.flow_id)
      .int8(flow.started_at_ms)
      .int8(flow.expires_at_ms);
  auto tx = Transaction::begin(conn);
  if (!tx) return std::unexpected(tx.error());
  auto r = conn.exec(
      "INSERT INTO login_flows (user_id, profile, state_hash, kek_id, wrapped_key, code_verifier, "
      "redirect_uri, issuer, issuer_required, resource, scopes, replica, flow_id, started_at, "
      "expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::boolean, $10, $11, $12, $13, $14, "
      "$15) "
      "ON CONFLICT (user_id, profile) DO UPDATE SET state_hash = EXCLUDED.state_hash, "
      "kek_id = EXCLUDED.kek_id, wrapped_key = EXCLUDED.wrapped_key, "
      "code_verifier = EXCLUDED.code_verifier, redirect_uri = EXCLUDED.redirect_uri, "
      "issuer = EXCLUDED.issuer, issuer_required = EXCLUDED.issuer_required, "
      "resource = EXCLUDED.resource, scopes = EXCLUDED.scopes, replica = EXCLUDED.replica, "
      "flow_id = EXCLUDED.flow_id, started_at = EXCLUDED.started_at, expires_at = "
      "EXCLUDED.expires_at",
      params);
  if (!r) return std::unexpected(r.error());
  if (auto c =
          check_key_still_current(conn, m_shared->kek, k_login_flows_table, m_user, flow.profile);
      !c) {
    return c;
  }
  return tx->commit();
}

Result<std::optional<PendingLogin>> PgStore::take_login_flow(
    std::optional<std::string_view> profile, const Secret* state) {
  if (!profile && state == nullptr) {
    return fail(Errc::invalid_argument, "a login flow is taken by its profile or its state");
  }
  const std::int64_t now = to_unix_ms(m_shared->clock->wall_now());
  Params params;
  params.text(m_user);
  std::string sql = "DELETE FROM login_flows WHERE user_id = $1";
  int n = 1;
  if (profile) {
    params.text(*profile);
    sql += fmt::format(" AND profile = ${}", ++n);
  }
  const std::string digest = state != nullptr ? state_digest(*state) : std::string();
  if (state != nullptr) {
    params.bytes(digest);
    sql += fmt::format(" AND state_hash = ${}", ++n);
  }
  sql += fmt::format(" RETURNING {}", k_login_flow_columns);
  // The claim: one statement removes the row, so of two replicas claiming
  // one flow, exactly one gets it back.
  auto rows = m_shared->conn.exec(sql.c_str(), params);
  if (!rows) return std::unexpected(rows.error());
  if (rows->empty()) return std::optional<PendingLogin>{};
  auto f = login_flow_from_row(*rows, 0, m_shared->kek, m_user);
  if (!f) return std::unexpected(f.error());
  if (f->expires_at_ms <= now) return std::optional<PendingLogin>{};  // gone with it
  return std::optional<PendingLogin>{std::move(*f)};
}

Result<bool> PgStore::has_login_flow(std::string_view profile, const Secret& state) {
  const std::int64_t now = to_unix_ms(m_shared->clock->wall_now());
  auto rows = m_shared->conn.exec(
      "SELECT count(*) FROM login_flows WHERE user_id = $1 AND profile = $2 AND state_hash = $3 "
      "AND expires_at > $4",
      Params().text(m_user).text(profile).bytes(state_digest(state)).int8(now));
  if (!rows) return std::unexpected(rows.error());
  return rows->int8(0, 0) > 0;
}

Result<> PgStore::drop_login_flow(std::string_view profile, const Secret& state) {
  auto r = m_shared->conn.exec(
      "DELETE FROM login_flows WHERE user_id = $1 AND profile = $2 AND state_hash = $3",
      Params().text(m_user).text(profile).bytes(state_digest(state)));
  if (!r) return std::unexpected(r.error());
  return {};
}

Result<> PgDatabase::put_signin(std::string_view state_hash, const PendingSignin& signin) {
  auto& conn = m_shared->conn;
  const std::int64_t now = to_unix_ms(m_shared->clock->wall_now());
  if (auto r = conn.exec("DELETE FROM signins WHERE expires_at < $1", Params().int8(now)); !r) {
    return std::unexpected(r.error());
  }
  auto r = conn.exec(
      "INSERT INTO signins (state_hash, browser_hash, nonce, return_to, expires_at) "
      "VALUES ($1, $2, $3, $4, $5)",
      Params()
          .bytes(state_hash)
          .bytes(signin.browser_hash)
          .text(signin.nonce)
          .text(signin.return_to)
          .int8(signin.expires_at_ms));
  if (!r) return std::unexpected(r.error());
  return {};
}

Result<std::optional<PgDatabase::PendingSignin>> PgDatabase::take_signin(
    std::string_view state_hash) {
  const std::int64_t now = to_unix_ms(m_shared->clock->wall_now());
  auto rows = m_shared->conn.exec(
      "DELETE FROM signins WHERE state_hash = $1 "
      "RETURNING browser_hash, nonce, return_to, expires_at",
      Params().bytes(state_hash));
  if (!rows) return std::unexpected(rows.error());
  if (rows->empty() || rows->int8(0, 3) < now) return std::optional<PendingSignin>{};
  PendingSignin s;
  s.browser_hash = std::string(rows->bytes(0, 0));
  s.nonce = rows->text(0, 1);
  s.return_to = rows->text(0, 2);
  s.expires_at_ms = rows->int8(0, 3);
  return std::optional<PendingSignin>{std::move(s)};
}

Result<> PgDatabase::put_session(std::string_view id_hash, std::string_view user_id,
                                 std::int64_t expires_at_ms) {
  if (auto ok = check_user_id(user_id); !ok) return std::unexpected(ok.error());
  auto& conn = m_shared->conn;
  const std::int64_t now = to_unix_ms(m_shared->clock->wall_now());
  if (auto r = conn.exec("DELETE FROM sessions WHERE expires_at < $1", Params().int8(now)); !r) {
    return std::unexpected(r.error());
  }
  auto r = conn.exec(
      "INSERT INTO sessions (id_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
      Params().bytes(id_hash).text(user_id).int8(now).int8(expires_at_ms));
  if (!r) return std::unexpected(r.error());
  return {};
}

Result<std::optional<std::string>> PgDatabase::session_user(std::string_view id_hash) {
  const std::int64_t now = to_unix_ms(m_shared->clock->wall_now());
  auto rows =
      m_shared->conn.exec("SELECT user_id FROM sessions WHERE id_hash = $1 AND expires_at > $2",
                          Params().bytes(id_hash).int8(now));
  if (!rows) return std::unexpected(rows.error());
  if (rows->empty()) return std::optional<std::string>{};
  return std::optional<std::string>{rows->text(0, 0)};
}

Result<> PgDatabase::delete_session(std::string_view id_hash) {
  auto r = m_shared->conn.exec("DELETE FROM sessions WHERE id_hash = $1", Params().bytes(id_hash));
  if (!r) return std::unexpected(r.error());
  return {};
}

Secret PgDatabase::derive_key(std::string_view label) const {
  std::string out(EVP_MAX_MD_SIZE, '\0');
  unsigned int size = 0;
  const auto key = m_shared->kek.material.reveal();
  if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
           reinterpret_cast<const unsigned char*>(label.data()), label.size(),
           reinterpret_cast<unsigned char*>(out.data()), &size) == nullptr) {
    size = 0;
  }
  out.resize(size);
  return Secret::adopt(std::move(out));
}

}  // namespace tokend::store

#include "store/sqlcipher_store.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/encoding.hpp"
#include "core/fs.hpp"
#include "store/detail/db.hpp"

namespace tokend::store {

using detail::Db;
using detail::Stmt;
using detail::Transaction;

namespace {

// Hand-crafted SQL lives here; each statement is prepared once (Db::cached).
constexpr const char* k_select_credential_columns =
    "SELECT profile, access_token, refresh_token, previous_refresh_token, previous_refresh_until, "
    "token_type, scope, expires_at, obtained_at, generation, state, last_error, "
    "refresh_inflight_since FROM credentials";

constexpr const char* k_select_profile_columns =
    "SELECT name, kind, provider, config, secret_config, created_at, updated_at FROM profiles";

Result<Credential> read_credential(const Stmt& s) {
  Credential c;
  c.profile = s.get_text(0);
  c.access_token = s.get_secret(1);
  c.refresh_token = s.get_secret(2);
  c.previous_refresh_token = s.get_secret(3);
  c.previous_refresh_until_ms = s.get_opt_int(4);
  c.token_type = s.get_text(5);
  c.scope = s.get_text(6);
  c.expires_at_ms = s.get_opt_int(7);
  c.obtained_at_ms = s.get_opt_int(8);
  c.generation = s.get_int(9);
  auto state = parse_cred_state(s.get_text(10));
  if (!state) return std::unexpected(state.error());
  c.state = *state;
  c.last_error = s.get_text(11);
  c.refresh_inflight_since_ms = s.get_opt_int(12);
  return c;
}

// The secret_config column holds {"client_secret": "..."} (a JSON object, so
// that later secrets need no new column), read once when a profile is loaded.
// Every JSON copy of the secret is wiped once it is taken out.
Result<Secret> client_secret_from_column(const Secret& text) {
  if (text.empty()) return Secret();
  auto j = json::parse(text.reveal(), "stored secret config");
  if (!j || !j->is_object()) {
    return fail(Errc::corrupt, "a profile's stored secret config is not a JSON object");
  }
  Secret out;
  if (auto it = j->find("client_secret"); it != j->end() && it->is_string()) {
    out = Secret::adopt(std::move(it->get_ref<std::string&>()));
  }
  for (auto& [k, v] : j->items()) {
    if (v.is_string()) secure_wipe(v.get_ref<std::string&>());
  }
  return out;
}

Secret client_secret_column(const Secret& client_secret) {
  json::Json j = {{"client_secret", std::string(client_secret.reveal())}};
  Secret text = Secret::adopt(j.dump());
  secure_wipe(j["client_secret"].get_ref<std::string&>());
  return text;
}

Result<Profile> read_profile(const Stmt& s) {
  Profile p;
  p.name = s.get_text(0);
  auto kind = parse_credential_kind(s.get_text(1));
  if (!kind) return std::unexpected(kind.error());
  p.kind = *kind;
  p.provider = s.get_text(2);
  // The one place stored settings become typed ones.
  auto config = read_config_column(s.get_text(3), p.name);
  if (!config) return std::unexpected(config.error());
  p.config = std::move(*config);
  auto secret = client_secret_from_column(s.get_secret(4));
  if (!secret) return std::unexpected(secret.error());
  p.client_secret = std::move(*secret);
  p.created_at_ms = s.get_int(5);
  p.updated_at_ms = s.get_int(6);
  return p;
}

Error not_found(std::string_view name) {
  return Error{Errc::not_found, fmt::format("no profile named '{}'", name)};
}

Error open_error(const std::filesystem::path& path, const DbKey& key, const Error& cause) {
  if (cause.code == Errc::wrong_key) {
    return Error{Errc::wrong_key,
                 fmt::format("cannot open database {} with the key from {}: the key is wrong or "
                             "the file is not a tokend database. The file was not changed. Use "
                             "the key it was created with, or move the file away to start with "
                             "an empty store",
                             path.string(), key.source)};
  }
  if (cause.code == Errc::corrupt) {
    return Error{Errc::corrupt,
                 fmt::format("database {} (key from {}) is damaged: {}. The file was not "
                             "changed; restore it from a backup or move it away to start with "
                             "an empty store",
                             path.string(), key.source, cause.message)};
  }
  return cause.context(fmt::format("opening database {} (key from {})", path.string(), key.source));
}

// Creates the file 0600 up front so SQLite (and its -wal/-shm, which copy the
// main file's mode) never exist with looser permissions.
Result<> create_private_file_if_absent(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd >= 0) {
    ::close(fd);
    return {};
  }
  if (errno == EEXIST) return fs::check_private_file(path);
  return fail(Errc::io, fmt::format("creating database {}: {}", path.string(), errno_text(errno)));
}

Result<std::unique_ptr<Db>> open_and_configure(const std::filesystem::path& path,
                                               const DbKey* key) {
  if (auto r = create_private_file_if_absent(path); !r) return std::unexpected(r.error());
  auto db = Db::open(path);
  if (!db) return std::unexpected(db.error());

  // Proves the library really is SQLCipher 4 (a plain SQLite loaded first
  // would answer nothing here, and would not encrypt).
  if (auto v = (*db)->prepare("PRAGMA cipher_version"); v) {
    auto row = v->step();
    const std::string version = row && *row ? v->get_text(0) : "";
    if (version.empty() || version[0] < '4' || version[1] != '.') {
      return fail(Errc::config, "the SQLite library in use is not SQLCipher 4 (cipher_version '" +
                                    version + "'); install libsqlcipher1 4.x");
    }
  }

  if (key != nullptr) {
    if (key->kind == KeyKind::raw) {
      // SQLCipher's raw-key syntax: x'<64 hex>' skips the KDF.
      std::string spec = "x'" + hex_encode(key->material.reveal()) + "'";
      const Secret raw = Secret::adopt(std::move(spec));
      if (auto r = (*db)->key(raw.reveal()); !r) return std::unexpected(r.error());
    } else if (auto r = (*db)->key(key->material.reveal()); !r) {
      return std::unexpected(r.error());
    }
  }

  // Read before any write: a wrong key or a foreign file fails here, and the
  // file has not been touched.
  if (auto r = (*db)->query_int("SELECT count(*) FROM sqlite_master"); !r) {
    return std::unexpected(r.error());
  }
  {
    auto check = (*db)->prepare("PRAGMA quick_check");
    if (!check) return std::unexpected(check.error());
    auto row = check->step();
    if (!row) return std::unexpected(row.error());
    if (!*row || check->get_text(0) != "ok") {
      return fail(Errc::corrupt, "integrity check failed: " + (*row ? check->get_text(0) : ""));
    }
  }

  for (const char* pragma :
       {"PRAGMA journal_mode = WAL", "PRAGMA synchronous = FULL", "PRAGMA foreign_keys = ON",
        "PRAGMA secure_delete = ON", "PRAGMA temp_store = MEMORY", "PRAGMA busy_timeout = 5000"}) {
    if (auto r = (*db)->exec(pragma); !r) return std::unexpected(r.error());
  }
  if (auto mode = (*db)->prepare("PRAGMA journal_mode"); mode) {
    if (auto row = mode->step(); row && *row && mode->get_text(0) != "wal") {
      return fail(Errc::database, "the database could not be switched to WAL mode");
    }
  }
  if (auto r = detail::migrate(**db); !r) return std::unexpected(r.error());
  return db;
}

}  // namespace

SqlcipherStore::SqlcipherStore(std::unique_ptr<Db> db, std::filesystem::path path,
                               const Clock& clock)
    : m_db(std::move(db)), m_path(std::move(path)), m_clock(&clock) {}
SqlcipherStore::SqlcipherStore(SqlcipherStore&&) noexcept = default;
SqlcipherStore& SqlcipherStore::operator=(SqlcipherStore&&) noexcept = default;
SqlcipherStore::~SqlcipherStore() = default;

Result<SqlcipherStore> SqlcipherStore::open(const std::filesystem::path& path, const DbKey& key,
                                            const Clock& clock) {
  if (key.material.empty()) return fail(Errc::config, "the database key is empty");
  auto db = open_and_configure(path, &key);
  if (!db) return std::unexpected(open_error(path, key, db.error()));
  return SqlcipherStore(std::move(*db), path, clock);
}

Result<SqlcipherStore> open_unencrypted_for_tests(const std::filesystem::path& path,
                                                  const Clock& clock) {
  auto db = open_and_configure(path, nullptr);
  if (!db) return std::unexpected(db.error());
  return SqlcipherStore(std::move(*db), path, clock);
}

int SqlcipherStore::schema_version() const {
  auto v = m_db->query_int("PRAGMA user_version");
  return v ? static_cast<int>(*v) : -1;
}

Result<> SqlcipherStore::put_profile(const Profile& p) {
  if (auto r = validate_profile_name(p.name); !r) return r;
  const std::int64_t now = to_unix_ms(m_clock->wall_now());
  const std::string config = config_column(p.config);
  auto tx = Transaction::begin(*m_db);
  if (!tx) return std::unexpected(tx.error());
  {
    auto s = m_db->cached(
        "INSERT INTO profiles (name, kind, provider, config, secret_config, created_at, "
        "updated_at) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) "
        "ON CONFLICT(name) DO UPDATE SET kind = excluded.kind, provider = excluded.provider, "
        "config = excluded.config, secret_config = excluded.secret_config, "
        "updated_at = excluded.updated_at");
    if (!s) return std::unexpected(s.error());
    (*s)->bind(1, p.name).bind(2, to_string(p.kind)).bind(3, p.provider).bind(4, config);
    // Bound without a copy: the text must outlive run().
    const Secret secret_column =
        p.client_secret.empty() ? Secret() : client_secret_column(p.client_secret);
    if (secret_column.empty()) {
      (*s)->bind_null(5);
    } else {
      (*s)->bind(5, secret_column);
    }
    (*s)->bind(6, now);
    if (auto r = (*s)->run(); !r) return r;
  }
  {
    auto s = m_db->cached("INSERT OR IGNORE INTO credentials (profile) VALUES (?1)");
    if (!s) return std::unexpected(s.error());
    if (auto r = (*s)->bind(1, p.name).run(); !r) return r;
  }
  return tx->commit();
}

Result<Profile> SqlcipherStore::get_profile(std::string_view name) {
  auto s = m_db->cached(std::string(k_select_profile_columns) + " WHERE name = ?1");
  if (!s) return std::unexpected(s.error());
  (*s)->bind(1, name);
  auto row = (*s)->step();
  if (!row) return std::unexpected(row.error());
  if (!*row) return std::unexpected(not_found(name));
  auto p = read_profile(**s);
  (*s)->reset();
  return p;
}

Result<std::vector<Profile>> SqlcipherStore::list_profiles() {
  auto s = m_db->cached(std::string(k_select_profile_columns) + " ORDER BY name");
  if (!s) return std::unexpected(s.error());
  std::vector<Profile> out;
  for (;;) {
    auto row = (*s)->step();
    if (!row) return std::unexpected(row.error());
    if (!*row) break;
    auto p = read_profile(**s);
    if (!p) return std::unexpected(p.error());
    out.push_back(std::move(*p));
  }
  return out;
}

Result<> SqlcipherStore::delete_profile(std::string_view name) {
  auto tx = Transaction::begin(*m_db);
  if (!tx) return std::unexpected(tx.error());
  auto s = m_db->cached("DELETE FROM profiles WHERE name = ?1");
  if (!s) return std::unexpected(s.error());
  if (auto r = (*s)->bind(1, name).run(); !r) return r;
  if (m_db->changes() == 0) return std::unexpected(not_found(name));
  return tx->commit();
}

Result<Credential> SqlcipherStore::get_credential(std::string_view name) {
  auto s = m_db->cached(std::string(k_select_credential_columns) + " WHERE profile = ?1");
  if (!s) return std::unexpected(s.error());
  (*s)->bind(1, name);
  auto row = (*s)->step();
  if (!row) return std::unexpected(row.error());
  if (!*row) return std::unexpected(not_found(name));
  auto c = read_credential(**s);
  (*s)->reset();
  return c;
}

Result<std::vector<Credential>> SqlcipherStore::list_credentials() {
  auto s = m_db->cached(std::string(k_select_credential_columns) + " ORDER BY profile");
  if (!s) return std::unexpected(s.error());
  std::vector<Credential> out;
  for (;;) {
    auto row = (*s)->step();
    if (!row) return std::unexpected(row.error());
    if (!*row) break;
    auto c = read_credential(**s);
    if (!c) return std::unexpected(c.error());
    out.push_back(std::move(*c));
  }
  return out;
}

Result<std::int64_t> SqlcipherStore::store_token_set(
    std::string_view name, const TokenSet& t, std::optional<std::int64_t> expected_generation,
    std::optional<std::int64_t> keep_previous_until_ms) {
  // A refresh token alone is a token set too (an import from another tool):
  // the token service refreshes it at once.
  if (t.access_token.empty() && t.refresh_token.empty()) {
    return fail(Errc::invalid_argument, "a token set needs an access token or a refresh token");
  }
  auto tx = Transaction::begin(*m_db);
  if (!tx) return std::unexpected(tx.error());
  auto current = get_credential(name);
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
      rotated ? keep_previous_until_ms : current->previous_refresh_until_ms;
  const std::int64_t generation = current->generation + 1;

  auto s = m_db->cached(
      "UPDATE credentials SET access_token = ?2, refresh_token = ?3, previous_refresh_token = ?4, "
      "previous_refresh_until = ?5, token_type = ?6, scope = ?7, expires_at = ?8, "
      "obtained_at = ?9, generation = ?10, state = 'valid', last_error = '', "
      "refresh_inflight_since = NULL WHERE profile = ?1");
  if (!s) return std::unexpected(s.error());
  (*s)->bind(1, name).bind(2, t.access_token);
  if (new_refresh.empty()) {
    (*s)->bind_null(3);
  } else {
    (*s)->bind(3, new_refresh);
  }
  if (previous.empty()) {
    (*s)->bind_null(4);
  } else {
    (*s)->bind(4, previous);
  }
  (*s)->bind(5, previous.empty() ? std::nullopt : previous_until)
      .bind(6, t.token_type)
      .bind(7, t.scope)
      .bind(8, t.expires_at_ms)
      .bind(9, t.obtained_at_ms)
      .bind(10, generation);
  if (auto r = (*s)->run(); !r) return std::unexpected(r.error());
  if (auto r = tx->commit(); !r) return std::unexpected(r.error());
  return generation;
}

Result<> SqlcipherStore::ensure_profile_exists(std::string_view name) {
  if (m_db->changes() == 0) return std::unexpected(not_found(name));
  return {};
}

Result<RefreshClaim> SqlcipherStore::claim_refresh(std::string_view name) {
  auto c = get_credential(name);
  if (!c) return std::unexpected(c.error());
  return RefreshClaim{true, std::move(*c)};
}

Result<> SqlcipherStore::mark_refresh_inflight(std::string_view name, std::int64_t at_ms) {
  auto s = m_db->cached(
      "UPDATE credentials SET refresh_inflight_since = ?2, state = 'refreshing' WHERE profile = "
      "?1");
  if (!s) return std::unexpected(s.error());
  if (auto r = (*s)->bind(1, name).bind(2, at_ms).run(); !r) return r;
  return ensure_profile_exists(name);
}

Result<> SqlcipherStore::set_state(std::string_view name, CredState state,
                                   std::string_view last_error) {
  auto s = m_db->cached(
      "UPDATE credentials SET state = ?2, last_error = ?3, refresh_inflight_since = NULL "
      "WHERE profile = ?1");
  if (!s) return std::unexpected(s.error());
  if (auto r = (*s)->bind(1, name).bind(2, to_string(state)).bind(3, last_error).run(); !r) {
    return r;
  }
  return ensure_profile_exists(name);
}

Result<> SqlcipherStore::clear_credential(std::string_view name) {
  auto s = m_db->cached(
      "UPDATE credentials SET access_token = NULL, refresh_token = NULL, "
      "previous_refresh_token = NULL, previous_refresh_until = NULL, token_type = '', scope = '', "
      "expires_at = NULL, obtained_at = NULL, generation = generation + 1, state = 'empty', "
      "last_error = '', refresh_inflight_since = NULL WHERE profile = ?1");
  if (!s) return std::unexpected(s.error());
  if (auto r = (*s)->bind(1, name).run(); !r) return r;
  return ensure_profile_exists(name);
}

Result<std::int64_t> SqlcipherStore::insert_audit(const AuditEvent& e) {
  const std::string detail = e.detail.dump(-1, ' ', false, json::Json::error_handler_t::replace);
  auto s = m_db->cached(
      "INSERT INTO audit_events (at, kind, profile, peer_uid, peer_pid, detail) "
      "VALUES (?1, ?2, ?3, ?4, ?5, ?6)");
  if (!s) return std::unexpected(s.error());
  const std::int64_t at = e.at_ms != 0 ? e.at_ms : to_unix_ms(m_clock->wall_now());
  (*s)->bind(1, at)
      .bind(2, e.kind)
      .bind(3, e.profile)
      .bind(4, e.peer_uid)
      .bind(5, e.peer_pid)
      .bind(6, detail);
  if (auto r = (*s)->run(); !r) return std::unexpected(r.error());
  return m_db->last_insert_rowid();
}

// Both deletes are range scans (the id is the rowid, `at` is indexed), so
// an append that has nothing to prune costs two index seeks.
Result<> SqlcipherStore::prune_audit_in_transaction() {
  if (m_retention.max_rows > 0) {
    auto s = m_db->cached(
        "DELETE FROM audit_events WHERE id <= (SELECT MAX(id) FROM audit_events) - ?1");
    if (!s) return std::unexpected(s.error());
    if (auto r = (*s)->bind(1, m_retention.max_rows).run(); !r) return r;
  }
  if (m_retention.max_age.count() > 0) {
    auto s = m_db->cached("DELETE FROM audit_events WHERE at < ?1");
    if (!s) return std::unexpected(s.error());
    const std::int64_t cutoff = to_unix_ms(m_clock->wall_now()) - m_retention.max_age.count();
    if (auto r = (*s)->bind(1, cutoff).run(); !r) return r;
  }
  return {};
}

Result<> SqlcipherStore::prune_audit() {
  auto tx = Transaction::begin(*m_db);
  if (!tx) return std::unexpected(tx.error());
  if (auto r = prune_audit_in_transaction(); !r) return r;
  return tx->commit();
}

Result<std::int64_t> SqlcipherStore::append_audit(const AuditEvent& e) {
  auto tx = Transaction::begin(*m_db);
  if (!tx) return std::unexpected(tx.error());
  auto id = insert_audit(e);
  if (!id) return id;
  if (auto r = prune_audit_in_transaction(); !r) return std::unexpected(r.error());
  if (auto r = tx->commit(); !r) return std::unexpected(r.error());
  return id;
}

Result<> SqlcipherStore::append_audit_batch(const std::vector<AuditEvent>& events) {
  if (events.empty()) return {};
  auto tx = Transaction::begin(*m_db);
  if (!tx) return std::unexpected(tx.error());
  for (const auto& e : events) {
    if (auto r = insert_audit(e); !r) return std::unexpected(r.error());
  }
  if (auto r = prune_audit_in_transaction(); !r) return r;
  return tx->commit();
}

Result<std::vector<AuditEvent>> SqlcipherStore::recent_audit(std::size_t limit) {
  auto s = m_db->cached(
      "SELECT id, at, kind, profile, peer_uid, peer_pid, detail FROM audit_events "
      "ORDER BY id DESC LIMIT ?1");
  if (!s) return std::unexpected(s.error());
  (*s)->bind(1, static_cast<std::int64_t>(limit));
  std::vector<AuditEvent> out;
  for (;;) {
    auto row = (*s)->step();
    if (!row) return std::unexpected(row.error());
    if (!*row) break;
    AuditEvent e;
    e.id = (*s)->get_int(0);
    e.at_ms = (*s)->get_int(1);
    e.kind = (*s)->get_text(2);
    e.profile = (*s)->get_text(3);
    e.peer_uid = (*s)->get_opt_int(4);
    e.peer_pid = (*s)->get_opt_int(5);
    auto detail = json::parse((*s)->get_text(6), "stored audit detail");
    e.detail = detail ? std::move(*detail) : json::Json::object();
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace tokend::store

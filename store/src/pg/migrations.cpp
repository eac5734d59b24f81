// The PostgreSQL schema: forward-only migrations, versioned by the
// schema_version table (one row per applied version).
//
// Append a step to add a version; never edit a released one. Each step is a
// list of single statements (the store sends nothing but PQexecParams, which
// takes one statement at a time) run in one transaction with the version row
// (tests/store/pg_store_test.cpp runs them from an empty database, and again).
#include <fmt/format.h>

#include <array>
#include <span>

#include "store/detail/pg.hpp"

namespace tokend::store::detail::pg {

namespace {

struct PgMigration {
  int version;
  std::span<const char* const> statements;
};

// Every table of per-user data has user_id first in its key. Times are Unix
// milliseconds, as in the SQLCipher store and store/types.hpp. Secret
// columns are bytea envelopes (store/detail/envelope.hpp) under the row's
// data key; wrapped_key is that data key wrapped by the key-encryption key
// named by kek_id.
constexpr std::array k_pg_schema_v1{
    R"sql(CREATE TABLE profiles (
  user_id       text NOT NULL CHECK (user_id <> ''),
  name          text NOT NULL,
  kind          text NOT NULL,
  provider      text NOT NULL DEFAULT '',
  config        text NOT NULL DEFAULT '{}',
  kek_id        text,
  wrapped_key   bytea,
  client_secret bytea,
  created_at    bigint NOT NULL,
  updated_at    bigint NOT NULL,
  PRIMARY KEY (user_id, name),
  CHECK (client_secret IS NULL OR (kek_id IS NOT NULL AND wrapped_key IS NOT NULL))
))sql",
    R"sql(CREATE TABLE credentials (
  user_id                text NOT NULL,
  profile                text NOT NULL,
  kek_id                 text,
  wrapped_key            bytea,
  access_token           bytea,
  refresh_token          bytea,
  previous_refresh_token bytea,
  previous_refresh_until bigint,
  token_type             text NOT NULL DEFAULT '',
  scope                  text NOT NULL DEFAULT '',
  expires_at             bigint,
  obtained_at            bigint,
  generation             bigint NOT NULL DEFAULT 0,
  state                  text NOT NULL DEFAULT 'empty',
  last_error             text NOT NULL DEFAULT '',
  refresh_inflight_since bigint,
  PRIMARY KEY (user_id, profile),
  FOREIGN KEY (user_id, profile) REFERENCES profiles (user_id, name) ON DELETE CASCADE,
  CHECK ((access_token IS NULL AND refresh_token IS NULL AND previous_refresh_token IS NULL)
         OR (kek_id IS NOT NULL AND wrapped_key IS NOT NULL))
))sql",
    // Audit ids count per user (audit_sequences), so "the last N events" of
    // a user is a range of the primary key, as it is in the SQLCipher store.
    R"sql(CREATE TABLE audit_sequences (
  user_id text PRIMARY KEY,
  last_id bigint NOT NULL
))sql",
    R"sql(CREATE TABLE audit_events (
  user_id  text NOT NULL,
  id       bigint NOT NULL,
  at       bigint NOT NULL,
  kind     text NOT NULL,
  profile  text NOT NULL DEFAULT '',
  peer_uid bigint,
  peer_pid bigint,
  detail   text NOT NULL DEFAULT '{}',
  PRIMARY KEY (user_id, id)
))sql",
    "CREATE INDEX audit_events_at ON audit_events (user_id, at)",
    // One row per key-encryption key in use: a value encrypted under it with
    // its id as additional data, so a wrong key is recognised when the
    // database opens, before any row is read or written.
    R"sql(CREATE TABLE key_checks (
  kek_id      text PRIMARY KEY,
  check_value bytea NOT NULL,
  created_at  bigint NOT NULL
))sql",
};

// Server mode's sign-in (OIDC): sessions and sign-ins in progress, shared
// by every replica. Only SHA-256 digests of what the browser holds are
// stored; neither table is per user data a user's store reads.
constexpr std::array k_pg_schema_v2{
    R"sql(CREATE TABLE sessions (
  id_hash    bytea PRIMARY KEY,
  user_id    text NOT NULL CHECK (user_id <> ''),
  created_at bigint NOT NULL,
  expires_at bigint NOT NULL
))sql",
    "CREATE INDEX sessions_expires_at ON sessions (expires_at)",
    R"sql(CREATE TABLE signins (
  state_hash   bytea PRIMARY KEY,
  browser_hash bytea NOT NULL,
  nonce        text NOT NULL,
  return_to    text NOT NULL,
  expires_at   bigint NOT NULL
))sql",
};

// Login flows in progress (authorization code + PKCE), so that any replica
// can complete one another started: one per profile, found by the SHA-256
// of its state; the PKCE verifier is a secret column under the row's data
// key. Deleted with the profile.
constexpr std::array k_pg_schema_v3{
    R"sql(CREATE TABLE login_flows (
  user_id         text NOT NULL,
  profile         text NOT NULL,
  state_hash      bytea NOT NULL UNIQUE,
  kek_id          text NOT NULL,
  wrapped_key     bytea NOT NULL,
  code_verifier   bytea,
  redirect_uri    text NOT NULL,
  issuer          text NOT NULL DEFAULT '',
  issuer_required boolean NOT NULL DEFAULT false,
  resource        text NOT NULL DEFAULT '',
  scopes          text NOT NULL DEFAULT '[]',
  replica         text NOT NULL DEFAULT '',
  flow_id         bigint NOT NULL DEFAULT 0,
  started_at      bigint NOT NULL,
  expires_at      bigint NOT NULL,
  PRIMARY KEY (user_id, profile),
  FOREIGN KEY (user_id, profile) REFERENCES profiles (user_id, name) ON DELETE CASCADE
))sql",
    "CREATE INDEX login_flows_expires_at ON login_flows (expires_at)",
};

constexpr std::array k_pg_migrations{
    PgMigration{1, k_pg_schema_v1},
    PgMigration{2, k_pg_schema_v2},
    PgMigration{3, k_pg_schema_v3},
};

// pg_advisory_xact_lock key: "tokend" in ASCII. Held by every migration
// transaction, so replicas starting together migrate one after the other.
constexpr std::int64_t k_migration_lock = 0x746f6b656e64;

Result<int> current_version_locked(Connection& conn) {
  if (auto r = conn.exec("SELECT pg_advisory_xact_lock($1)", Params().int8(k_migration_lock)); !r) {
    return std::unexpected(r.error());
  }
  if (auto r =
          conn.exec("CREATE TABLE IF NOT EXISTS schema_version ("
                    "version bigint PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())");
      !r) {
    return std::unexpected(r.error());
  }
  auto rows = conn.exec("SELECT coalesce(max(version), 0)::bigint FROM schema_version");
  if (!rows) return std::unexpected(rows.error());
  return static_cast<int>(rows->int8(0, 0));
}

}  // namespace

int latest_schema_version() {
  return k_pg_migrations.back().version;
}

Result<int> schema_version(Connection& conn) {
  auto exists =
      conn.exec("SELECT CASE WHEN to_regclass('schema_version') IS NULL THEN 0 ELSE 1 END::bigint");
  if (!exists) return std::unexpected(exists.error());
  if (exists->int8(0, 0) == 0) return 0;
  auto rows = conn.exec("SELECT coalesce(max(version), 0)::bigint FROM schema_version");
  if (!rows) return std::unexpected(rows.error());
  return static_cast<int>(rows->int8(0, 0));
}

Result<> migrate(Connection& conn, std::optional<int> target) {
  const int goal = target.value_or(latest_schema_version());
  // One transaction per step; each re-reads the version under the lock, so
  // a step another process applied meanwhile is not applied twice.
  for (;;) {
    auto tx = Transaction::begin(conn);
    if (!tx) return std::unexpected(tx.error());
    auto current = current_version_locked(conn);
    if (!current) return std::unexpected(current.error());
    if (*current > latest_schema_version()) {
      return fail(Errc::config,
                  fmt::format("the database has schema version {}, newer than this tokend "
                              "understands ({}); run a newer tokend",
                              *current, latest_schema_version()));
    }
    const PgMigration* next = nullptr;
    for (const auto& m : k_pg_migrations) {
      if (m.version > *current && m.version <= goal) {
        next = &m;
        break;
      }
    }
    if (next == nullptr) return tx->commit();
    for (const char* statement : next->statements) {
      if (auto r = conn.exec(statement); !r) {
        return std::unexpected(
            r.error().context(fmt::format("migrating to schema {}", next->version)));
      }
    }
    if (auto r = conn.exec("INSERT INTO schema_version (version) VALUES ($1)",
                           Params().int8(std::int64_t{next->version}));
        !r) {
      return std::unexpected(r.error());
    }
    if (auto r = tx->commit(); !r) return std::unexpected(r.error());
  }
}

}  // namespace tokend::store::detail::pg

// Forward-only schema migrations, versioned by PRAGMA user_version.
//
// Append a step to add a version; never edit a released one. Each step is
// tested from a database made by the version before it
// (tests/store/migration_test.cpp).
#include <fmt/format.h>

#include <array>
#include <string_view>

#include "store/detail/db.hpp"

namespace tokend::store::detail {

namespace {

struct Migration {
  int version;
  std::string_view sql;
};

constexpr std::array k_migrations{
    Migration{1, R"sql(
CREATE TABLE profiles (
  name          TEXT PRIMARY KEY NOT NULL,
  kind          TEXT NOT NULL,
  provider      TEXT NOT NULL DEFAULT '',
  config        TEXT NOT NULL DEFAULT '{}',
  secret_config TEXT,
  created_at    INTEGER NOT NULL,
  updated_at    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE credentials (
  profile                TEXT PRIMARY KEY NOT NULL
                         REFERENCES profiles(name) ON DELETE CASCADE,
  access_token           TEXT,
  refresh_token          TEXT,
  previous_refresh_token TEXT,
  token_type             TEXT NOT NULL DEFAULT '',
  scope                  TEXT NOT NULL DEFAULT '',
  expires_at             INTEGER,
  obtained_at            INTEGER,
  generation             INTEGER NOT NULL DEFAULT 0,
  state                  TEXT NOT NULL DEFAULT 'empty',
  last_error             TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
)sql"},
    // v2: the audit log, how long the previous refresh token stays usable,
    // and the in-flight refresh marker.
    Migration{2, R"sql(
CREATE TABLE audit_events (
  id       INTEGER PRIMARY KEY AUTOINCREMENT,
  at       INTEGER NOT NULL,
  kind     TEXT NOT NULL,
  profile  TEXT NOT NULL DEFAULT '',
  peer_uid INTEGER,
  peer_pid INTEGER,
  detail   TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_at ON audit_events(at);
ALTER TABLE credentials ADD COLUMN previous_refresh_until INTEGER;
ALTER TABLE credentials ADD COLUMN refresh_inflight_since INTEGER;
)sql"},
};

}  // namespace

int latest_schema_version() {
  return k_migrations.back().version;
}

Result<> migrate(Db& db, std::optional<int> target) {
  const int goal = target.value_or(latest_schema_version());
  auto current = db.query_int("PRAGMA user_version");
  if (!current) return std::unexpected(current.error());
  if (*current > latest_schema_version()) {
    return fail(Errc::config,
                fmt::format("the database has schema version {}, newer than this tokend "
                            "understands ({}); run a newer tokend",
                            *current, latest_schema_version()));
  }
  for (const auto& m : k_migrations) {
    if (m.version <= *current || m.version > goal) continue;
    auto tx = Transaction::begin(db);
    if (!tx) return std::unexpected(tx.error());
    if (auto r = db.exec(m.sql); !r) {
      return std::unexpected(r.error().context(fmt::format("migrating to schema {}", m.version)));
    }
    if (auto r = db.exec(fmt::format("PRAGMA user_version = {}", m.version)); !r) {
      return std::unexpected(r.error());
    }
    if (auto r = tx->commit(); !r) return std::unexpected(r.error());
  }
  return {};
}

}  // namespace tokend::store::detail

// Each migration is tested from a database made by the version before it.
#include <catch2/catch_test_macros.hpp>

#include "core/encoding.hpp"
#include "store/detail/db.hpp"
#include "store/store_support.hpp"
#include "support/temp_dir.hpp"

using namespace tokend;
using namespace tokend::store;
using test::TempDir;

namespace {

std::string raw_key_spec(const DbKey& key) {
  return "x'" + hex_encode(key.material.reveal()) + "'";
}

// A database at schema `version`, keyed like SqlcipherStore::open would key it.
std::unique_ptr<detail::Db> db_at(const std::filesystem::path& path, const DbKey& key,
                                  int version) {
  test::write_file_bytes(path, "", 0600);  // as SqlcipherStore::open creates it
  auto db = detail::Db::open(path);
  REQUIRE(db);
  REQUIRE((*db)->key(raw_key_spec(key)));
  REQUIRE((*db)->exec("PRAGMA journal_mode = WAL"));
  REQUIRE(detail::migrate(**db, version));
  REQUIRE(*(*db)->query_int("PRAGMA user_version") == version);
  return std::move(*db);
}

}  // namespace

TEST_CASE("migrating an empty database reaches the latest schema", "[store][migration]") {
  TempDir t;
  FakeClock clock;
  auto s = SqlcipherStore::open(t / "t.db", test::random_raw_key(), clock);
  REQUIRE(s);
  CHECK(s->schema_version() == detail::latest_schema_version());
}

TEST_CASE("v1 -> v2 keeps profiles and credentials and adds the audit log", "[store][migration]") {
  TempDir t;
  FakeClock clock;
  const auto key = test::random_raw_key();
  {
    auto db = db_at(t / "t.db", key, 1);
    REQUIRE(
        db->exec("INSERT INTO profiles (name, kind, provider, config, secret_config, created_at, "
                 "updated_at) "
                 "VALUES ('jira', 'oauth2', 'atlassian', '{\"site\":\"x\"}', "
                 "'{\"client_secret\":\"s\"}', 1, 2)"));
    REQUIRE(db->exec(
        "INSERT INTO credentials (profile, access_token, refresh_token, token_type, scope, "
        "expires_at, obtained_at, generation, state) "
        "VALUES ('jira', 'at-v1', 'rt-v1', 'Bearer', 'read', 5000, 1000, 7, 'valid')"));
    CHECK_FALSE(db->exec("SELECT * FROM audit_events"));  // not there yet
  }
  auto s = SqlcipherStore::open(t / "t.db", key, clock);
  INFO((s ? "" : s.error().message));
  REQUIRE(s);
  CHECK(s->schema_version() == 2);
  auto p = s->get_profile("jira");
  REQUIRE(p);
  CHECK(p->config["site"] == "x");
  CHECK(p->client_secret.reveal() == "s");
  auto c = s->get_credential("jira");
  REQUIRE(c);
  CHECK(c->access_token.reveal() == "at-v1");
  CHECK(c->refresh_token.reveal() == "rt-v1");
  CHECK(c->generation == 7);
  CHECK(c->state == CredState::valid);
  CHECK_FALSE(c->previous_refresh_until_ms);
  CHECK_FALSE(c->refresh_inflight_since_ms);
  // New columns and tables work.
  REQUIRE(s->mark_refresh_inflight("jira", 9));
  REQUIRE(s->append_audit(AuditEvent{}));
}

TEST_CASE("a database from a newer tokend is refused, unchanged", "[store][migration]") {
  TempDir t;
  FakeClock clock;
  const auto key = test::random_raw_key();
  {
    auto db = db_at(t / "t.db", key, detail::latest_schema_version());
    REQUIRE(db->exec("PRAGMA user_version = 999"));
  }
  const auto before = test::file_digest(t / "t.db");
  auto s = SqlcipherStore::open(t / "t.db", key, clock);
  REQUIRE_FALSE(s);
  CHECK(s.error().message.find("newer than this tokend") != std::string::npos);
  CHECK(test::file_digest(t / "t.db") == before);
}

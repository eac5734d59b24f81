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
  CHECK(p->config.site == "x");
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

// The config column keeps its JSON: the store reads it as a ProfileConfig and
// writes the same JSON back, keys it does not know included.
TEST_CASE("a stored config is read typed and written back as it was; a mistyped one is refused",
          "[store][migration][profile_config]") {
  TempDir t;
  FakeClock clock;
  const auto key = test::random_raw_key();
  const std::string stored =
      R"({"client_id":"cid","client_registered":true,"client_registered_for":"","from_a_newer_tokend":{"a":[1]},"policy":{"rate_per_minute":2,"read_only":true},"scopes":[],"token_endpoint_auth":"client_secret_post","token_url":"https://as.example/token"})";
  auto insert = [&](detail::Db& db, const char* name, const std::string& config) {
    auto st = db.prepare(
        "INSERT INTO profiles (name, kind, provider, config, created_at, updated_at) "
        "VALUES (?1, 'oauth2', 'generic', ?2, 1, 2)");
    REQUIRE(st);
    REQUIRE(st->bind(1, std::string_view(name)).bind(2, config).run());
  };
  auto config_column = [&](detail::Db& db, const char* name) {
    auto st = db.prepare("SELECT config FROM profiles WHERE name = ?1");
    REQUIRE(st);
    st->bind(1, std::string_view(name));
    REQUIRE(st->step() == true);
    return st->get_text(0);
  };
  {
    auto db = db_at(t / "t.db", key, detail::latest_schema_version());
    insert(*db, "old", stored);
    insert(*db, "bad", R"({"scopes":"s3cr3t-VALUE","token_url":"https://as.example/token"})");
  }
  {
    auto s = SqlcipherStore::open(t / "t.db", key, clock);
    REQUIRE(s);
    auto p = s->get_profile("old");
    REQUIRE(p);
    CHECK(p->config.client_id == "cid");
    CHECK(p->config.token_endpoint_auth == ClientAuthMethod::client_secret_post);
    CHECK(p->config.scopes == std::vector<std::string>{});
    CHECK(p->config.client_registered_for == "");
    CHECK(p->config.other.contains("from_a_newer_tokend"));
    REQUIRE(s->put_profile(*p));

    auto bad = s->get_profile("bad");
    REQUIRE_FALSE(bad);
    CHECK(bad.error().code == Errc::corrupt);
    CHECK(bad.error().message.find("'bad'") != std::string::npos);
    CHECK(bad.error().message.find("\"scopes\" must be a list of strings") != std::string::npos);
    CHECK(bad.error().message.find("s3cr3t") == std::string::npos);
  }
  auto db = detail::Db::open(t / "t.db");
  REQUIRE(db);
  REQUIRE((*db)->key(raw_key_spec(key)));
  CHECK(config_column(**db, "old") == stored);
}

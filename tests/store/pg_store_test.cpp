// What only the PostgreSQL store has: the schema's migrations, many users in
// one database, per-row encryption under a key-encryption key, key rotation.
// The Store contract itself is tested for it in store_test.cpp.
#include <fmt/format.h>
#include <poll.h>

#include <atomic>
#include <catch2/catch_test_macros.hpp>
#include <chrono>
#include <thread>

#include "core/encoding.hpp"
#include "store/detail/pg.hpp"
#include "store/store_backends.hpp"

using namespace tokend;
using namespace tokend::store;
namespace pg = tokend::store::detail::pg;
using test::PgTestDatabase;

namespace {

pg::Connection raw_connection(const PgTestDatabase& db) {
  auto c = pg::Connection::open(db.conninfo());
  REQUIRE(c);
  return std::move(*c);
}

std::string one_text(pg::Connection& c, const char* sql, const pg::Params& params = {}) {
  auto r = c.exec(sql, params);
  INFO((r ? "" : r.error().message));
  REQUIRE(r);
  REQUIRE(r->size() == 1);
  return r->text(0, 0);
}

std::int64_t one_int(pg::Connection& c, const char* sql, const pg::Params& params = {}) {
  auto r = c.exec(sql, params);
  INFO((r ? "" : r.error().message));
  REQUIRE(r);
  REQUIRE(r->size() == 1);
  return r->int8(0, 0);
}

// The tables and columns of the schema, for "unchanged" assertions.
std::string catalogue(pg::Connection& c) {
  return one_text(
      c,
      "SELECT coalesce(string_agg(table_name || '.' || column_name || ':' || data_type, "
      "',' ORDER BY table_name, ordinal_position), '') "
      "FROM information_schema.columns WHERE table_schema = current_schema()");
}

// Every row of `user` in every per-user table, as JSON text (bytea as hex).
std::string rows_of(pg::Connection& c, std::string_view user) {
  std::string out;
  for (const char* sql :
       {"SELECT coalesce(string_agg(row_to_json(t)::text, E'\\n' ORDER BY name), '') "
        "FROM profiles t WHERE user_id = $1",
        "SELECT coalesce(string_agg(row_to_json(t)::text, E'\\n' ORDER BY profile), '') "
        "FROM credentials t WHERE user_id = $1",
        "SELECT coalesce(string_agg(row_to_json(t)::text, E'\\n' ORDER BY id), '') "
        "FROM audit_events t WHERE user_id = $1",
        "SELECT coalesce(string_agg(row_to_json(t)::text, E'\\n'), '') "
        "FROM audit_sequences t WHERE user_id = $1"}) {
    out += one_text(c, sql, pg::Params().text(user));
    out += "\n--\n";
  }
  return out;
}

void exec_ok(pg::Connection& c, const char* sql, const pg::Params& params = {}) {
  auto r = c.exec(sql, params);
  INFO((r ? "" : r.error().message));
  REQUIRE(r);
}

PgStore store_of(PgDatabase& db, std::string_view user) {
  auto s = db.store_for(user);
  REQUIRE(s);
  return std::move(*s);
}

// A profile with a client secret and a credential with a rotated refresh
// token: every secret column filled.
void fill(Store& s, const std::string& profile, const std::string& tag) {
  auto p = test::make_profile(profile);
  p.client_secret = Secret(tag + "-client-secret");
  REQUIRE(s.put_profile(p));
  REQUIRE(s.store_token_set(profile, test::make_tokens(tag + "-at1", tag + "-rt1", 1000)));
  REQUIRE(
      s.store_token_set(profile, test::make_tokens(tag + "-at2", tag + "-rt2", 2000), {}, 5000));
}

void check_filled(Store& s, const std::string& profile, const std::string& tag) {
  auto c = s.get_credential(profile);
  INFO((c ? "" : c.error().message));
  REQUIRE(c);
  CHECK(c->access_token.reveal() == tag + "-at2");
  CHECK(c->refresh_token.reveal() == tag + "-rt2");
  CHECK(c->previous_refresh_token.reveal() == tag + "-rt1");
  auto p = s.get_profile(profile);
  REQUIRE(p);
  CHECK(p->client_secret.reveal() == tag + "-client-secret");
}

void check_no_secret_in(const std::string& message) {
  for (const char* secret : {"-at1", "-at2", "-rt1", "-rt2", "-client-secret"}) {
    CHECK(message.find(secret) == std::string::npos);
  }
}

}  // namespace

TEST_CASE("PostgreSQL schema: migrated from an empty database, then again without a change",
          "[store][pg][migration]") {
  PgTestDatabase db;
  auto c = raw_connection(db);
  auto version = pg::schema_version(c);
  INFO((version ? "" : version.error().message));
  CHECK(version.value_or(-1) == 0);
  CHECK(catalogue(c).empty());

  REQUIRE(pg::migrate(c));
  CHECK(pg::schema_version(c).value_or(-1) == pg::latest_schema_version());
  const std::string schema = catalogue(c);
  for (const char* table : {"profiles.", "credentials.", "audit_events.", "audit_sequences.",
                            "key_checks.", "schema_version.", "login_flows."}) {
    CHECK(schema.find(table) != std::string::npos);
  }
  // Per-user data: user_id leads the primary key of every such table.
  for (const char* table :
       {"profiles", "credentials", "audit_events", "audit_sequences", "login_flows"}) {
    INFO(table);
    CHECK(one_text(c,
                   "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a "
                   "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
                   "WHERE i.indrelid = to_regclass($1) AND i.indisprimary",
                   pg::Params().text(table)) == "user_id");
  }

  // Again, directly and through PgDatabase::open (twice): nothing changes.
  REQUIRE(pg::migrate(c));
  FakeClock clock;
  const auto kek = test::random_kek();
  REQUIRE(PgDatabase::open(db.conninfo(), kek, clock));
  auto again = PgDatabase::open(db.conninfo(), kek, clock);
  REQUIRE(again);
  CHECK(again->schema_version().value_or(-1) == pg::latest_schema_version());
  CHECK(catalogue(c) == schema);
  CHECK(one_int(c, "SELECT count(*) FROM schema_version") == pg::latest_schema_version());
}

TEST_CASE("a PostgreSQL database from a newer tokend is refused, unchanged",
          "[store][pg][migration]") {
  PgTestDatabase db;
  auto c = raw_connection(db);
  REQUIRE(pg::migrate(c));
  exec_ok(c, "INSERT INTO schema_version (version) VALUES (999)");
  const std::string schema = catalogue(c);
  FakeClock clock;
  auto r = PgDatabase::open(db.conninfo(), test::random_kek(), clock);
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("newer than this tokend") != std::string::npos);
  CHECK(catalogue(c) == schema);
  CHECK(one_int(c, "SELECT count(*) FROM key_checks") == 0);
}

TEST_CASE("user ids: UTF-8 without control characters, 1-256 bytes", "[store][pg]") {
  PgTestDatabase db;
  FakeClock clock;
  auto database = PgDatabase::open(db.conninfo(), test::random_kek(), clock);
  REQUIRE(database);
  for (const std::string& good : {std::string("alice"), std::string("alice@example.com"),
                                  std::string("CN=Ålice,O=Example"), std::string(256, 'u')}) {
    CHECK(database->store_for(good));
  }
  for (const std::string& bad :
       {std::string(), std::string(257, 'u'), std::string("a\nb"), std::string("a\0b", 3),
        std::string("\xc3"), std::string("\xc0\xaf"), std::string("\xed\xa0\x80")}) {
    auto r = database->store_for(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::invalid_argument);
  }
}

TEST_CASE("one user's store neither reads nor changes another user's rows", "[store][pg]") {
  PgTestDatabase db;
  FakeClock clock;
  auto database = PgDatabase::open(db.conninfo(), test::random_kek(), clock);
  REQUIRE(database);
  auto alice = store_of(*database, "alice");
  auto bob = store_of(*database, "bob");

  // The same profile name for both users, and one that only bob has.
  fill(bob, "jira", "bob");
  fill(bob, "bob-only", "bob2");
  for (int i = 0; i < 3; ++i) {
    AuditEvent e;
    e.kind = "proxy";
    e.profile = "jira";
    e.detail = {{"n", i}};
    REQUIRE(bob.append_audit(e));
  }
  fill(alice, "jira", "alice");

  auto c = raw_connection(db);
  const std::string bob_before = rows_of(c, "bob");
  REQUIRE(bob_before.find("bob-only") != std::string::npos);

  // Alice sees her own rows only.
  auto names = alice.list_profiles();
  REQUIRE(names);
  REQUIRE(names->size() == 1);
  CHECK(names->front().name == "jira");
  CHECK(alice.list_credentials()->size() == 1);
  check_filled(alice, "jira", "alice");
  CHECK(alice.recent_audit(100)->empty());

  // Bob's profile does not exist for alice, whatever she does with it.
  CHECK(alice.get_profile("bob-only").error().code == Errc::not_found);
  CHECK(alice.get_credential("bob-only").error().code == Errc::not_found);
  CHECK(alice.store_token_set("bob-only", test::make_tokens("x", "y", 1)).error().code ==
        Errc::not_found);
  CHECK(alice.mark_refresh_inflight("bob-only", 1).error().code == Errc::not_found);
  CHECK(alice.set_state("bob-only", CredState::disabled).error().code == Errc::not_found);
  CHECK(alice.clear_credential("bob-only").error().code == Errc::not_found);
  CHECK(alice.delete_profile("bob-only").error().code == Errc::not_found);

  // Everything alice can do to her own rows, named like bob's.
  REQUIRE(alice.store_token_set("jira", test::make_tokens("alice-at3", "alice-rt3", 3000), 2));
  REQUIRE(alice.mark_refresh_inflight("jira", 7));
  REQUIRE(alice.set_state("jira", CredState::reauth_required, "invalid_grant"));
  REQUIRE(alice.clear_credential("jira"));
  auto replaced = test::make_profile("jira");
  replaced.provider = "atlassian";
  REQUIRE(alice.put_profile(replaced));
  alice.set_audit_retention(AuditRetention{1, std::chrono::hours(1)});
  AuditEvent e;
  e.kind = "profile_put";
  REQUIRE(alice.append_audit(e));
  REQUIRE(alice.append_audit_batch({e, e, e}));
  clock.advance(std::chrono::hours(2));
  REQUIRE(alice.prune_audit());  // bob's events are as old as alice's
  REQUIRE(alice.delete_profile("jira"));

  CHECK(rows_of(c, "bob") == bob_before);
  check_filled(bob, "jira", "bob");
  check_filled(bob, "bob-only", "bob2");
  auto events = bob.recent_audit(100);
  REQUIRE(events);
  REQUIRE(events->size() == 3);
  CHECK(events->front().id == 3);  // each user's audit ids count on their own
  CHECK(events->back().id == 1);
}

TEST_CASE("two connections (replicas) share the generation check", "[store][pg]") {
  PgTestDatabase db;
  FakeClock clock;
  const auto kek = test::random_kek();
  auto one = PgDatabase::open(db.conninfo(), kek, clock);
  auto two = PgDatabase::open(db.conninfo(), kek, clock);
  REQUIRE(one);
  REQUIRE(two);
  auto a = store_of(*one, "alice");
  auto b = store_of(*two, "alice");
  REQUIRE(a.put_profile(test::make_profile("p")));
  CHECK(a.store_token_set("p", test::make_tokens("at1", "rt1", 1), 0).value() == 1);
  CHECK(b.store_token_set("p", test::make_tokens("at2", "rt2", 2), 1).value() == 2);
  auto stale = a.store_token_set("p", test::make_tokens("at3", "rt3", 3), 1);
  REQUIRE_FALSE(stale);
  CHECK(stale.error().code == Errc::conflict);
  auto cred = a.get_credential("p");
  REQUIRE(cred);
  CHECK(cred->access_token.reveal() == "at2");
  CHECK(cred->previous_refresh_token.reveal() == "rt1");
  CHECK(cred->generation == 2);
}

TEST_CASE("a ciphertext moved to another row or column does not decrypt: a clear error",
          "[store][pg][encryption]") {
  PgTestDatabase db;
  FakeClock clock;
  auto database = PgDatabase::open(db.conninfo(), test::random_kek(), clock);
  REQUIRE(database);
  auto alice = store_of(*database, "alice");
  auto bob = store_of(*database, "bob");
  fill(alice, "jira", "alice");
  fill(alice, "conf", "alice2");
  fill(bob, "jira", "bob");
  auto c = raw_connection(db);

  // The row that is damaged in each section, and the words the error must
  // carry.
  Store* damaged = &bob;
  std::string profile = "jira";
  bool in_credential = true;
  std::vector<std::string> words;
  SECTION("alice's credential copied into bob's row of the same name") {
    exec_ok(c,
            "UPDATE credentials AS b SET kek_id = a.kek_id, wrapped_key = a.wrapped_key, "
            "access_token = a.access_token, refresh_token = a.refresh_token, "
            "previous_refresh_token = a.previous_refresh_token FROM credentials AS a "
            "WHERE a.user_id = 'alice' AND a.profile = 'jira' "
            "AND b.user_id = 'bob' AND b.profile = 'jira'");
    words = {"data key", "credential 'jira' of user 'bob'", "moved from another row"};
  }
  SECTION("only the access token copied into another user's row") {
    exec_ok(c,
            "UPDATE credentials AS b SET access_token = a.access_token FROM credentials AS a "
            "WHERE a.user_id = 'alice' AND a.profile = 'jira' "
            "AND b.user_id = 'bob' AND b.profile = 'jira'");
    words = {"access_token", "credential 'jira' of user 'bob'", "moved from another row"};
  }
  SECTION("a credential copied to another profile of the same user") {
    exec_ok(c,
            "UPDATE credentials AS b SET kek_id = a.kek_id, wrapped_key = a.wrapped_key, "
            "access_token = a.access_token FROM credentials AS a "
            "WHERE a.user_id = 'alice' AND a.profile = 'jira' "
            "AND b.user_id = 'alice' AND b.profile = 'conf'");
    damaged = &alice;
    profile = "conf";
    words = {"data key", "credential 'conf' of user 'alice'"};
  }
  SECTION("one column copied into another of the same row") {
    exec_ok(c,
            "UPDATE credentials SET refresh_token = access_token "
            "WHERE user_id = 'bob' AND profile = 'jira'");
    words = {"refresh_token", "credential 'jira' of user 'bob'"};
  }
  SECTION("altered bytes") {
    exec_ok(c,
            "UPDATE credentials SET access_token = set_byte(access_token, 20, "
            "get_byte(access_token, 20) # 1) WHERE user_id = 'bob' AND profile = 'jira'");
    words = {"access_token", "altered"};
  }
  SECTION("a truncated value") {
    exec_ok(c,
            "UPDATE credentials SET previous_refresh_token = substring(previous_refresh_token "
            "FROM 1 FOR 10) WHERE user_id = 'bob' AND profile = 'jira'");
    words = {"previous_refresh_token", "truncated"};
  }
  SECTION("a client secret copied to another user's profile") {
    exec_ok(c,
            "UPDATE profiles AS b SET kek_id = a.kek_id, wrapped_key = a.wrapped_key, "
            "client_secret = a.client_secret FROM profiles AS a "
            "WHERE a.user_id = 'alice' AND a.name = 'conf' "
            "AND b.user_id = 'bob' AND b.name = 'jira'");
    in_credential = false;
    words = {"data key", "profile 'jira' of user 'bob'", "moved from another row"};
  }

  Error error;
  if (in_credential) {
    auto r = damaged->get_credential(profile);
    REQUIRE_FALSE(r);
    error = r.error();
    CHECK_FALSE(damaged->list_credentials());
    // A token set is never written over a row that does not decrypt.
    auto w = damaged->store_token_set(profile, test::make_tokens("new-at", "new-rt", 1));
    REQUIRE_FALSE(w);
    CHECK(w.error().code == Errc::corrupt);
  } else {
    auto r = damaged->get_profile(profile);
    REQUIRE_FALSE(r);
    error = r.error();
    CHECK_FALSE(damaged->list_profiles());
  }
  INFO(error.message);
  CHECK(error.code == Errc::corrupt);
  for (const auto& w : words) CHECK(error.message.find(w) != std::string::npos);
  check_no_secret_in(error.message);
  // The rows the damage did not touch read as before.
  check_filled(alice, "jira", "alice");
}

TEST_CASE("a wrong key-encryption key is refused when the database opens, naming its source",
          "[store][pg][encryption]") {
  PgTestDatabase db;
  FakeClock clock;
  const auto right = test::random_kek("KEK file /etc/tokend/right.kek");
  {
    auto database = PgDatabase::open(db.conninfo(), right, clock);
    REQUIRE(database);
    auto alice = store_of(*database, "alice");
    fill(alice, "jira", "alice");
  }
  auto c = raw_connection(db);
  const std::string before = rows_of(c, "alice");

  const auto check_refused = [&](const Kek& kek, const char* why) {
    auto r = PgDatabase::open(db.conninfo(), kek, clock);
    REQUIRE_FALSE(r);
    INFO(r.error().message);
    CHECK(r.error().code == Errc::wrong_key);
    CHECK(r.error().message.find(kek.source) != std::string::npos);
    CHECK(r.error().message.find(why) != std::string::npos);
    for (const Kek* k : {&kek, &right}) {
      CHECK(r.error().message.find(hex_encode(k->material.reveal())) == std::string::npos);
      CHECK(r.error().message.find(k->material.reveal()) == std::string::npos);
    }
  };
  // Another key: its own id, which no row has.
  const auto other = test::random_kek("KEK file /etc/tokend/other.kek");
  check_refused(other, ("encrypted under key id '" + right.id + "'").c_str());
  // Another key under the right id: the key check does not open.
  check_refused(Kek{other.material, right.id, "TOKEND_KEK"}, "not the key that has this id");

  CHECK(rows_of(c, "alice") == before);
  CHECK(one_int(c, "SELECT count(*) FROM key_checks") == 1);

  // Without its key check, encrypted rows do not take any key as theirs.
  exec_ok(c, "CREATE TABLE saved_checks AS SELECT * FROM key_checks");
  exec_ok(c, "DELETE FROM key_checks");
  for (const Kek* k : {&right, &other}) {
    auto r = PgDatabase::open(db.conninfo(), *k, clock);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::corrupt);
    CHECK(r.error().message.find("no key check") != std::string::npos);
  }
  CHECK(one_int(c, "SELECT count(*) FROM key_checks") == 0);
  exec_ok(c, "INSERT INTO key_checks SELECT * FROM saved_checks");

  auto database = PgDatabase::open(db.conninfo(), right, clock);
  REQUIRE(database);
  auto alice = store_of(*database, "alice");
  check_filled(alice, "jira", "alice");
}

TEST_CASE("rotate_key re-wraps every data key; afterwards only the new key opens the database",
          "[store][pg][encryption]") {
  PgTestDatabase db;
  FakeClock clock;
  const auto old_kek = test::random_kek("old KEK");
  auto database = PgDatabase::open(db.conninfo(), old_kek, clock);
  REQUIRE(database);
  auto alice = store_of(*database, "alice");
  auto bob = store_of(*database, "bob");
  fill(alice, "jira", "alice");
  fill(bob, "jira", "bob");
  fill(bob, "conf", "bob2");
  REQUIRE(bob.put_profile(test::make_profile("public")));  // no secrets: no data key

  auto c = raw_connection(db);
  const char* k_envelopes =
      "SELECT coalesce(string_agg(user_id || '/' || profile || ' ' || kek_id || ' ' || "
      "encode(wrapped_key, 'hex') || ' ' || encode(access_token, 'hex'), ',' ORDER BY user_id, "
      "profile), '') FROM credentials WHERE wrapped_key IS NOT NULL";
  const std::string before = one_text(c, k_envelopes);

  const auto new_kek = test::random_kek("new KEK");
  REQUIRE(database->rotate_key(new_kek));
  CHECK(database->key_id() == new_kek.id);

  // Every row with a secret names the new key, its data key is wrapped
  // anew, and the encrypted values themselves are unchanged.
  for (const char* sql :
       {"SELECT count(*) FROM credentials WHERE wrapped_key IS NOT NULL AND kek_id <> $1",
        "SELECT count(*) FROM profiles WHERE wrapped_key IS NOT NULL AND kek_id <> $1"}) {
    CHECK(one_int(c, sql, pg::Params().text(new_kek.id)) == 0);
  }
  CHECK(one_int(c, "SELECT count(*) FROM credentials WHERE wrapped_key IS NOT NULL") == 3);
  CHECK(one_int(c, "SELECT count(*) FROM profiles WHERE wrapped_key IS NOT NULL") == 3);
  const std::string now = one_text(c, k_envelopes);
  REQUIRE(now.size() == before.size());
  CHECK(now != before);
  // Row by row: the wrapped key changed, the access token did not.
  const auto split = [](const std::string& s) {
    std::vector<std::vector<std::string>> rows;
    std::size_t start = 0;
    while (start <= s.size()) {
      const std::size_t end = std::min(s.find(',', start), s.size());
      std::vector<std::string> fields;
      std::size_t f = start;
      while (f < end) {
        const std::size_t sp = std::min(s.find(' ', f), end);
        fields.push_back(s.substr(f, sp - f));
        f = sp + 1;
      }
      rows.push_back(fields);
      start = end + 1;
    }
    return rows;
  };
  const auto rows_before = split(before);
  const auto rows_now = split(now);
  REQUIRE(rows_before.size() == 3);
  REQUIRE(rows_now.size() == 3);
  for (std::size_t i = 0; i < 3; ++i) {
    REQUIRE(rows_now[i].size() == 4);
    CHECK(rows_now[i][0] == rows_before[i][0]);
    CHECK(rows_before[i][1] == old_kek.id);
    CHECK(rows_now[i][1] == new_kek.id);
    CHECK(rows_now[i][2] != rows_before[i][2]);
    CHECK(rows_now[i][3] == rows_before[i][3]);
  }

  // The stores in use go on with the new key; so does a fresh open.
  check_filled(alice, "jira", "alice");
  check_filled(bob, "conf", "bob2");
  REQUIRE(alice.store_token_set("jira", test::make_tokens("alice-at3", "alice-rt3", 3)));
  {
    auto fresh = PgDatabase::open(db.conninfo(), new_kek, clock);
    REQUIRE(fresh);
    auto bob2 = store_of(*fresh, "bob");
    check_filled(bob2, "jira", "bob");
    CHECK(store_of(*fresh, "alice").get_credential("jira")->access_token.reveal() == "alice-at3");
  }
  // The old key no longer opens it.
  auto old_open = PgDatabase::open(db.conninfo(), old_kek, clock);
  REQUIRE_FALSE(old_open);
  CHECK(old_open.error().code == Errc::wrong_key);
  CHECK(old_open.error().message.find("old KEK") != std::string::npos);
  CHECK(old_open.error().message.find(new_kek.id) != std::string::npos);
  // A key with the current id is refused.
  CHECK(database->rotate_key(Kek{*random_secret(32), database->key_id(), "again"}).error().code ==
        Errc::invalid_argument);
}

TEST_CASE("use_key: a replica switches to the key another process rotated to",
          "[store][pg][encryption]") {
  PgTestDatabase db;
  FakeClock clock;
  const auto old_kek = test::random_kek("old KEK");
  auto rotating = PgDatabase::open(db.conninfo(), old_kek, clock);
  auto replica = PgDatabase::open(db.conninfo(), old_kek, clock);
  REQUIRE(rotating);
  REQUIRE(replica);
  auto alice = store_of(*replica, "alice");
  fill(alice, "jira", "alice");

  // The key in use again: nothing to do.
  auto same = replica->use_key(old_kek);
  REQUIRE(same);
  CHECK_FALSE(*same);
  // A key the database does not know is refused, naming the id in use,
  // and the key in use stays.
  const auto stranger = test::random_kek("stranger KEK");
  auto refused = replica->use_key(stranger);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == Errc::wrong_key);
  CHECK(refused.error().message.find("stranger KEK") != std::string::npos);
  CHECK(refused.error().message.find(old_kek.id) != std::string::npos);
  CHECK(replica->key_id() == old_kek.id);
  auto c = raw_connection(db);
  CHECK(one_int(c, "SELECT count(*) FROM key_checks WHERE kek_id = $1",
                pg::Params().text(stranger.id)) == 0);
  // A key with the current id but other bytes does not open its key check.
  auto forged = replica->use_key(Kek{*random_secret(32), old_kek.id, "forged"});
  REQUIRE_FALSE(forged);
  CHECK(forged.error().code == Errc::wrong_key);
  CHECK(replica->key_id() == old_kek.id);

  // Another process rotates: the replica's writes fail, naming the new id
  // and what to do, until it takes the new key.
  const auto new_kek = test::random_kek("new KEK");
  REQUIRE(rotating->rotate_key(new_kek));
  auto stale = alice.store_token_set("jira", test::make_tokens("alice-at2", "alice-rt2", 2));
  REQUIRE_FALSE(stale);
  CHECK(stale.error().code == Errc::wrong_key);
  CHECK(stale.error().message.find(new_kek.id) != std::string::npos);
  CHECK(stale.error().message.find("SIGHUP") != std::string::npos);
  // The old key no longer proves itself either.
  CHECK(replica->use_key(test::random_kek("another")).error().code == Errc::wrong_key);
  auto switched = replica->use_key(new_kek);
  REQUIRE(switched);
  CHECK(*switched);
  CHECK(replica->key_id() == new_kek.id);
  // Its stores use it at once: the write goes through, under the new id.
  REQUIRE(alice.store_token_set("jira", test::make_tokens("alice-at2", "alice-rt2", 2)));
  CHECK(alice.get_credential("jira")->access_token.reveal() == "alice-at2");
  CHECK(one_int(c, "SELECT count(*) FROM credentials WHERE kek_id <> $1",
                pg::Params().text(new_kek.id)) == 0);
  CHECK(PgDatabase::open(db.conninfo(), old_kek, clock).error().code == Errc::wrong_key);
}

TEST_CASE("a replica still on the rotated-away key writes no row that no key opens",
          "[store][pg][encryption]") {
  PgTestDatabase db;
  FakeClock clock;
  const auto old_kek = test::random_kek("old KEK");
  auto rotating = PgDatabase::open(db.conninfo(), old_kek, clock);
  auto stale = PgDatabase::open(db.conninfo(), old_kek, clock);
  REQUIRE(rotating);
  REQUIRE(stale);
  auto alice = store_of(*stale, "alice");
  // A profile without secrets and an empty credential: nothing to decrypt,
  // so nothing on the read path notices the rotation.
  REQUIRE(alice.put_profile(test::make_profile("empty")));
  const auto new_kek = test::random_kek("new KEK");
  REQUIRE(rotating->rotate_key(new_kek));

  // The empty credential's first tokens.
  auto first = alice.store_token_set("empty", test::make_tokens("at-first", "rt-first", 1));
  REQUIRE_FALSE(first);
  CHECK(first.error().code == Errc::wrong_key);
  CHECK(first.error().message.find("SIGHUP") != std::string::npos);
  CHECK(first.error().message.find("at-first") == std::string::npos);
  // A new profile with a client secret.
  auto p = test::make_profile("fresh");
  p.client_secret = Secret("fresh-client-secret");
  auto put = alice.put_profile(p);
  REQUIRE_FALSE(put);
  CHECK(put.error().code == Errc::wrong_key);
  // A login flow's PKCE verifier.
  PendingLogin flow;
  flow.profile = "empty";
  flow.code_verifier = Secret("verifier-under-the-old-key");
  flow.redirect_uri = "https://tokend.example.com/connect/callback";
  flow.expires_at_ms = std::int64_t{1} << 50;
  auto pending = alice.put_login_flow(Secret("state-under-the-old-key"), flow);
  REQUIRE_FALSE(pending);
  CHECK(pending.error().code == Errc::wrong_key);
  // Nothing was written: no row under the old key id, no new profile.
  auto c = raw_connection(db);
  CHECK(one_int(c, "SELECT count(*) FROM profiles WHERE name = 'fresh'", pg::Params()) == 0);
  for (const char* table : {"credentials", "login_flows"}) {
    INFO(table);
    CHECK(one_int(c, fmt::format("SELECT count(*) FROM {} WHERE kek_id = $1", table).c_str(),
                  pg::Params().text(old_kek.id)) == 0);
  }
  // After it takes the new key, the same writes go through and read back.
  REQUIRE(stale->use_key(new_kek));
  REQUIRE(alice.store_token_set("empty", test::make_tokens("at-first", "rt-first", 1)));
  REQUIRE(alice.put_profile(p));
  CHECK(store_of(*rotating, "alice").get_credential("empty")->access_token.reveal() == "at-first");
  CHECK(store_of(*rotating, "alice").get_profile("fresh")->client_secret.reveal() ==
        "fresh-client-secret");
}

TEST_CASE("a rotation that meets a damaged row changes nothing", "[store][pg][encryption]") {
  PgTestDatabase db;
  FakeClock clock;
  const auto old_kek = test::random_kek("old KEK");
  auto database = PgDatabase::open(db.conninfo(), old_kek, clock);
  REQUIRE(database);
  auto alice = store_of(*database, "alice");
  auto bob = store_of(*database, "bob");
  fill(alice, "jira", "alice");
  fill(bob, "jira", "bob");
  auto c = raw_connection(db);
  exec_ok(c,
          "UPDATE credentials SET wrapped_key = set_byte(wrapped_key, 30, "
          "get_byte(wrapped_key, 30) # 1) WHERE user_id = 'bob'");
  const std::string before = rows_of(c, "alice") + rows_of(c, "bob");

  const auto new_kek = test::random_kek("new KEK");
  auto r = database->rotate_key(new_kek);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::corrupt);
  CHECK(r.error().message.find("credential 'jira' of user 'bob'") != std::string::npos);
  CHECK(database->key_id() == old_kek.id);
  CHECK(rows_of(c, "alice") + rows_of(c, "bob") == before);
  check_filled(alice, "jira", "alice");
  CHECK(PgDatabase::open(db.conninfo(), old_kek, clock));
  CHECK(PgDatabase::open(db.conninfo(), new_kek, clock).error().code == Errc::wrong_key);
}

TEST_CASE("no secret in plaintext: neither pg_dump nor the server's statement log holds one",
          "[store][pg][encryption]") {
  PgTestDatabase db;
  FakeClock clock;
  auto database = PgDatabase::open(db.conninfo(), test::random_kek(), clock);
  REQUIRE(database);
  auto alice = store_of(*database, "alice");
  const std::vector<std::string> secrets = {"ACCESS-MARKER-7f3a9c", "REFRESH-MARKER-b81e22",
                                            "CLIENTSECRET-MARKER-44d0"};
  const std::string visible = "PROFILECFG-MARKER-e1";  // not a secret: stored as it is

  auto p = test::make_profile("marked");
  p.client_secret = Secret(secrets[2]);
  p.config.description = visible;
  REQUIRE(alice.put_profile(p));
  for (int i = 0; i < 3; ++i) {
    // Rotations: the refresh tokens pass through the "previous" column too.
    REQUIRE(alice.store_token_set(
        "marked",
        test::make_tokens(secrets[0] + std::to_string(i), secrets[1] + std::to_string(i), 1), {},
        99));
  }
  REQUIRE(database->rotate_key(test::random_kek("second KEK")));
  REQUIRE(alice.mark_refresh_inflight("marked", 5));
  auto cred = alice.get_credential("marked");
  REQUIRE(cred);
  CHECK(cred->refresh_token.reveal() == secrets[1] + "2");
  CHECK(cred->previous_refresh_token.reveal() == secrets[1] + "1");

  const std::string dump = db.dump();
  const std::string log = test::PgServer::shared().log();
  // The controls: the dump holds the data, and the log shows every
  // statement's parameters, so a secret sent in any form would be in them.
  REQUIRE(dump.find(visible) != std::string::npos);
  REQUIRE(log.find(visible) != std::string::npos);
  for (const auto& secret : secrets) {
    for (const std::string& form : {secret, hex_encode(secret), base64_encode(secret)}) {
      INFO(form);
      CHECK(dump.find(form) == std::string::npos);
      CHECK(log.find(form) == std::string::npos);
    }
  }
}

TEST_CASE("a lost connection fails one call with Errc::unavailable; the next reconnects",
          "[store][pg]") {
  PgTestDatabase db;
  FakeClock clock;
  auto database = PgDatabase::open(db.conninfo(), test::random_kek(), clock);
  REQUIRE(database);
  auto alice = store_of(*database, "alice");
  fill(alice, "jira", "alice");
  auto c = raw_connection(db);
  CHECK(one_int(c,
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) FROM "
                "pg_stat_activity WHERE datname = current_database() AND application_name = "
                "'tokend' AND pid <> pg_backend_pid()") == 1);
  auto lost = alice.get_credential("jira");
  REQUIRE_FALSE(lost);
  CHECK(lost.error().code == Errc::unavailable);
  check_filled(alice, "jira", "alice");
}

TEST_CASE("refresh claims: one connection (replica) at a time, ended by its connection",
          "[store][pg][replicas]") {
  PgTestDatabase db;
  FakeClock clock;
  const auto kek = test::random_kek();
  auto two = PgDatabase::open(db.conninfo(), kek, clock);
  REQUIRE(two);
  auto b = store_of(*two, "alice");
  {
    auto one = PgDatabase::open(db.conninfo(), kek, clock);
    REQUIRE(one);
    auto a = store_of(*one, "alice");
    REQUIRE(a.put_profile(test::make_profile("p")));
    REQUIRE(a.put_profile(test::make_profile("q")));
    REQUIRE(a.store_token_set("p", test::make_tokens("at1", "rt1", 1)));

    auto mine = a.claim_refresh("p");
    REQUIRE(mine);
    CHECK(mine->ours);
    CHECK(mine->credential.refresh_token.reveal() == "rt1");
    // Claiming what it holds again is still its claim (and one release ends it).
    CHECK(a.claim_refresh("p")->ours);
    REQUIRE(a.mark_refresh_inflight("p", 1234));

    // The other replica: not its claim, but the row as stored now.
    auto theirs = b.claim_refresh("p");
    REQUIRE(theirs);
    CHECK_FALSE(theirs->ours);
    CHECK(theirs->credential.refresh_inflight_since_ms == 1234);
    CHECK(theirs->credential.generation == 1);
    // Another credential, and the same name of another user, are claimed apart.
    CHECK(b.claim_refresh("q")->ours);
    b.release_refresh("q");
    REQUIRE(store_of(*one, "bob").put_profile(test::make_profile("p")));
    auto bob = store_of(*two, "bob");
    CHECK(bob.claim_refresh("p")->ours);
    bob.release_refresh("p");

    a.release_refresh("p");
    a.release_refresh("p");  // idempotent
    CHECK(b.claim_refresh("p")->ours);
    b.release_refresh("p");
    CHECK(a.claim_refresh("p")->ours);
    // The first replica goes away (its connection closes) holding the claim.
  }
  // The server drops the session's locks when its backend has seen the
  // connection close, a moment later: the survivor tries again meanwhile.
  auto taken = b.claim_refresh("p");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (taken && !taken->ours && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    taken = b.claim_refresh("p");
  }
  REQUIRE(taken);
  CHECK(taken->ours);
  CHECK(taken->credential.refresh_inflight_since_ms == 1234);  // the marker stays
  b.release_refresh("p");
}

TEST_CASE("a listener gets what another connection NOTIFYs; connections have a statement timeout",
          "[store][pg][replicas]") {
  PgTestDatabase db;
  FakeClock clock;
  auto database = PgDatabase::open(db.conninfo(), test::random_kek(), clock);
  REQUIRE(database);
  auto listener = PgListener::open(db.conninfo(), "tokend_test_channel");
  REQUIRE(listener);
  REQUIRE(listener->socket() >= 0);
  REQUIRE(database->notify("tokend_test_channel", R"({"hello":"there"})"));
  REQUIRE(database->notify("another_channel", "not for it"));
  REQUIRE(database->notify("tokend_test_channel", "second"));
  std::vector<Notification> got;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (got.size() < 2 && std::chrono::steady_clock::now() < deadline) {
    pollfd p{listener->socket(), POLLIN, 0};
    ::poll(&p, 1, 100);
    auto notes = listener->read();
    REQUIRE(notes);
    got.insert(got.end(), notes->begin(), notes->end());
  }
  REQUIRE(got.size() == 2);
  CHECK(got[0].channel == "tokend_test_channel");
  CHECK(got[0].payload == R"({"hello":"there"})");
  CHECK(got[1].payload == "second");
  REQUIRE(listener->reconnect());
  CHECK(listener->socket() >= 0);

  auto c = pg::Connection::open(db.conninfo());
  REQUIRE(c);
  auto timeout = c->exec("SELECT current_setting('statement_timeout')");
  REQUIRE(timeout);
  CHECK(timeout->text(0, 0) == "15s");
}

// --- login flows across replicas (store/login_flows.hpp) ---------------------

namespace {

PendingLogin make_login(const std::string& profile, const std::string& verifier,
                        std::int64_t expires_at_ms) {
  PendingLogin f;
  f.profile = profile;
  f.code_verifier = Secret(verifier);
  f.redirect_uri = "https://tokend.example.com/connect/callback";
  f.issuer = "https://as.example.com";
  f.issuer_required = true;
  f.resource = "https://mcp.example.com/mcp";
  f.scopes = {"read:jira-work", "offline_access"};
  f.started_at_ms = 1'000;
  f.expires_at_ms = expires_at_ms;
  f.replica = "123-abcdef";
  f.flow_id = 7;
  return f;
}

}  // namespace

TEST_CASE("schema 3 adds login_flows to a schema-2 database, its rows kept",
          "[store][pg][migration]") {
  PgTestDatabase db;
  auto c = raw_connection(db);
  REQUIRE(pg::migrate(c, 2));
  CHECK(pg::schema_version(c).value_or(-1) == 2);
  CHECK(catalogue(c).find("login_flows.") == std::string::npos);
  FakeClock clock;
  const auto kek = test::random_kek();
  {
    // A PgDatabase of this version migrates when it opens; the rows it
    // finds stay readable.
    exec_ok(c,
            "INSERT INTO profiles (user_id, name, kind, created_at, updated_at) "
            "VALUES ('alice', 'jira', 'oauth2', 1, 1)");
    exec_ok(c, "INSERT INTO credentials (user_id, profile) VALUES ('alice', 'jira')");
  }
  auto database = PgDatabase::open(db.conninfo(), kek, clock);
  REQUIRE(database);
  CHECK(database->schema_version().value_or(-1) == 3);
  CHECK(catalogue(c).find("login_flows.code_verifier:bytea") != std::string::npos);
  auto alice = store_of(*database, "alice");
  REQUIRE(alice.get_profile("jira"));
  REQUIRE(alice.put_login_flow(Secret("state-1"), make_login("jira", "verifier-1", 60'000)));
  CHECK(one_int(c, "SELECT count(*) FROM login_flows") == 1);
}

TEST_CASE("login flows: round trip by state, claimed once, one per profile, the user's own",
          "[store][pg][login_flows]") {
  PgTestDatabase db;
  FakeClock clock;
  auto database = PgDatabase::open(db.conninfo(), test::random_kek(), clock);
  REQUIRE(database);
  auto alice = store_of(*database, "alice");
  auto bob = store_of(*database, "bob");
  REQUIRE(alice.put_profile(test::make_profile("jira")));
  REQUIRE(alice.put_profile(test::make_profile("conf")));
  REQUIRE(bob.put_profile(test::make_profile("jira")));
  const std::int64_t expires = to_unix_ms(clock.wall_now()) + 600'000;
  const Secret state("STATE-MARKER-1");
  {
    auto put = alice.put_login_flow(state, make_login("jira", "VERIFIER-MARKER-1", expires));
    INFO((put ? "" : put.error().message));
    REQUIRE(put);
  }

  // Bob, with the state: nothing, and Alice's flow stays.
  for (const std::optional<std::string_view> profile :
       {std::optional<std::string_view>{}, std::optional<std::string_view>{"jira"}}) {
    auto none = bob.take_login_flow(profile, &state);
    REQUIRE(none);
    CHECK_FALSE(*none);
  }
  CHECK(bob.has_login_flow("jira", state).value_or(true) == false);
  CHECK(alice.has_login_flow("jira", state).value_or(false));
  // Another state, or the state with another profile: nothing.
  const Secret other("STATE-MARKER-2");
  CHECK_FALSE(alice.take_login_flow(std::nullopt, &other).value());
  CHECK_FALSE(alice.take_login_flow("conf", &state).value());
  CHECK(alice.has_login_flow("jira", state).value_or(false));

  auto taken = alice.take_login_flow(std::nullopt, &state);
  REQUIRE(taken);
  REQUIRE(*taken);
  const PendingLogin& f = **taken;
  CHECK(f.profile == "jira");
  CHECK(f.code_verifier.reveal() == "VERIFIER-MARKER-1");
  CHECK(f.redirect_uri == "https://tokend.example.com/connect/callback");
  CHECK(f.issuer == "https://as.example.com");
  CHECK(f.issuer_required);
  CHECK(f.resource == "https://mcp.example.com/mcp");
  CHECK(f.scopes == std::vector<std::string>{"read:jira-work", "offline_access"});
  CHECK(f.started_at_ms == 1'000);
  CHECK(f.expires_at_ms == expires);
  CHECK(f.replica == "123-abcdef");
  CHECK(f.flow_id == 7);
  auto again = alice.take_login_flow(std::nullopt, &state);
  REQUIRE(again);
  CHECK_FALSE(*again);
  CHECK_FALSE(alice.has_login_flow("jira", state).value_or(true));

  // One flow per profile: a new start replaces the old, whose state then
  // finds nothing.
  REQUIRE(alice.put_login_flow(state, make_login("jira", "v-old", expires)));
  REQUIRE(alice.put_login_flow(other, make_login("jira", "v-new", expires)));
  CHECK_FALSE(alice.take_login_flow(std::nullopt, &state).value());
  auto by_profile = alice.take_login_flow("jira", nullptr);
  REQUIRE(by_profile);
  REQUIRE(*by_profile);
  CHECK((*by_profile)->code_verifier.reveal() == "v-new");
  // No PKCE: no verifier, none stored.
  REQUIRE(alice.put_login_flow(state, make_login("conf", "", expires)));
  auto c = raw_connection(db);
  CHECK(one_int(c, "SELECT count(*) FROM login_flows WHERE code_verifier IS NULL") == 1);
  auto plain = alice.take_login_flow("conf", &state);
  REQUIRE(plain);
  REQUIRE(*plain);
  CHECK((*plain)->code_verifier.empty());
  // drop_login_flow removes only the flow with that state.
  REQUIRE(alice.put_login_flow(state, make_login("jira", "v", expires)));
  REQUIRE(alice.drop_login_flow("jira", other));
  CHECK(alice.has_login_flow("jira", state).value_or(false));
  REQUIRE(alice.drop_login_flow("jira", state));
  CHECK(one_int(c, "SELECT count(*) FROM login_flows") == 0);
  // The profile's removal takes its flow with it.
  REQUIRE(alice.put_login_flow(state, make_login("jira", "v", expires)));
  REQUIRE(alice.delete_profile("jira"));
  CHECK(one_int(c, "SELECT count(*) FROM login_flows") == 0);
}

TEST_CASE("login flows: the same flow claimed through two connections is redeemed once",
          "[store][pg][login_flows][replicas]") {
  PgTestDatabase db;
  FakeClock clock;
  const auto kek = test::random_kek();
  auto one = PgDatabase::open(db.conninfo(), kek, clock);
  auto two = PgDatabase::open(db.conninfo(), kek, clock);
  REQUIRE(one);
  REQUIRE(two);
  auto a1 = store_of(*one, "alice");
  auto a2 = store_of(*two, "alice");
  REQUIRE(a1.put_profile(test::make_profile("jira")));
  const Secret state("s");
  const std::int64_t expires = to_unix_ms(clock.wall_now()) + 600'000;
  int got = 0;
  for (int round = 0; round < 20; ++round) {
    REQUIRE(a1.put_login_flow(state, make_login("jira", "v", expires)));
    // Each connection from a thread of its own, both claiming at once.
    std::atomic<int> ready{0};
    Result<std::optional<PendingLogin>> x = std::optional<PendingLogin>{};
    Result<std::optional<PendingLogin>> y = std::optional<PendingLogin>{};
    auto claim = [&](PgStore& s, Result<std::optional<PendingLogin>>& out) {
      ready.fetch_add(1);
      while (ready.load() < 2) std::this_thread::yield();
      out = s.take_login_flow(std::nullopt, &state);
    };
    std::thread t1(claim, std::ref(a1), std::ref(x));
    std::thread t2(claim, std::ref(a2), std::ref(y));
    t1.join();
    t2.join();
    REQUIRE(x);
    REQUIRE(y);
    got += (*x ? 1 : 0) + (*y ? 1 : 0);
    CHECK((*x).has_value() != (*y).has_value());
  }
  CHECK(got == 20);
}

TEST_CASE("login flows: expired ones are never returned and are deleted",
          "[store][pg][login_flows]") {
  PgTestDatabase db;
  FakeClock clock;
  const auto kek = test::random_kek();
  auto database = PgDatabase::open(db.conninfo(), kek, clock);
  REQUIRE(database);
  auto alice = store_of(*database, "alice");
  REQUIRE(alice.put_profile(test::make_profile("jira")));
  REQUIRE(alice.put_profile(test::make_profile("conf")));
  const std::int64_t now = to_unix_ms(clock.wall_now());
  const Secret state("s1");
  REQUIRE(alice.put_login_flow(state, make_login("jira", "v", now + 1'000)));
  CHECK(alice.has_login_flow("jira", state).value_or(false));
  clock.jump_wall(Millis(1'000));
  CHECK_FALSE(alice.has_login_flow("jira", state).value_or(true));
  auto c = raw_connection(db);
  CHECK(one_int(c, "SELECT count(*) FROM login_flows") == 1);
  // Another flow's start deletes the expired rows (every user's).
  REQUIRE(alice.put_login_flow(Secret("s2"), make_login("conf", "v", now + 600'000)));
  CHECK(one_int(c, "SELECT count(*) FROM login_flows") == 1);
  // Claiming an expired one returns nothing, and it is gone.
  clock.jump_wall(Millis(600'000));
  const Secret s2("s2");
  auto late = alice.take_login_flow(std::nullopt, &s2);
  REQUIRE(late);
  CHECK_FALSE(*late);
  CHECK(one_int(c, "SELECT count(*) FROM login_flows") == 0);
  // At start (PgDatabase::open), expired rows go too.
  REQUIRE(alice.put_login_flow(state, make_login("jira", "v", to_unix_ms(clock.wall_now()) + 10)));
  clock.jump_wall(Millis(10));
  CHECK(one_int(c, "SELECT count(*) FROM login_flows") == 1);
  REQUIRE(PgDatabase::open(db.conninfo(), kek, clock));
  CHECK(one_int(c, "SELECT count(*) FROM login_flows") == 0);
}

TEST_CASE("login flows: the verifier and the state are not in the database nor its log; rotated",
          "[store][pg][login_flows][encryption]") {
  PgTestDatabase db;
  FakeClock clock;
  auto database = PgDatabase::open(db.conninfo(), test::random_kek(), clock);
  REQUIRE(database);
  auto alice = store_of(*database, "alice");
  REQUIRE(alice.put_profile(test::make_profile("jira")));
  const std::string verifier = "VERIFIER-MARKER-9d41c7";
  const std::string state = "STATE-MARKER-3a0e55";
  const std::int64_t expires = to_unix_ms(clock.wall_now()) + 600'000;
  REQUIRE(alice.put_login_flow(Secret(state), make_login("jira", verifier, expires)));

  auto c = raw_connection(db);
  // The table's own bytes: the row as text, the verifier column an envelope.
  const std::string row =
      one_text(c, "SELECT row_to_json(t)::text FROM login_flows t WHERE user_id = 'alice'");
  CHECK(row.find("connect/callback") != std::string::npos);  // the control
  CHECK(one_int(c, "SELECT length(code_verifier) FROM login_flows") ==
        static_cast<std::int64_t>(verifier.size() + 29));
  const std::string dump = db.dump();
  const std::string log = test::PgServer::shared().log();
  REQUIRE(dump.find("connect/callback") != std::string::npos);
  for (const std::string& secret : {verifier, state}) {
    for (const std::string& form : {secret, hex_encode(secret), base64_encode(secret)}) {
      INFO(form);
      CHECK(row.find(form) == std::string::npos);
      CHECK(dump.find(form) == std::string::npos);
      CHECK(log.find(form) == std::string::npos);
    }
  }
  // Moved to another user's row, the verifier does not decrypt.
  auto bob = store_of(*database, "bob");
  REQUIRE(bob.put_profile(test::make_profile("jira")));
  REQUIRE(bob.put_login_flow(Secret("bob-state"), make_login("jira", "bob-v", expires)));
  exec_ok(c,
          "UPDATE login_flows SET (kek_id, wrapped_key, code_verifier) = (SELECT kek_id, "
          "wrapped_key, code_verifier FROM login_flows WHERE user_id = 'alice') WHERE user_id = "
          "'bob'");
  const Secret bob_state("bob-state");
  auto moved = bob.take_login_flow(std::nullopt, &bob_state);
  REQUIRE_FALSE(moved);
  CHECK(moved.error().code == Errc::corrupt);
  CHECK(moved.error().message.find(verifier) == std::string::npos);

  // A key rotation re-wraps the flow's data key; it still opens.
  REQUIRE(database->rotate_key(test::random_kek("second KEK")));
  CHECK(one_int(c, "SELECT count(*) FROM login_flows WHERE kek_id <> $1",
                pg::Params().text(database->key_id())) == 0);
  const Secret alice_state(state);
  auto taken = alice.take_login_flow("jira", &alice_state);
  REQUIRE(taken);
  REQUIRE(*taken);
  CHECK((*taken)->code_verifier.reveal() == verifier);
}

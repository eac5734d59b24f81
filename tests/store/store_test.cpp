// The store::Store contract, run against every implementation: each test
// case is instantiated once per backend (store_backends.hpp), and the
// SQLCipher and the PostgreSQL store must both pass it.
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>

#include "store/store_backends.hpp"
#include "support/temp_dir.hpp"

using namespace tokend;
using namespace tokend::store;
using test::PgBackend;
using test::SqlcipherBackend;
using test::TempDir;

TEMPLATE_TEST_CASE("profiles round trip: put, get, list, replace, delete", "[store]",
                   SqlcipherBackend, PgBackend) {
  FakeClock clock;
  TestType backend(clock);
  auto s = backend.open();
  REQUIRE(s);
  auto p = test::make_profile("jira");
  p.client_secret = Secret("cs");
  REQUIRE(s->put_profile(p));
  auto api = test::make_profile("conf", CredentialKind::api_token);
  api.config = {};
  api.config.site = "https://x.atlassian.net";
  api.config.email = "a@b.c";
  REQUIRE(s->put_profile(api));

  auto got = s->get_profile("jira");
  REQUIRE(got);
  CHECK(got->kind == CredentialKind::oauth2);
  CHECK(got->provider == "generic");
  CHECK(got->config == p.config);
  CHECK(got->client_secret.reveal() == "cs");
  CHECK(got->created_at_ms == to_unix_ms(clock.wall_now()));

  auto list = s->list_profiles();
  REQUIRE(list);
  REQUIRE(list->size() == 2);
  CHECK((*list)[0].name == "conf");
  CHECK((*list)[1].name == "jira");

  // Replace keeps created_at and the credential, bumps updated_at.
  REQUIRE(s->store_token_set("jira", test::make_tokens("at1", "rt1", 5000)));
  clock.advance(std::chrono::seconds(10));
  p.config.scopes = std::vector<std::string>{"read"};
  REQUIRE(s->put_profile(p));
  got = s->get_profile("jira");
  CHECK(got->config.scopes == std::vector<std::string>{"read"});
  CHECK(got->updated_at_ms - got->created_at_ms == 10000);
  CHECK(s->get_credential("jira")->access_token.reveal() == "at1");

  REQUIRE(s->delete_profile("jira"));
  CHECK(s->get_profile("jira").error().code == Errc::not_found);
  CHECK(s->get_credential("jira").error().code == Errc::not_found);  // cascaded
  CHECK(s->delete_profile("jira").error().code == Errc::not_found);
}

TEMPLATE_TEST_CASE("invalid profile names are refused and nothing is stored", "[store]",
                   SqlcipherBackend, PgBackend) {
  FakeClock clock;
  TestType backend(clock);
  auto s = backend.open();
  REQUIRE(s);
  for (const char* bad : {"", ".hidden", "-x", "a/b", "a b", "ü", "a\nb"}) {
    auto r = s->put_profile(test::make_profile(bad));
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::invalid_argument);
  }
  CHECK_FALSE(s->put_profile(test::make_profile(std::string(65, 'a'))));
  CHECK(s->put_profile(test::make_profile(std::string(64, 'a'))));
  CHECK(s->list_profiles()->size() == 1);
}

TEMPLATE_TEST_CASE("a new profile has an empty credential", "[store]", SqlcipherBackend,
                   PgBackend) {
  FakeClock clock;
  TestType backend(clock);
  auto s = backend.open();
  REQUIRE(s);
  REQUIRE(s->put_profile(test::make_profile("p")));
  auto c = s->get_credential("p");
  REQUIRE(c);
  CHECK(c->state == CredState::empty);
  CHECK(c->access_token.empty());
  CHECK(c->generation == 0);
  CHECK_FALSE(c->expires_at_ms);
}

TEMPLATE_TEST_CASE("store_token_set rotates refresh tokens atomically and bumps the generation",
                   "[store]", SqlcipherBackend, PgBackend) {
  FakeClock clock;
  TestType backend(clock);
  auto s = backend.open();
  REQUIRE(s);
  REQUIRE(s->put_profile(test::make_profile("p")));
  REQUIRE(s->mark_refresh_inflight("p", 42));
  CHECK(s->get_credential("p")->refresh_inflight_since_ms == 42);
  CHECK(s->get_credential("p")->state == CredState::refreshing);

  auto g1 = s->store_token_set("p", test::make_tokens("at1", "rt1", 1000), 0);
  REQUIRE(g1);
  CHECK(*g1 == 1);
  auto c = *s->get_credential("p");
  CHECK(c.access_token.reveal() == "at1");
  CHECK(c.refresh_token.reveal() == "rt1");
  CHECK(c.previous_refresh_token.empty());
  CHECK(c.state == CredState::valid);
  CHECK(c.expires_at_ms == 1000);
  CHECK(c.scope == "read write");
  CHECK_FALSE(c.refresh_inflight_since_ms);

  // Rotation: rt1 becomes previous, kept until the given time.
  auto g2 = s->store_token_set("p", test::make_tokens("at2", "rt2", 2000), 1, 99999);
  REQUIRE(g2);
  c = *s->get_credential("p");
  CHECK(c.refresh_token.reveal() == "rt2");
  CHECK(c.previous_refresh_token.reveal() == "rt1");
  CHECK(c.previous_refresh_until_ms == 99999);
  CHECK(c.generation == 2);

  // A response without a refresh token keeps the current one and previous.
  auto no_rt = test::make_tokens("at3", "", 3000);
  REQUIRE(s->store_token_set("p", no_rt, 2));
  c = *s->get_credential("p");
  CHECK(c.access_token.reveal() == "at3");
  CHECK(c.refresh_token.reveal() == "rt2");
  CHECK(c.previous_refresh_token.reveal() == "rt1");

  // Stale generation: conflict, nothing changed.
  auto stale = s->store_token_set("p", test::make_tokens("at4", "rt4", 4000), 1);
  REQUIRE_FALSE(stale);
  CHECK(stale.error().code == Errc::conflict);
  c = *s->get_credential("p");
  CHECK(c.access_token.reveal() == "at3");
  CHECK(c.generation == 3);

  // Neither token: refused. A refresh token alone (an import) is a token set.
  CHECK(s->store_token_set("p", test::make_tokens("", "", 1)).error().code ==
        Errc::invalid_argument);
  CHECK(s->get_credential("p")->generation == 3);
  CHECK(s->store_token_set("p", test::make_tokens("", "rt-only", 1)).value() == 4);
  CHECK(s->get_credential("p")->access_token.empty());
  CHECK(s->get_credential("p")->refresh_token.reveal() == "rt-only");
  CHECK(s->store_token_set("nope", test::make_tokens("a", "b", 1)).error().code == Errc::not_found);
}

TEMPLATE_TEST_CASE("set_state and clear_credential", "[store]", SqlcipherBackend, PgBackend) {
  FakeClock clock;
  TestType backend(clock);
  auto s = backend.open();
  REQUIRE(s);
  REQUIRE(s->put_profile(test::make_profile("p")));
  REQUIRE(s->store_token_set("p", test::make_tokens("at", "rt", 1)));
  REQUIRE(s->mark_refresh_inflight("p", 5));
  REQUIRE(s->set_state("p", CredState::reauth_required, "invalid_grant: token revoked"));
  auto c = *s->get_credential("p");
  CHECK(c.state == CredState::reauth_required);
  CHECK(c.last_error == "invalid_grant: token revoked");
  CHECK_FALSE(c.refresh_inflight_since_ms);
  CHECK(c.access_token.reveal() == "at");
  REQUIRE(s->clear_credential("p"));
  c = *s->get_credential("p");
  CHECK(c.state == CredState::empty);
  CHECK(c.access_token.empty());
  CHECK(c.refresh_token.empty());
  CHECK(c.generation == 2);
  CHECK(s->set_state("nope", CredState::valid).error().code == Errc::not_found);
}

TEMPLATE_TEST_CASE("audit events round trip, newest first", "[store]", SqlcipherBackend,
                   PgBackend) {
  FakeClock clock;
  TestType backend(clock);
  auto s = backend.open();
  REQUIRE(s);
  for (int i = 0; i < 5; ++i) {
    AuditEvent e;
    e.kind = "proxy";
    e.profile = "jira";
    e.peer_uid = 1000;
    e.peer_pid = 100 + i;
    e.detail = {{"method", "GET"}, {"status", 200 + i}};
    REQUIRE(s->append_audit(e));
    clock.advance(std::chrono::milliseconds(1));
  }
  AuditEvent denied;
  denied.kind = "peer_denied";
  denied.peer_uid = 65534;
  REQUIRE(s->append_audit(denied));
  auto events = s->recent_audit(3);
  REQUIRE(events);
  REQUIRE(events->size() == 3);
  CHECK((*events)[0].kind == "peer_denied");
  CHECK((*events)[0].peer_uid == 65534);
  CHECK_FALSE((*events)[0].peer_pid);
  CHECK((*events)[1].detail["status"] == 204);
  CHECK((*events)[1].peer_pid == 104);
  CHECK((*events)[1].at_ms > (*events)[2].at_ms);
}

// Issue 13 finding 13: the audit log has a bound.
TEMPLATE_TEST_CASE("the audit log keeps at most max_rows events, none older than max_age",
                   "[store]", SqlcipherBackend, PgBackend) {
  FakeClock clock;
  TestType backend(clock);
  auto s = backend.open();
  REQUIRE(s);
  CHECK(AuditRetention{}.max_rows == 100'000);
  CHECK(AuditRetention{}.max_age == std::chrono::hours(24 * 90));
  s->set_audit_retention(AuditRetention{5, std::chrono::hours(1)});
  auto event = [](int n) {
    AuditEvent e;
    e.kind = "proxy";
    e.profile = "jira";
    e.detail = {{"n", n}};
    return e;
  };
  for (int i = 0; i < 8; ++i) REQUIRE(s->append_audit(event(i)));
  auto events = s->recent_audit(100);
  REQUIRE(events);
  REQUIRE(events->size() == 5);
  CHECK(events->front().detail["n"] == 7);
  CHECK(events->back().detail["n"] == 3);
  // A batch is pruned in its own transaction too.
  REQUIRE(s->append_audit_batch({event(8), event(9), event(10)}));
  events = s->recent_audit(100);
  REQUIRE(events->size() == 5);
  CHECK(events->back().detail["n"] == 6);
  // Age: an hour and a minute later the old events go with the next append...
  clock.advance(std::chrono::minutes(61));
  REQUIRE(s->append_audit(event(11)));
  events = s->recent_audit(100);
  REQUIRE(events->size() == 1);
  CHECK(events->front().detail["n"] == 11);
  // ...or with prune_audit() when nothing is appended.
  clock.advance(std::chrono::minutes(61));
  REQUIRE(s->prune_audit());
  CHECK(s->recent_audit(100)->empty());
}

TEMPLATE_TEST_CASE("data persists across reopen with the same key", "[store]", SqlcipherBackend,
                   PgBackend) {
  FakeClock clock;
  TestType backend(clock);
  {
    auto s = backend.open();
    REQUIRE(s);
    auto p = test::make_profile("p");
    p.client_secret = Secret("cs");
    REQUIRE(s->put_profile(p));
    REQUIRE(s->store_token_set("p", test::make_tokens("at", "rt", 7)));
    REQUIRE(s->store_token_set("p", test::make_tokens("at2", "rt2", 8), 1, 99));
  }
  auto s = backend.open();
  REQUIRE(s);
  const auto c = s->get_credential("p");
  REQUIRE(c);
  CHECK(c->access_token.reveal() == "at2");
  CHECK(c->refresh_token.reveal() == "rt2");
  CHECK(c->previous_refresh_token.reveal() == "rt");
  CHECK(c->previous_refresh_until_ms == 99);
  CHECK(c->generation == 2);
  CHECK(s->get_profile("p")->client_secret.reveal() == "cs");
}

TEST_CASE("a passphrase key goes through the KDF and reopens", "[store]") {
  TempDir t;
  FakeClock clock;
  const DbKey pass{Secret("correct horse battery staple"), KeyKind::passphrase, "test passphrase"};
  {
    auto s = SqlcipherStore::open(t / "t.db", pass, clock);
    REQUIRE(s);
    REQUIRE(s->put_profile(test::make_profile("p")));
  }
  CHECK(SqlcipherStore::open(t / "t.db", pass, clock));
  const DbKey other{Secret("wrong horse"), KeyKind::passphrase, "test passphrase"};
  CHECK(SqlcipherStore::open(t / "t.db", other, clock).error().code == Errc::wrong_key);
}

// The refresh engine with a real store, a fake clock, a fake timer and a fake
// token endpoint whose answers the test gives by hand.
#include <spdlog/spdlog.h>

#include <catch2/catch_test_macros.hpp>
#include <optional>
#include <random>

#include "oauth/protocol.hpp"
#include "store/store_support.hpp"
#include "support/temp_dir.hpp"
#include "tokens/fake_transport.hpp"
#include "tokens/faulty_store.hpp"
#include "tokens/token_service.hpp"

using namespace tokend;
using namespace tokend::oauth;
using namespace tokend::tokens;
using namespace std::chrono_literals;
using store::CredState;

namespace {

std::string token_json(const std::string& access, const std::string& refresh,
                       int expires_in = 3600) {
  return R"({"access_token":")" + access + R"(","refresh_token":")" + refresh +
         R"(","token_type":"Bearer","expires_in":)" + std::to_string(expires_in) + "}";
}

struct Rig {
  test::TempDir dir;
  FakeClock clock;
  store::SqlcipherStore store;
  test::FaultyStore faulty{store};  // what the service writes through
  EventBus events;
  FakeTimerPort timer{clock};
  FakeTransport http;
  std::vector<Event> seen;
  EventBus::Subscription sub;
  std::unique_ptr<TokenService> tokens;

  explicit Rig(EngineOptions options = {})
      : store(*store::SqlcipherStore::open(dir / "t.db", test::random_raw_key(), clock)) {
    spdlog::set_level(spdlog::level::warn);  // 1,000 "refreshed" lines help nobody
    sub = events.subscribe([this](const Event& e) { seen.push_back(e); });
    if (!options.random01) options.random01 = [] { return 0.5; };
    tokens = std::make_unique<TokenService>(faulty, clock, events, timer, http, std::move(options));
    REQUIRE(tokens->load());
  }

  // An oauth2 profile with a token that expires in `lifetime`.
  void add(const std::string& name, Millis lifetime, const std::string& access = "at-0",
           const std::string& refresh = "rt-0") {
    json::Json body = {{"kind", "oauth2"},
                       {"token_url", "https://auth.example/token"},
                       {"client_id", "cid"},
                       {"access_token", access},
                       {"expires_in", lifetime.count() / 1000}};
    if (!refresh.empty()) body["refresh_token"] = refresh;
    auto spec = parse_profile_spec(name, body, to_unix_ms(clock.wall_now()));
    REQUIRE(spec);
    REQUIRE(tokens->put_profile(std::move(*spec)));
  }

  // Moves time from one armed deadline to the next, up to `limit`, stopping
  // as soon as a request waits for the test to answer it.
  void run_until_idle_or(Millis limit) {
    const auto end = clock.mono_now() + limit;
    while (clock.mono_now() < end && http.pending.empty()) {
      auto at = timer.armed_at();
      if (!at || *at > end) break;
      if (*at > clock.mono_now())
        clock.advance(std::chrono::duration_cast<Millis>(*at - clock.mono_now()));
      timer.fire_due();
    }
  }

  std::size_t events_of(const std::string& type) const {
    return static_cast<std::size_t>(std::count_if(
        seen.begin(), seen.end(), [&](const Event& e) { return to_string(e.kind) == type; }));
  }
};

}  // namespace

TEST_CASE(
    "500 concurrent requests for a fresh token cause exactly one refresh; all get the new token",
    "[refresh][engine]") {
  Rig rig;
  rig.add("p", 30s);  // valid for 30 s; the callers want 60, capped at 20 (30 - 10)
  rig.clock.advance(15s);
  std::vector<std::string> got;
  std::size_t failed = 0;
  for (int i = 0; i < 500; ++i) {
    rig.tokens->token_async("p", {60}, [&](Result<TokenGrant> g) {
      if (g) {
        got.emplace_back(g->token());
      } else {
        ++failed;
      }
    });
  }
  REQUIRE(rig.http.started == 1);
  const auto& req = rig.http.pending.front().request;
  CHECK(req.body.reveal().find("refresh_token=rt-0") != std::string::npos);
  // The in-flight marker was committed before the request left.
  CHECK(rig.store.get_credential("p")->refresh_inflight_since_ms.has_value());
  CHECK(got.empty());

  bool committed_before_wake = false;
  rig.tokens->token_async("p", {60}, [&](Result<TokenGrant>) {
    committed_before_wake = rig.store.get_credential("p")->access_token.reveal() == "at-1";
  });
  rig.http.reply(200, token_json("at-1", "rt-1"));
  CHECK(committed_before_wake);
  CHECK(rig.http.started == 1);
  CHECK(failed == 0);
  REQUIRE(got.size() == 500);
  CHECK(std::all_of(got.begin(), got.end(), [](const std::string& t) { return t == "at-1"; }));
  auto c = *rig.store.get_credential("p");
  CHECK(c.refresh_token.reveal() == "rt-1");
  CHECK(c.previous_refresh_token.reveal() == "rt-0");
  CHECK(c.state == CredState::valid);
  CHECK_FALSE(c.refresh_inflight_since_ms);
  CHECK(rig.events_of("refreshed") == 1);
}

TEST_CASE("scheduled refresh happens before expiry, and again for the rotated token",
          "[refresh][engine]") {
  Rig rig;
  rig.add("p", 3600s);
  rig.run_until_idle_or(3600s);
  REQUIRE(rig.http.started == 1);
  // expires - 300 s buffer - jitter (0.5 * 30 s)
  CHECK(rig.clock.wall_now() >= from_unix_ms(*rig.store.get_credential("p")->expires_at_ms) - 315s);
  rig.http.reply(200, token_json("at-1", "rt-1"));
  rig.run_until_idle_or(3600s);
  REQUIRE(rig.http.started == 2);
  CHECK(rig.http.pending.front().request.body.reveal().find("refresh_token=rt-1") !=
        std::string::npos);
}

TEST_CASE(
    "transient failures back off while the valid token keeps being served; recovery is automatic",
    "[refresh][engine]") {
  Rig rig;
  rig.add("p", 3600s);
  rig.run_until_idle_or(3600s);
  REQUIRE(rig.http.pending.size() == 1);
  const auto before = *rig.store.get_credential("p");
  rig.http.reply(503, "<html>down</html>", "text/html", {{"retry-after", "20"}});
  auto c = *rig.store.get_credential("p");
  CHECK(c.state == CredState::backoff);
  CHECK(c.last_error.find("503") != std::string::npos);
  CHECK(c.access_token == before.access_token);
  CHECK(c.refresh_token == before.refresh_token);
  CHECK(rig.events_of("refresh_failed") == 1);
  // Still valid for ~285 s: served.
  auto g = rig.tokens->token("p", {60});
  INFO((g ? std::string() : g.error().message));
  REQUIRE(g);
  CHECK(g->token() == "at-0");
  // Retry-After 20 s is honoured: nothing before it.
  rig.clock.advance(19s);
  rig.timer.fire_due();
  CHECK(rig.http.pending.empty());
  rig.run_until_idle_or(60s);
  REQUIRE(rig.http.pending.size() == 1);
  rig.http.reply(200, token_json("at-1", "rt-1"));
  CHECK(rig.store.get_credential("p")->state == CredState::valid);
  CHECK(rig.tokens->token("p", {60})->token() == "at-1");
}

TEST_CASE("bad answers change nothing stored and are retried", "[refresh][engine]") {
  const std::pair<long, std::string> bad[] = {
      {200, "<html>Sign in</html>"},
      {200, R"({"access_token":"at-x","refresh_token":"rt-x","expi)"},
      {200, R"({"refresh_token":"rt-x","expires_in":3600})"},
      {200, R"({"access_token":"at-x","refresh_token":"rt-x","expires_in":-5})"},
      {200, R"({"access_token":"at-x","refresh_token":"rt-x","expires_in":"soon"})"},
      {500, "<html>error</html>"},
      {502, "<html>bad gateway</html>"},
      {429, ""},
  };
  for (const auto& [status, body] : bad) {
    INFO(status << " " << body);
    Rig rig;
    rig.add("p", 3600s);
    rig.run_until_idle_or(3600s);
    const auto before = *rig.store.get_credential("p");
    rig.http.reply(status, body, body.starts_with("<") ? "text/html" : "application/json");
    const auto after = *rig.store.get_credential("p");
    CHECK(after.access_token == before.access_token);
    CHECK(after.refresh_token == before.refresh_token);
    CHECK(after.generation == before.generation);
    CHECK(after.state == CredState::backoff);
    rig.run_until_idle_or(600s);
    CHECK(rig.http.pending.size() == 1);  // retried on its own
  }
}

TEST_CASE("invalid_grant (400 or Atlassian's 403) needs a login; invalid_client says configuration",
          "[refresh][engine]") {
  for (const long status : {400L, 403L}) {
    Rig rig;
    rig.add("p", 30s);
    rig.clock.advance(15s);  // 15 s left: less than the 20 s a fresh 30 s token can give
    Result<TokenGrant> answer = fail(Errc::internal, "not called");
    rig.tokens->token_async("p", {60}, [&](Result<TokenGrant> g) { answer = std::move(g); });
    rig.http.reply(
        status,
        R"({"error":"invalid_grant","error_description":"Unknown or invalid refresh token."})");
    REQUIRE_FALSE(answer);
    CHECK(answer.error().code == Errc::reauth_required);
    CHECK(rig.store.get_credential("p")->state == CredState::reauth_required);
    CHECK(rig.events_of("reauth_required") == 1);
    auto again = rig.tokens->token("p", {0});
    CHECK(again.error().code == Errc::reauth_required);
    CHECK(again.error().message.find("tokenctl login p") != std::string::npos);
    rig.run_until_idle_or(3600s);
    CHECK(rig.http.started == 1);  // no more attempts
  }
  Rig rig;
  rig.add("p", 30s);
  rig.tokens->refresh("p", [](Result<>) {});
  rig.http.reply(401, R"({"error":"invalid_client"})");
  auto c = *rig.store.get_credential("p");
  CHECK(c.state == CredState::reauth_required);
  CHECK(c.last_error.find("configuration") != std::string::npos);
}

TEST_CASE("a suspend past expiry never serves the expired token", "[refresh][engine]") {
  Rig rig;
  rig.add("p", 600s);
  CHECK(rig.tokens->token("p", {60}));
  rig.clock.suspend(2h);  // wall clock moves, monotonic does not
  auto g = rig.tokens->token("p", {0});
  REQUIRE_FALSE(g);
  CHECK(g.error().code == Errc::unavailable);
  // The watchdog wakes within 30 s of monotonic time and sees it is overdue.
  rig.clock.advance(30s);
  rig.timer.fire_due();
  CHECK(rig.http.started == 1);
  CHECK(rig.tokens->get("p")->state == CredState::refreshing);
  CHECK_FALSE(rig.tokens->token("p", {0}));
  rig.http.fail(Errc::timeout, "no answer");
  CHECK(rig.tokens->get("p")->state == CredState::expired);
  CHECK_FALSE(rig.tokens->token("p", {0}));
}

TEST_CASE("a refresh left in flight by a crash is retried at start with the same refresh token",
          "[refresh][engine]") {
  Rig rig;
  rig.add("p", 3600s);
  REQUIRE(rig.store.mark_refresh_inflight("p", to_unix_ms(rig.clock.wall_now())));
  EngineOptions options;
  options.random01 = [] { return 0.5; };
  TokenService restarted(rig.store, rig.clock, rig.events, rig.timer, rig.http, options);
  REQUIRE(restarted.load());
  rig.timer.fire_due();
  REQUIRE(rig.http.pending.size() == 1);
  CHECK(rig.http.pending.front().request.body.reveal().find("refresh_token=rt-0") !=
        std::string::npos);
}

TEST_CASE("1,000 profiles with the same expiry spread over the jitter window and respect the cap",
          "[refresh][engine]") {
  std::mt19937_64 rng(42);
  EngineOptions options;
  options.max_concurrent = 8;
  options.random01 = [&rng] { return std::uniform_real_distribution<double>(0, 1)(rng); };
  Rig rig(options);
  for (int i = 0; i < 1000; ++i) rig.add("p" + std::to_string(i), 3600s);
  std::vector<std::int64_t> due;
  for (const auto& v : rig.tokens->list()) due.push_back(*v.next_refresh_at_ms);
  std::sort(due.begin(), due.end());
  const auto expires = *rig.tokens->list().front().expires_at_ms;
  CHECK(due.front() >= expires - 330'000);  // within [expiry - buffer - 30 s, expiry - buffer]
  CHECK(due.back() <= expires - 300'000);
  CHECK(due.back() - due.front() > 25'000);  // actually spread
  std::set<std::int64_t> distinct(due.begin(), due.end());
  CHECK(distinct.size() > 900);

  std::size_t answered = 0;
  std::size_t peak = 0;
  rig.run_until_idle_or(3600s);
  while (!rig.http.pending.empty()) {
    peak = std::max(peak, rig.http.pending.size());
    rig.http.reply(
        200, token_json("at-new" + std::to_string(answered), "rt-new" + std::to_string(answered)));
    ++answered;
    rig.run_until_idle_or(1s);
  }
  CHECK(answered == 1000);
  CHECK(peak <= 8);
  CHECK(rig.tokens->stats().peak_in_flight <= 8);
  CHECK(rig.tokens->stats().refreshes_ok == 1000);
}

TEST_CASE("a token without a refresh token warns before expiry, then needs a login",
          "[refresh][engine]") {
  Rig rig;
  rig.add("p", 3600s, "at-0", "");
  rig.run_until_idle_or(3301s);
  CHECK(rig.events_of("expiring") == 1);
  CHECK(rig.events_of("reauth_required") == 0);
  rig.run_until_idle_or(400s);
  CHECK(rig.events_of("reauth_required") == 1);
  CHECK(rig.store.get_credential("p")->state == CredState::reauth_required);
  CHECK(rig.http.started == 0);
}

TEST_CASE("min_valid is capped at what a fresh token gives: 19 s tokens serve a caller asking 60 s",
          "[refresh][engine]") {
  Rig rig;
  rig.add("p", 19s);
  rig.clock.advance(12s);  // 7 s left: less than the capped 9.5 s
  std::vector<std::string> got;
  std::vector<std::string> errors;
  auto ask = [&](TokenRequest req) {
    rig.tokens->token_async("p", req, [&](Result<TokenGrant> g) {
      if (g) {
        got.emplace_back(g->token());
      } else {
        errors.push_back(g.error().message);
      }
    });
  };
  ask({60});
  REQUIRE(rig.http.started == 1);
  rig.http.reply(200, token_json("at-1", "rt-1", 19));
  REQUIRE(errors.empty());
  REQUIRE(got == std::vector<std::string>{"at-1"});
  // The fresh token serves at once, without another refresh.
  ask({60});
  ask({3600});
  CHECK(rig.http.started == 1);
  CHECK(got.size() == 3);
  // Half the lifetime (tokenctl headers): 9.5 s of 19. After 10 s only 9 s
  // are left, so the next such request refreshes first.
  ask({0, true});
  CHECK(rig.http.started == 1);
  rig.clock.advance(10s);
  ask({0, true});
  CHECK(rig.http.started == 2);
  rig.http.reply(200, token_json("at-2", "rt-2", 19));
  CHECK(got.back() == "at-2");
  CHECK(errors.empty());
}

TEST_CASE("headers' half lifetime: a one-hour token is served while at least 30 minutes remain",
          "[refresh][engine]") {
  Rig rig;
  rig.add("p", 3600s);
  rig.clock.advance(1790s);
  CHECK(rig.tokens->token("p", {0, true}));
  rig.clock.advance(20s);  // 1790 s left
  auto g = rig.tokens->token("p", {0, true});
  REQUIRE_FALSE(g);
  CHECK(g.error().code == Errc::unavailable);
  CHECK(g.error().message.find("less than the 1800 s needed") != std::string::npos);
}

TEST_CASE("a state write the store refuses is logged and counted, and memory keeps what is stored",
          "[refresh][engine]") {
  Rig rig;
  rig.add("p", 30s);
  rig.clock.advance(15s);
  std::optional<Result<TokenGrant>> answer;
  rig.tokens->token_async("p", {60}, [&](Result<TokenGrant> g) { answer = std::move(g); });
  REQUIRE(rig.http.started == 1);

  rig.faulty.fail_set_state = true;
  rig.http.reply(400, R"({"error":"invalid_grant"})");
  REQUIRE(answer.has_value());
  CHECK(answer->error().code == Errc::reauth_required);
  CHECK(rig.tokens->stats().store_failures == 1);
  // The store still holds "refreshing" with the in-flight marker (the write
  // was refused); the service reports the same, as a restart would see it.
  const auto stored = *rig.store.get_credential("p");
  CHECK(stored.state == CredState::refreshing);
  CHECK(stored.refresh_inflight_since_ms.has_value());
  CHECK(rig.tokens->credential_of("p")->state == stored.state);
  CHECK(rig.tokens->get("p")->state == stored.state);

  // Once the store takes writes again, the next failure is recorded.
  rig.faulty.fail_set_state = false;
  rig.tokens->refresh("p", [](Result<>) {});
  REQUIRE(rig.http.started == 2);
  rig.http.reply(400, R"({"error":"invalid_grant"})");
  CHECK(rig.store.get_credential("p")->state == CredState::reauth_required);
  CHECK(rig.tokens->credential_of("p")->state == CredState::reauth_required);
  CHECK(rig.tokens->stats().store_failures == 1);
}

TEST_CASE(
    "a refresh whose claim another replica holds is not sent; its waiters get that "
    "replica's token",
    "[refresh][engine][replicas]") {
  EngineOptions options;
  options.claim_retry = 1s;
  Rig rig(std::move(options));
  rig.add("p", 30s);
  rig.clock.advance(15s);
  rig.faulty.claims_held_elsewhere = true;
  std::vector<std::string> got;
  for (int i = 0; i < 3; ++i) {
    rig.tokens->token_async("p", {60}, [&](Result<TokenGrant> g) {
      REQUIRE(g);
      got.emplace_back(g->token());
    });
  }
  CHECK(rig.http.started == 0);
  CHECK(rig.tokens->stats().claims_held_elsewhere == 1);  // one attempt for the three
  // Its retry finds the claim still held: nothing sent.
  rig.run_until_idle_or(1600ms);
  CHECK(rig.http.started == 0);
  CHECK(got.empty());
  // The other replica commits its refresh, and its event arrives.
  store::TokenSet t;
  t.access_token = Secret("at-other");
  t.refresh_token = Secret("rt-other");
  t.expires_at_ms = to_unix_ms(rig.clock.wall_now()) + 3'600'000;
  t.obtained_at_ms = to_unix_ms(rig.clock.wall_now());
  REQUIRE(rig.store.store_token_set("p", t));
  rig.tokens->reload("p");
  CHECK(got == std::vector<std::string>{"at-other", "at-other", "at-other"});
  CHECK(rig.http.started == 0);
  // Its next refresh is scheduled from that token, and taken by whoever
  // holds the claim then.
  rig.faulty.claims_held_elsewhere = false;
  rig.run_until_idle_or(3600s);
  REQUIRE(rig.http.started == 1);
  CHECK(rig.http.pending.front().request.body.reveal().find("refresh_token=rt-other") !=
        std::string::npos);
  rig.http.reply(200, token_json("at-2", "rt-2"));
  CHECK(rig.faulty.claims == rig.faulty.releases);
}

TEST_CASE(
    "a replica that died holding the claim is taken over: the stored refresh token is "
    "retried once the claim is free",
    "[refresh][engine][replicas]") {
  Rig rig;
  rig.add("p", 30s);
  rig.clock.advance(15s);
  // The other replica marked the refresh in flight, then died.
  REQUIRE(rig.store.mark_refresh_inflight("p", to_unix_ms(rig.clock.wall_now())));
  rig.faulty.claims_held_elsewhere = true;
  std::optional<Result<TokenGrant>> got;
  rig.tokens->token_async("p", {60}, [&](Result<TokenGrant> g) { got = std::move(g); });
  CHECK(rig.http.started == 0);
  rig.faulty.claims_held_elsewhere = false;  // its connection closed
  rig.run_until_idle_or(2s);
  REQUIRE(rig.http.started == 1);
  CHECK(rig.http.pending.front().request.body.reveal().find("refresh_token=rt-0") !=
        std::string::npos);
  rig.http.reply(200, token_json("at-1", "rt-1"));
  REQUIRE(got.has_value());
  REQUIRE(got->has_value());
  CHECK((*got)->token() == "at-1");
  CHECK_FALSE(rig.store.get_credential("p")->refresh_inflight_since_ms);
}

TEST_CASE(
    "a credential rotated by another process since it was read is served, not refreshed "
    "again",
    "[refresh][engine][replicas]") {
  Rig rig;
  rig.add("p", 3600s);
  // Another process refreshed it (memory here still holds generation 1).
  store::TokenSet t;
  t.access_token = Secret("at-other");
  t.refresh_token = Secret("rt-other");
  t.expires_at_ms = to_unix_ms(rig.clock.wall_now()) + 3'600'000;
  t.obtained_at_ms = to_unix_ms(rig.clock.wall_now());
  REQUIRE(rig.store.store_token_set("p", t));
  std::optional<Result<>> done;
  rig.tokens->refresh("p", [&](Result<> r) { done = std::move(r); });
  REQUIRE(done.has_value());
  CHECK(done->has_value());
  CHECK(rig.http.started == 0);
  CHECK(rig.tokens->stats().refreshes_adopted == 1);
  auto g = rig.tokens->token("p", {60});
  REQUIRE(g);
  CHECK(g->token() == "at-other");
  CHECK(rig.faulty.claims == rig.faulty.releases);
}

// Server mode's request budgets (daemon/budget.hpp), on a fake clock.
#include "daemon/budget.hpp"

#include <catch2/catch_test_macros.hpp>

using namespace tokend;
using namespace tokend::daemon;
using namespace std::chrono_literals;

namespace {

// Requests that pass in a row, up to `max`.
int passing(RequestBudgets& b, std::string_view user, std::size_t user_limit,
            std::string_view service, std::size_t service_limit, MonoTime now, int max = 1000) {
  int n = 0;
  while (n < max && !b.take(user, user_limit, service, service_limit, now)) ++n;
  return n;
}

}  // namespace

TEST_CASE("budgets: a service's budget is its own, over all its users", "[daemon][budget]") {
  FakeClock clock;
  RequestBudgets b;
  const auto t0 = clock.mono_now();
  // mcp: 3 a minute over alice and bob; each user has 100.
  CHECK_FALSE(b.take("alice", 100, "mcp", 3, t0));
  CHECK_FALSE(b.take("bob", 100, "mcp", 3, t0));
  CHECK_FALSE(b.take("alice", 100, "mcp", 3, t0));
  auto refused = b.take("bob", 100, "mcp", 3, t0);
  REQUIRE(refused);
  CHECK(refused->whose == BudgetRefusal::Whose::service);
  CHECK(refused->name == "mcp");
  CHECK(refused->limit == 3);
  CHECK(refused->retry_after == 20s);  // one request every 20 s
  // Another service, and the users through the proxy, spend nothing of mcp's.
  CHECK(passing(b, "bob", 100, "ops", 5, t0) == 5);
  CHECK_FALSE(b.take("bob", 100, "", 0, t0));
  // The refused requests spent nothing of bob's: 100 - 5 - 1 - 1 (mcp) left.
  CHECK(passing(b, "bob", 100, "", 0, t0) == 93);
  // mcp gets one request back after 20 s, not before.
  CHECK(b.take("alice", 100, "mcp", 3, t0 + 19'999ms));
  CHECK_FALSE(b.take("alice", 100, "mcp", 3, t0 + 20'000ms));
  CHECK(b.take("alice", 100, "mcp", 3, t0 + 20'000ms));
  // A full minute refills the whole budget, never more.
  CHECK(passing(b, "carol", 100, "mcp", 3, t0 + 10min) == 3);
}

TEST_CASE("budgets: the user's budget still applies to a service's requests", "[daemon][budget]") {
  FakeClock clock;
  RequestBudgets b;
  const auto t0 = clock.mono_now();
  CHECK(passing(b, "alice", 2, "mcp", 10, t0) == 2);
  auto refused = b.take("alice", 2, "mcp", 10, t0);
  REQUIRE(refused);
  CHECK(refused->whose == BudgetRefusal::Whose::user);
  CHECK(refused->name == "alice");
  CHECK(refused->retry_after == 30s);
  // The user's refusal spent nothing of mcp's: 8 left, for other users.
  CHECK(passing(b, "bob", 100, "mcp", 10, t0) == 8);
  // Both spent: the longer wait is told (mcp: 6 s a request, alice: 30 s).
  refused = b.take("alice", 2, "mcp", 10, t0 + 1s);
  REQUIRE(refused);
  CHECK(refused->whose == BudgetRefusal::Whose::user);
  CHECK(refused->retry_after == 29s);
}

TEST_CASE("budgets: 0 is no limit; a lowered limit caps what is left", "[daemon][budget]") {
  FakeClock clock;
  RequestBudgets b;
  const auto t0 = clock.mono_now();
  CHECK(passing(b, "alice", 0, "mcp", 0, t0, 10'000) == 10'000);
  CHECK(passing(b, "alice", 0, "mcp", 50, t0) == 50);
  // SIGHUP lowered the limit: the bucket holds at most the new minute's worth.
  CHECK(passing(b, "bob", 0, "ops", 600, t0, 10) == 10);
  CHECK(passing(b, "bob", 0, "ops", 60, t0) == 60);
  CHECK(passing(b, "bob", 0, "ops", 60, t0 + 5min) == 60);
}

TEST_CASE("budgets: a service's limit is its own rate-limit, else the default",
          "[daemon][budget]") {
  IdentityConfig identity;
  auto mcp = make_service_policy("mcp", Secret(std::string(64, 'm')), {"*"});
  auto ops = make_service_policy("ops", Secret(std::string(64, 'o')), {"*"});
  REQUIRE(mcp);
  REQUIRE(ops);
  mcp->rate_limit = 30;
  identity.services = {std::move(*mcp), std::move(*ops)};
  CHECK(service_rate_limit(identity, "mcp", 1000) == 30);
  CHECK(service_rate_limit(identity, "ops", 1000) == 1000);
  CHECK(service_rate_limit(identity, "ops", 0) == 0);
  CHECK(service_rate_limit(identity, "gone", 1000) == 0);
  CHECK(service_rate_limit(identity, "", 1000) == 0);
}

TEST_CASE("budgets: the refusal is 429 rate_limited with Retry-After, naming the setting",
          "[daemon][budget]") {
  BudgetRefusal r;
  r.whose = BudgetRefusal::Whose::service;
  r.name = "mcp";
  r.limit = 3;
  r.retry_after = 20s;
  auto resp = budget_response(r);
  CHECK(resp.status == 429);
  CHECK(resp.body.find("\"rate_limited\"") != std::string::npos);
  CHECK(resp.body.find("[service.mcp] rate-limit") != std::string::npos);
  bool retry_after = false;
  for (const auto& [k, v] : resp.headers) retry_after |= k == "Retry-After" && v == "20";
  CHECK(retry_after);
  r.whose = BudgetRefusal::Whose::user;
  r.name = "alice";
  resp = budget_response(r);
  CHECK(resp.body.find("user-rate-limit") != std::string::npos);
}

#include <catch2/catch_test_macros.hpp>

#include "refresh/policy.hpp"

using namespace tokend;
using namespace tokend::refresh;
using namespace std::chrono_literals;

TEST_CASE("refresh_due: expiry minus buffer minus jitter; short lifetimes at two thirds", "[refresh][policy]") {
  const WallTime t0 = from_unix_ms(1'800'000'000'000);
  struct Case {
    Millis lifetime, buffer, max_jitter;
    double jitter01;
    Millis expected_offset;  // from t0
  };
  const Case cases[] = {
      {3600s, 300s, 30s, 0.0, 3300s},
      {3600s, 300s, 30s, 1.0, 3270s},          // full jitter window
      {3600s, 300s, 30s, 0.5, 3285s},
      {120s, 30s, 30s, 0.0, 90s},              // the 120 s / 30 s buffer case
      {120s, 30s, 30s, 1.0, 78s},              // jitter window = lifetime/10 = 12 s
      {500s, 300s, 30s, 0.0, Millis(333'333)}, // lifetime < 2*buffer: 2/3
      {60s, 300s, 30s, 0.0, 40s},
      {60s, 300s, 30s, 1.0, 34s},
  };
  for (const auto& c : cases) {
    INFO("lifetime " << c.lifetime.count() << " buffer " << c.buffer.count() << " jitter " << c.jitter01);
    CHECK(refresh_due(t0, t0 + c.lifetime, c.buffer, c.max_jitter, c.jitter01) == t0 + c.expected_offset);
  }
  CHECK(refresh_due(t0, t0, 300s, 30s, 0.5) == t0);  // already expired: now
}

TEST_CASE("backoff: full jitter between 1 s and 5 min, Retry-After honoured", "[refresh][policy]") {
  RefreshPolicy p;
  CHECK(backoff_delay(1, 0.0, std::nullopt, p) == 1s);   // never below the minimum
  CHECK(backoff_delay(1, 1.0, std::nullopt, p) == 1s);
  CHECK(backoff_delay(3, 1.0, std::nullopt, p) == 4s);
  CHECK(backoff_delay(3, 0.5, std::nullopt, p) == 2s);
  CHECK(backoff_delay(20, 1.0, std::nullopt, p) == 300s);  // capped
  CHECK(backoff_delay(200, 0.999, std::nullopt, p) <= 300s);
  CHECK(backoff_delay(1, 0.0, 7s, p) == 7s);               // Retry-After wins when longer
  CHECK(backoff_delay(10, 1.0, 7s, p) == 300s);            // ... not when shorter
  CHECK(backoff_delay(1, 0.0, 10h, p) == 1h);              // absurd Retry-After capped
}

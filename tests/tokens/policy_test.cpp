#include "tokens/policy.hpp"

#include <catch2/catch_test_macros.hpp>

using namespace tokend;
using namespace tokend::tokens;
using namespace std::chrono_literals;

TEST_CASE("refresh_due: expiry minus buffer minus jitter; short lifetimes at two thirds",
          "[refresh][policy]") {
  const WallTime t0 = from_unix_ms(1'800'000'000'000);
  struct Case {
    Millis lifetime, buffer, max_jitter;
    double jitter01;
    Millis expected_offset;  // from t0
  };
  const Case cases[] = {
      {3600s, 300s, 30s, 0.0, 3300s},
      {3600s, 300s, 30s, 1.0, 3270s},  // full jitter window
      {3600s, 300s, 30s, 0.5, 3285s},
      {120s, 30s, 30s, 0.0, 90s},               // the 120 s / 30 s buffer case
      {120s, 30s, 30s, 1.0, 78s},               // jitter window = lifetime/10 = 12 s
      {500s, 300s, 30s, 0.0, Millis(333'333)},  // lifetime < 2*buffer: 2/3
      {60s, 300s, 30s, 0.0, 40s},
      {60s, 300s, 30s, 1.0, 34s},
  };
  for (const auto& c : cases) {
    INFO("lifetime " << c.lifetime.count() << " buffer " << c.buffer.count() << " jitter "
                     << c.jitter01);
    CHECK(refresh_due(t0, t0 + c.lifetime, c.buffer, c.max_jitter, c.jitter01) ==
          t0 + c.expected_offset);
  }
  CHECK(refresh_due(t0, t0, 300s, 30s, 0.5) == t0);  // already expired: now
}

TEST_CASE("backoff: full jitter between 1 s and 5 min, Retry-After honoured", "[refresh][policy]") {
  RefreshPolicy p;
  CHECK(backoff_delay(1, 0.0, std::nullopt, p) == 1s);  // never below the minimum
  CHECK(backoff_delay(1, 1.0, std::nullopt, p) == 1s);
  CHECK(backoff_delay(3, 1.0, std::nullopt, p) == 4s);
  CHECK(backoff_delay(3, 0.5, std::nullopt, p) == 2s);
  CHECK(backoff_delay(20, 1.0, std::nullopt, p) == 300s);  // capped
  CHECK(backoff_delay(200, 0.999, std::nullopt, p) <= 300s);
  CHECK(backoff_delay(1, 0.0, 7s, p) == 7s);     // Retry-After wins when longer
  CHECK(backoff_delay(10, 1.0, 7s, p) == 300s);  // ... not when shorter
  CHECK(backoff_delay(1, 0.0, 10h, p) == 1h);    // absurd Retry-After capped
}

TEST_CASE(
    "required_validity: min_valid capped at what a fresh token gives; half lifetime for headers",
    "[refresh][policy]") {
  struct Case {
    Millis asked;
    bool half;
    std::optional<Millis> lifetime;
    Millis expected;
  };
  const Case cases[] = {
      {60s, false, 3600s, 60s},          // long-lived tokens: as asked
      {3595s, false, 3600s, 3590s},      // never more than lifetime - 10 s
      {60s, false, 19s, Millis(9'500)},  // the 19 s tokens: half the lifetime
      {30s, false, 15s, Millis(7'500)},  // the proxy's 30 s against 15 s tokens
      {60s, false, 100s, 60s},           // a fresh 100 s token can give 60 s
      {60s, false, 60s, 50s},
      {0s, false, 19s, 0s},
      {60s, false, std::nullopt, 60s},  // unknown lifetime: as asked
      {60s, true, 3600s, 1800s},        // headers: half the lifetime
      {60s, true, 19s, Millis(9'500)},
      {60s, true, std::nullopt, 60s},
      {60s, false, 0s, 60s},  // nonsense lifetime: ignored
  };
  for (const auto& c : cases) {
    INFO("asked " << c.asked.count() << " half " << c.half << " lifetime "
                  << (c.lifetime ? c.lifetime->count() : -1));
    CHECK(required_validity(c.asked, c.half, c.lifetime) == c.expected);
  }
}

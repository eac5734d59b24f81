#include "tokens/policy.hpp"

#include <algorithm>
#include <cmath>

namespace tokend::tokens {

WallTime refresh_due(WallTime obtained, WallTime expires, Millis buffer, Millis max_jitter,
                     double jitter01) {
  const auto lifetime = std::chrono::duration_cast<Millis>(expires - obtained);
  if (lifetime <= Millis(0)) return obtained;
  const Millis window = std::min(max_jitter, lifetime / 10);
  const auto jitter = Millis(static_cast<std::int64_t>(std::clamp(jitter01, 0.0, 1.0) *
                                                       static_cast<double>(window.count())));
  if (lifetime < 2 * buffer) return obtained + lifetime * 2 / 3 - jitter;
  return expires - buffer - jitter;
}

Millis backoff_delay(int failures, double random01, std::optional<Millis> retry_after,
                     const RefreshPolicy& p) {
  const int exponent = std::clamp(failures - 1, 0, 30);
  const double ceiling =
      std::min(static_cast<double>(p.max_backoff.count()),
               static_cast<double>(p.min_backoff.count()) * std::ldexp(1.0, exponent));
  Millis delay(static_cast<std::int64_t>(std::clamp(random01, 0.0, 1.0) * ceiling));
  delay = std::max(delay, p.min_backoff);
  if (retry_after) delay = std::max(delay, std::min(*retry_after, p.max_retry_after));
  return delay;
}

Millis required_validity(Millis asked, bool half_lifetime, std::optional<Millis> lifetime) {
  if (!lifetime || *lifetime <= Millis(0)) return asked;
  if (half_lifetime) asked = *lifetime / 2;
  const Millis margin = std::min(Millis(10'000), *lifetime / 2);
  return std::clamp(asked, Millis(0), *lifetime - margin);
}

}  // namespace tokend::tokens

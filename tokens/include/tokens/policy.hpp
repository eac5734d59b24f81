// Pure refresh policy: when to refresh, how long to back off.
// Inputs in, decision out — no clock, no randomness of their own.
#pragma once

#include <chrono>
#include <optional>

#include "core/clock.hpp"

namespace tokend::tokens {

struct RefreshPolicy {
  Millis buffer{300'000};     // refresh this long before expiry
  Millis max_jitter{30'000};  // spread refreshes over up to this much earlier
  Millis min_backoff{1'000};
  Millis max_backoff{300'000};
  Millis max_retry_after{3'600'000};  // a longer Retry-After is capped
};

// When a token obtained at `obtained`, expiring at `expires`, is refreshed:
// expires - buffer - jitter, where jitter = jitter01 * min(max_jitter,
// lifetime / 10). A lifetime shorter than twice the buffer refreshes at two
// thirds of the lifetime instead (minus the same jitter).
WallTime refresh_due(WallTime obtained, WallTime expires, Millis buffer, Millis max_jitter,
                     double jitter01);

// Exponential backoff with full jitter: random01 * min(max, min * 2^failures),
// at least `min_backoff`; a server's Retry-After wins when it is longer.
// `failures` counts consecutive failures, starting at 1.
Millis backoff_delay(int failures, double random01, std::optional<Millis> retry_after,
                     const RefreshPolicy& policy);

// How long a served token must still be valid. `asked` is the caller's
// min_valid; with `half_lifetime` the caller asks for half the token's
// lifetime instead (headersHelper clients ask only when they connect).
// `lifetime` is expires_at - obtained_at of the current token, when known.
// The answer is capped at what a fresh token can give: the lifetime minus a
// margin for the refresh round trip (10 s, at most half the lifetime), so a
// provider whose tokens live 19 s never fails a caller that asked for 60 s.
Millis required_validity(Millis asked, bool half_lifetime, std::optional<Millis> lifetime);

}  // namespace tokend::tokens

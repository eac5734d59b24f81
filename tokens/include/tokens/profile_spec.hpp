// A profile as a client describes it (PUT /v1/profiles/NAME), validated into
// what the store keeps. Secrets in the body (client_secret, token,
// access_token, refresh_token) go to secret fields only.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "core/error.hpp"
#include "core/json.hpp"
#include "store/types.hpp"

namespace tokend::tokens {

struct ProfileSpec {
  store::Profile profile;
  std::optional<store::TokenSet> tokens;  // supplied token set, if any
};

// Validates `body`; every problem is an invalid_argument naming the field.
Result<ProfileSpec> parse_profile_spec(std::string_view name, const json::Json& body,
                                       std::int64_t now_ms);

}  // namespace tokend::tokens

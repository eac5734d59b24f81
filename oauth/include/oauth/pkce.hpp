// PKCE (RFC 7636) and the random values of a login flow.
#pragma once

#include <string>
#include <string_view>

#include "core/error.hpp"
#include "core/secret.hpp"

namespace tokend::oauth {

struct Pkce {
  Secret verifier;        // 43 characters of base64url
  std::string challenge;  // base64url(SHA-256(verifier)), method S256
};

// From 32 bytes of entropy (the caller supplies it: tests use the RFC's
// known-answer vector).
Pkce make_pkce(std::string_view entropy);
std::string pkce_challenge(std::string_view verifier);

// `bytes` random bytes from the kernel as base64url (state values, verifiers).
Result<Secret> random_urlsafe(std::size_t bytes);

}  // namespace tokend::oauth

// OAuth 2.0 token endpoint: building the refresh_token grant and judging the
// answer (RFC 6749 §5-6). Pure functions over HTTP values.
#pragma once

#include <chrono>
#include <expected>
#include <optional>
#include <string>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/secret.hpp"
#include "net/http_client.hpp"
#include "store/types.hpp"

namespace tokend::refresh {

enum class ClientAuth { basic, post, none };

struct TokenEndpoint {
  std::string token_url;
  std::string client_id;
  Secret client_secret;
  ClientAuth auth = ClientAuth::basic;
  bool json_body = false;      // Atlassian documents a JSON body
  std::string scope;           // sent with the refresh only when set
  Millis reuse_window{0};      // how long the provider accepts the previous refresh token
  Millis default_lifetime{3'600'000};  // when a response has no expires_in
};

// From a profile: its config, its secret config and the provider preset.
Result<TokenEndpoint> token_endpoint_of(const store::Profile& profile);

net::HttpRequest make_refresh_request(const TokenEndpoint& endpoint, const Secret& refresh_token,
                                      Millis timeout);

enum class FailureKind {
  transient,  // network, timeout, 5xx, 429, malformed answer: back off and retry
  reauth,     // invalid_grant, no or expired refresh token: a login is needed
  config,     // invalid_client and other client errors: the profile must be fixed
};

struct RefreshFailure {
  FailureKind kind = FailureKind::transient;
  std::string message;  // for people; never contains a token
  std::optional<Millis> retry_after;
};

// `sent_at` is when the request was sent: expires_at counts from then.
std::expected<store::TokenSet, RefreshFailure> interpret_token_response(
    const Result<net::HttpResponse>& result, WallTime sent_at, Millis default_lifetime);

// Retry-After as delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
std::optional<Millis> parse_retry_after(std::string_view value, WallTime now);

std::string form_encode(std::string_view s);

}  // namespace tokend::refresh

// OAuth 2.0 protocol pieces as pure functions over HTTP values: provider
// endpoints (preset, configured, discovered), token requests for every grant
// and judging the answer (RFC 6749 §5-6).
#pragma once

#include <chrono>
#include <expected>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/secret.hpp"
#include "net/http_client.hpp"
#include "store/types.hpp"

namespace tokend::oauth {

enum class ClientAuth { basic, post, none };

// Where a provider's endpoints are: configured fields win, then what
// discovery stored in config.discovered, then the preset. Empty: unknown.
struct ProviderEndpoints {
  std::string issuer;
  std::string authorize_url;
  std::string token_url;
  std::string device_url;        // RFC 8628 device authorization
  std::string revocation_url;    // RFC 7009
  std::string registration_url;  // RFC 7591
  std::string userinfo_url;
  std::string api_base;  // atlassian: the API gateway
  std::vector<std::string> scopes_supported;
};
ProviderEndpoints endpoints_of(const store::Profile& profile);

// The atlassian preset's fixed values.
inline constexpr std::string_view k_atlassian_authorize_url =
    "https://auth.atlassian.com/authorize";
inline constexpr std::string_view k_atlassian_token_url = "https://auth.atlassian.com/oauth/token";
inline constexpr std::string_view k_atlassian_api_base = "https://api.atlassian.com";
// The atlassian-dc preset: endpoints under the Data Center site's
// /rest/oauth2/latest/ (authorize, token).
inline constexpr std::string_view k_atlassian_dc_oauth_path = "/rest/oauth2/latest/";

struct TokenEndpoint {
  std::string token_url;
  std::string client_id;
  Secret client_secret;
  ClientAuth auth = ClientAuth::basic;
  bool json_body = false;              // Atlassian documents a JSON body
  std::string scope;                   // sent with the refresh only when set
  std::string resource;                // RFC 8707, sent with every token request when set
  std::string refresh_redirect_uri;    // sent with the refresh grant when set (atlassian-dc)
  Millis reuse_window{0};              // how long the provider accepts the previous refresh token
  Millis default_lifetime{3'600'000};  // when a response has no expires_in
};

// From a profile: its config, its secret config and the provider preset.
Result<TokenEndpoint> token_endpoint_of(const store::Profile& profile);

// A POST to the token endpoint with `params` (grant_type and the grant's
// fields) plus client authentication and `resource`, as form or JSON.
using TokenParams = std::vector<std::pair<std::string_view, std::string_view>>;
net::HttpRequest make_token_request(const TokenEndpoint& endpoint, const TokenParams& params,
                                    Millis timeout);

net::HttpRequest make_refresh_request(const TokenEndpoint& endpoint, const Secret& refresh_token,
                                      Millis timeout);

// The RFC 6749 §5.2 error of a non-2xx JSON answer ("" when there is none).
struct OAuthError {
  std::string error;
  std::string description;  // printable, at most 200 bytes
};
OAuthError oauth_error_of(const net::HttpResponse& response);
// A short printable excerpt of an untrusted string for messages.
std::string printable_excerpt(std::string_view text, std::size_t max = 200);

// Provider endpoints must be https, except loopback hosts where http is
// accepted (RFC 8252 style). Returns an error naming the field.
Result<> check_endpoint_url(std::string_view field, std::string_view url);

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

}  // namespace tokend::oauth

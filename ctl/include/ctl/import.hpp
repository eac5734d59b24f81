// tokenctl import: turning the JIRA_OAUTH_* variables that existing
// token-manager scripts keep in `.env` into a PUT /v1/profiles/NAME body.
// Pure functions, so the rules are unit-tested without a daemon.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/error.hpp"
#include "core/json.hpp"
#include "ctl/dotenv.hpp"

namespace tokend::ctl {

// Required, in the order a "missing" message lists them.
inline constexpr std::array<std::string_view, 4> k_import_required = {
    "JIRA_OAUTH_CLIENT_ID", "JIRA_OAUTH_CLIENT_SECRET", "JIRA_OAUTH_REDIRECT_URI",
    "JIRA_OAUTH_REFRESH_TOKEN"};
// Used when present. The site comes from the first of JIRA_OAUTH_SITE,
// JIRA_URL, JIRA_BASE_URL.
// Without JIRA_OAUTH_ACCESS_TOKEN (or with it empty) the refresh token
// alone is imported and tokend refreshes it at once.
inline constexpr std::array<std::string_view, 7> k_import_optional = {
    "JIRA_OAUTH_ACCESS_TOKEN", "JIRA_OAUTH_SCOPES",   "JIRA_OAUTH_SITE",      "JIRA_URL",
    "JIRA_BASE_URL",           "JIRA_OAUTH_CLOUD_ID", "JIRA_OAUTH_EXPIRES_AT"};

// The `exp` claim of a JWT (header.payload.signature, base64url, padding
// optional) in unix seconds; nullopt when `token` is not a JWT or has no
// numeric exp. Nothing is verified: the value only schedules a refresh.
std::optional<std::int64_t> jwt_expiry(std::string_view token);

// A unix time as scripts write it: whole seconds, Python's time.time() with a
// fraction ("1790000000.25", truncated), or milliseconds (> 10^11, divided).
std::optional<std::int64_t> parse_unix_time(std::string_view text);

// The PUT body for an oauth2 profile of `provider` from `vars`:
// client_id, client_secret, redirect_uri, access_token, refresh_token, and when
// present scopes (commas read as spaces), site and cloud_id; the expiry from
// JIRA_OAUTH_EXPIRES_AT, else the access token's JWT exp, else
// "expires_in": 0 (tokend refreshes at once).
// A missing (or empty) required variable is an Errc::not_found error naming
// every missing variable ("missing variables A, B"); a malformed
// JIRA_OAUTH_EXPIRES_AT is Errc::invalid_argument naming it. Messages never
// contain values.
Result<json::Json> import_profile_body(const DotenvValues& vars, std::string_view provider);

// The POST .../login/complete body for what a user pasted (trimmed): a
// redirect URL when it looks like one ("://", a leading '?', or "code="; a
// bare query gets a leading '?', since tokend reads what follows it), else
// the bare code. nullopt for a blank line.
std::optional<json::Json> login_paste_body(std::string_view pasted);

}  // namespace tokend::ctl

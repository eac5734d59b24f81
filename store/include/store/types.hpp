// What the store holds: profiles, their credentials, audit events.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/error.hpp"
#include "core/json.hpp"
#include "core/names.hpp"
#include "core/secret.hpp"
#include "store/profile_config.hpp"

namespace tokend::store {

enum class CredentialKind { oauth2, api_token, pat };
std::string_view to_string(CredentialKind k) noexcept;
Result<CredentialKind> parse_credential_kind(std::string_view s);

// The lifecycle states of a credential (docs/API.md lists them).
enum class CredState {
  empty,
  valid,
  refreshing,
  backoff,
  reauth_required,
  login_pending,
  expired,
  disabled
};
std::string_view to_string(CredState s) noexcept;
Result<CredState> parse_cred_state(std::string_view s);

struct Profile {
  std::string name;
  CredentialKind kind = CredentialKind::oauth2;
  std::string provider;  // "atlassian", "generic", "mcp" or "" for static kinds
  ProfileConfig config;  // non-secret settings (store/profile_config.hpp)
  Secret client_secret;  // confidential clients; empty for public ones
  std::int64_t created_at_ms = 0;
  std::int64_t updated_at_ms = 0;
};

// A token set as received from a provider or supplied by the user.
struct TokenSet {
  Secret access_token;
  Secret refresh_token;  // empty: the provider did not rotate it
  std::string token_type = "Bearer";
  std::string scope;
  std::optional<std::int64_t> expires_at_ms;  // nullopt: does not expire
  std::int64_t obtained_at_ms = 0;
};

struct Credential {
  std::string profile;
  Secret access_token;
  Secret refresh_token;
  Secret previous_refresh_token;  // kept for the provider's reuse window
  std::optional<std::int64_t> previous_refresh_until_ms;
  std::string token_type;
  std::string scope;
  std::optional<std::int64_t> expires_at_ms;
  std::optional<std::int64_t> obtained_at_ms;
  std::int64_t generation = 0;  // bumped by every token-set update
  CredState state = CredState::empty;
  std::string last_error;
  std::optional<std::int64_t>
      refresh_inflight_since_ms;  // marker committed before a refresh is sent
};

// The outcome of Store::claim_refresh.
struct RefreshClaim {
  bool ours = false;      // false: another process holds the claim
  Credential credential;  // as stored, read after the claim was taken
};

struct AuditEvent {
  std::int64_t id = 0;
  std::int64_t at_ms = 0;
  std::string kind;  // "peer_denied", "proxy", "profile_put", ...
  std::string profile;
  std::optional<std::int64_t> peer_uid;
  std::optional<std::int64_t> peer_pid;
  json::Json detail = json::Json::object();
};

// How much of the audit log is kept: at most max_rows events, none older
// than max_age (0 for either: no bound of that kind). The oldest go first.
struct AuditRetention {
  std::int64_t max_rows = 100'000;
  std::chrono::milliseconds max_age{std::chrono::hours(24 * 90)};
};

using tokend::validate_profile_name;

}  // namespace tokend::store

#include "store/types.hpp"

#include <array>
#include <utility>

namespace tokend::store {

namespace {

constexpr std::array<std::pair<CredentialKind, std::string_view>, 3> k_kinds{{
    {CredentialKind::oauth2, "oauth2"},
    {CredentialKind::api_token, "api-token"},
    {CredentialKind::pat, "pat"},
}};

constexpr std::array<std::pair<CredState, std::string_view>, 8> k_states{{
    {CredState::empty, "empty"},
    {CredState::valid, "valid"},
    {CredState::refreshing, "refreshing"},
    {CredState::backoff, "backoff"},
    {CredState::reauth_required, "reauth_required"},
    {CredState::login_pending, "login_pending"},
    {CredState::expired, "expired"},
    {CredState::disabled, "disabled"},
}};

}  // namespace

std::string_view to_string(CredentialKind k) noexcept {
  for (const auto& [kind, name] : k_kinds) {
    if (kind == k) return name;
  }
  return "oauth2";
}

Result<CredentialKind> parse_credential_kind(std::string_view s) {
  for (const auto& [kind, name] : k_kinds) {
    if (name == s) return kind;
  }
  return fail(Errc::invalid_argument,
              "unknown credential kind '" + std::string(s) + "'; use oauth2, api-token or pat");
}

std::string_view to_string(CredState s) noexcept {
  for (const auto& [state, name] : k_states) {
    if (state == s) return name;
  }
  return "empty";
}

Result<CredState> parse_cred_state(std::string_view s) {
  for (const auto& [state, name] : k_states) {
    if (name == s) return state;
  }
  return fail(Errc::corrupt, "unknown credential state '" + std::string(s) + "'");
}

}  // namespace tokend::store

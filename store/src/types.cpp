#include "store/types.hpp"

#include <array>
#include <utility>

#include "enum_names.hpp"

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
  return detail::name_of(k_kinds, k, "oauth2");
}

Result<CredentialKind> parse_credential_kind(std::string_view s) {
  if (const auto kind = detail::value_of(k_kinds, s)) return *kind;
  return fail(Errc::invalid_argument,
              "unknown credential kind '" + std::string(s) + "'; use oauth2, api-token or pat");
}

std::string_view to_string(CredState s) noexcept {
  return detail::name_of(k_states, s, "empty");
}

Result<CredState> parse_cred_state(std::string_view s) {
  if (const auto state = detail::value_of(k_states, s)) return *state;
  return fail(Errc::corrupt, "unknown credential state '" + std::string(s) + "'");
}

}  // namespace tokend::store

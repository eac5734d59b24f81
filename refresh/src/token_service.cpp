#include "refresh/token_service.hpp"

#include <fmt/format.h>

#include "core/encoding.hpp"

namespace tokend::refresh {

using store::CredentialKind;
using store::CredState;

TokenService::TokenService(store::Store& store, const Clock& clock, EventBus& events)
    : m_store(store), m_clock(clock), m_events(events) {}

void TokenService::audit(std::string_view kind, std::string_view profile) {
  store::AuditEvent e;
  e.kind = std::string(kind);
  e.profile = std::string(profile);
  // The audit log is best effort: a failed audit write must not undo a change
  // that was already committed.
  (void)m_store.append_audit(e);
}

Result<> TokenService::load() {
  auto profiles = m_store.list_profiles();
  if (!profiles) return std::unexpected(profiles.error());
  auto credentials = m_store.list_credentials();
  if (!credentials) return std::unexpected(credentials.error());
  m_entries.clear();
  for (auto& p : *profiles) {
    std::string name = p.name;
    m_entries.emplace(std::move(name), Entry{std::move(p), {}});
  }
  for (auto& c : *credentials) {
    auto it = m_entries.find(c.profile);
    if (it != m_entries.end()) it->second.credential = std::move(c);
  }
  return {};
}

Result<bool> TokenService::put_profile(ProfileSpec spec) {
  const std::string name = spec.profile.name;
  const bool is_new = !m_entries.contains(name);
  // The kind decides how the stored token is used: changing it invalidates
  // the old credential unless a new one is supplied.
  const bool kind_changed = !is_new && m_entries.at(name).profile.kind != spec.profile.kind;
  if (auto r = m_store.put_profile(spec.profile); !r) return std::unexpected(r.error());
  if (spec.tokens) {
    if (auto r = m_store.store_token_set(name, *spec.tokens); !r) return std::unexpected(r.error());
  } else if (kind_changed) {
    if (auto r = m_store.clear_credential(name); !r) return std::unexpected(r.error());
  }
  auto profile = m_store.get_profile(name);
  if (!profile) return std::unexpected(profile.error());
  auto credential = m_store.get_credential(name);
  if (!credential) return std::unexpected(credential.error());
  m_entries.insert_or_assign(name, Entry{std::move(*profile), std::move(*credential)});
  audit(is_new ? "profile_added" : "profile_updated", name);
  m_events.publish(is_new ? "profile_added" : "profile_updated", name, now_ms(),
                   {{"kind", store::to_string(spec.profile.kind)},
                    {"state", store::to_string(m_entries.at(name).credential.state)}});
  return is_new;
}

Result<> TokenService::remove_profile(std::string_view name) {
  if (auto r = m_store.delete_profile(name); !r) return r;
  if (auto it = m_entries.find(name); it != m_entries.end()) m_entries.erase(it);
  audit("profile_removed", name);
  m_events.publish("profile_removed", std::string(name), now_ms());
  return {};
}

ProfileView TokenService::view_of(const Entry& e) const {
  ProfileView v;
  v.name = e.profile.name;
  v.kind = e.profile.kind;
  v.provider = e.profile.provider;
  v.config = e.profile.config;
  v.state = e.credential.state;
  v.expires_at_ms = e.credential.expires_at_ms;
  v.obtained_at_ms = e.credential.obtained_at_ms;
  v.last_error = e.credential.last_error;
  v.has_token = !e.credential.access_token.empty();
  v.has_refresh_token = !e.credential.refresh_token.empty();
  v.has_client_secret = !e.profile.secret_config.empty();
  v.generation = e.credential.generation;
  v.updated_at_ms = e.profile.updated_at_ms;
  // A valid token past its expiry is reported as expired.
  if (v.state == CredState::valid && v.expires_at_ms && *v.expires_at_ms <= now_ms()) {
    v.state = CredState::expired;
  }
  return v;
}

std::vector<ProfileView> TokenService::list() const {
  std::vector<ProfileView> out;
  out.reserve(m_entries.size());
  for (const auto& [_, e] : m_entries) out.push_back(view_of(e));
  return out;
}

Result<ProfileView> TokenService::get(std::string_view name) const {
  auto it = m_entries.find(name);
  if (it == m_entries.end()) return fail(Errc::not_found, fmt::format("no profile named '{}'", name));
  return view_of(it->second);
}

Result<TokenGrant> TokenService::token(std::string_view name, const TokenRequest& request) {
  auto it = m_entries.find(name);
  if (it == m_entries.end()) {
    return fail(Errc::not_found,
                fmt::format("no profile named '{}'; see tokenctl list, or add it with tokenctl add", name));
  }
  const Entry& e = it->second;
  const store::Credential& c = e.credential;
  if (c.access_token.empty()) {
    return fail(Errc::reauth_required,
                fmt::format("profile '{}' has no token yet; run: tokenctl login {}", name, name));
  }
  if (c.state == CredState::disabled) {
    return fail(Errc::unavailable, fmt::format("profile '{}' is disabled", name));
  }
  if (c.state == CredState::reauth_required) {
    return fail(Errc::reauth_required,
                fmt::format("profile '{}' needs a new login ({}); run: tokenctl login {}", name,
                            c.last_error.empty() ? "refreshing is no longer possible" : c.last_error, name));
  }

  TokenGrant g;
  g.token = c.access_token;
  g.expires_at_ms = c.expires_at_ms;
  if (e.profile.kind == CredentialKind::api_token) {
    const std::string email = e.profile.config.value("email", "");
    std::string pair = email + ":" + std::string(c.access_token.reveal());
    g.authorization = Secret::adopt("Basic " + base64_encode(pair));
    secure_wipe(pair);
    g.token_type = "Basic";
    return g;
  }
  g.token_type = c.token_type.empty() || c.token_type == "bearer" ? "Bearer" : c.token_type;
  g.authorization = Secret::adopt(g.token_type + " " + std::string(c.access_token.reveal()));

  if (c.expires_at_ms) {
    // Validity is judged on the wall clock at every request.
    const std::int64_t left_ms = *c.expires_at_ms - now_ms();
    if (left_ms < request.min_valid_s * 1000) {
      return fail(Errc::unavailable,
                  fmt::format("the token of '{}' is valid for {} s, less than the {} s asked for, "
                              "and tokend cannot renew it yet; supply a new one with "
                              "tokenctl add {} --kind oauth2 --token-file FILE",
                              name, std::max<std::int64_t>(0, left_ms / 1000), request.min_valid_s, name));
    }
  }
  return g;
}

}  // namespace tokend::refresh

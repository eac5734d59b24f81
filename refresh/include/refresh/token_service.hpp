// The token service: profiles and their credentials in memory (loaded from
// the store at start, written through on every change), tokens served from
// memory, events published after each committed change.
//
// Single-threaded: call from the loop thread only.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "refresh/events.hpp"
#include "refresh/profile_spec.hpp"
#include "store/store.hpp"

namespace tokend::refresh {

// What a caller gets for GET .../token.
struct TokenGrant {
  Secret token;          // the bare token (access token, API token or PAT)
  Secret authorization;  // the full Authorization header value
  std::string token_type;
  std::optional<std::int64_t> expires_at_ms;
};

// A profile as listed: no secrets.
struct ProfileView {
  std::string name;
  store::CredentialKind kind;
  std::string provider;
  json::Json config;
  store::CredState state;
  std::optional<std::int64_t> expires_at_ms;
  std::optional<std::int64_t> obtained_at_ms;
  std::optional<std::int64_t> next_refresh_at_ms;
  std::string last_error;
  bool has_token = false;
  bool has_refresh_token = false;
  bool has_client_secret = false;
  std::int64_t generation = 0;
  std::int64_t updated_at_ms = 0;
};

struct TokenRequest {
  std::int64_t min_valid_s = 60;
};

class TokenService {
 public:
  TokenService(store::Store& store, const Clock& clock, EventBus& events);

  // Reads every profile and credential from the store.
  Result<> load();

  // Creates or replaces; returns true when the profile was new.
  Result<bool> put_profile(ProfileSpec spec);
  Result<> remove_profile(std::string_view name);
  [[nodiscard]] std::vector<ProfileView> list() const;
  [[nodiscard]] Result<ProfileView> get(std::string_view name) const;
  [[nodiscard]] std::size_t size() const { return m_entries.size(); }

  Result<TokenGrant> token(std::string_view name, const TokenRequest& request);

 private:
  struct Entry {
    store::Profile profile;
    store::Credential credential;
  };
  [[nodiscard]] ProfileView view_of(const Entry& e) const;
  void audit(std::string_view kind, std::string_view profile);
  [[nodiscard]] std::int64_t now_ms() const { return to_unix_ms(m_clock.wall_now()); }

  store::Store& m_store;
  const Clock& m_clock;
  EventBus& m_events;
  std::map<std::string, Entry, std::less<>> m_entries;
};

}  // namespace tokend::refresh

// The token service: profiles and credentials in memory (loaded from the
// store at start, written through on every change), tokens served from
// memory, and the refresh engine:
//
// - each OAuth profile with a refresh token is scheduled at refresh_due();
//   one timer is armed for the earliest deadline (and at least every 30 s, so
//   a suspend or clock jump is noticed: schedules are kept in wall time);
// - at most one refresh per profile is in flight; token requests that need a
//   fresh token wait on it; a global cap limits concurrent refreshes;
// - a refresh is sent only under the store's claim (Store::claim_refresh),
//   from the credential re-read under it: of several processes sharing a
//   store (server mode's replicas) one refreshes a credential at a time.
//   One that finds the claim held elsewhere does not refresh: its waiters
//   wait for the change (reload()) or for the claim, tried again shortly,
//   which the other process loses when it dies; the credential it then
//   reads carries the in-flight marker, and the refresh token stored is
//   retried, as after a crash. One that finds the credential already
//   rotated by another serves that;
// - the in-flight marker is committed before a request is sent, and the new
//   token set is committed in one transaction before any waiter is woken or
//   any event is published; the previous refresh token is kept for the
//   provider's reuse window;
// - transient failures back off (full jitter, Retry-After honoured) while a
//   still-valid token keeps being served; invalid_grant -> reauth_required.
//
// Single-threaded: call from the loop thread only.
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "net/http_client.hpp"
#include "store/store.hpp"
#include "tokens/events.hpp"
#include "tokens/policy.hpp"
#include "tokens/profile_spec.hpp"
#include "tokens/timer_port.hpp"

namespace tokend::tokens {

// What a caller gets for GET .../token: the bare token (access token, API
// token or PAT), the whole Authorization header value and the token type. They
// share one wiped buffer, the header value first: one allocation per token
// request (the socket API's hot path) and one copy of the token to wipe.
class TokenGrant {
 public:
  TokenGrant() = default;
  // "TYPE TOKEN" (Bearer, DPoP, ...): the token is the header value's tail.
  TokenGrant(std::string_view token_type, std::string_view token,
             std::optional<std::int64_t> expires_at_ms);
  // A header value that does not end in the token ("Basic " and the base64 of
  // email:token); its first word is the type.
  static TokenGrant with_authorization(std::string_view authorization, std::string_view token,
                                       std::optional<std::int64_t> expires_at_ms);

  [[nodiscard]] std::string_view token() const noexcept {
    return m_bytes.reveal().substr(m_token_at);
  }
  [[nodiscard]] std::string_view authorization() const noexcept {
    return m_bytes.reveal().substr(0, m_authorization_size);
  }
  [[nodiscard]] std::string_view token_type() const noexcept {
    return m_bytes.reveal().substr(0, m_type_size);
  }
  [[nodiscard]] std::optional<std::int64_t> expires_at_ms() const noexcept {
    return m_expires_at_ms;
  }

 private:
  Secret m_bytes;  // the Authorization value, then the token unless it ends it
  std::size_t m_type_size = 0;
  std::size_t m_authorization_size = 0;
  std::size_t m_token_at = 0;
  std::optional<std::int64_t> m_expires_at_ms;
};

// A profile as listed: no secrets.
struct ProfileView {
  std::string name;
  store::CredentialKind kind;
  std::string provider;
  store::ProfileConfig config;
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
  // Ask for half the token's lifetime instead of min_valid_s (headersHelper).
  bool half_lifetime = false;
  // Either way the requirement is capped at what a fresh token can give
  // (required_validity in policy.hpp).
};

struct EngineOptions {
  RefreshPolicy policy;
  std::size_t max_concurrent = 8;
  Millis http_timeout{30'000};
  // How soon a refresh whose claim another process holds is tried again
  // (times 0.5-1.5, random).
  Millis claim_retry{1'000};
  std::function<double()> random01;  // uniform [0,1); jitter and backoff
};

struct EngineStats {
  std::uint64_t refreshes_started = 0;
  std::uint64_t refreshes_ok = 0;
  std::uint64_t refreshes_failed = 0;
  std::size_t in_flight = 0;
  std::size_t peak_in_flight = 0;
  std::uint64_t store_failures = 0;         // state writes or read-backs the store refused
  std::uint64_t claims_held_elsewhere = 0;  // refreshes not sent: another process held the claim
  std::uint64_t refreshes_adopted = 0;      // refreshes not sent: another process had rotated
  std::uint64_t reloads = 0;                // reload() calls (another process changed a profile)
};

class TokenService {
 public:
  using GrantCallback = std::function<void(Result<TokenGrant>)>;
  using DoneCallback = std::function<void(Result<>)>;

  // Without a transport and timer the service serves stored tokens but never
  // refreshes (tests of the API layer).
  TokenService(store::Store& store, const Clock& clock, EventBus& events);
  TokenService(store::Store& store, const Clock& clock, EventBus& events, TimerPort& timer,
               net::HttpTransport& http, EngineOptions options);
  ~TokenService();

  // Reads every profile and credential and schedules refreshes (a refresh
  // left in flight by a crash is retried at once).
  Result<> load();

  // Creates or replaces; returns true when the profile was new.
  Result<bool> put_profile(ProfileSpec spec);
  Result<> remove_profile(std::string_view name);
  [[nodiscard]] std::vector<ProfileView> list() const;
  [[nodiscard]] Result<ProfileView> get(std::string_view name) const;
  [[nodiscard]] std::size_t size() const { return m_entries.size(); }

  // Immediate answer from memory; Errc::unavailable when the token is not
  // valid for min_valid (the asynchronous variant refreshes first).
  Result<TokenGrant> token(std::string_view name, const TokenRequest& request);
  // Answers now when possible, else after the (single) refresh.
  void token_async(const std::string& name, const TokenRequest& request, GrantCallback done);
  // Forces a refresh (joins one in flight).
  void refresh(const std::string& name, DoneCallback done);

  // For the login manager. profile_of includes the secret config.
  [[nodiscard]] Result<store::Profile> profile_of(std::string_view name) const;
  [[nodiscard]] Result<store::Credential> credential_of(std::string_view name) const;
  // Stores a config change the daemon made (discovered metadata, a
  // registered client, the cloud id); the credential is untouched.
  Result<> update_profile(const store::Profile& profile);
  // A login's token set: committed, state valid, refresh scheduled, sinks
  // written; a refresh in flight for the old credential is abandoned.
  Result<> install_tokens(const std::string& name, const store::TokenSet& tokens);
  // Logout: tokens forgotten (state empty).
  Result<> forget_tokens(const std::string& name);
  // Step-up (RFC 6750 §3.1 insufficient_scope, MCP 2026-07-28): the
  // profile needs consent for the union of its scopes, the granted ones
  // and `challenged`. Kept as config.step_up_scopes (the next login asks
  // for them), published as a consent_required event (notify-command runs).
  // Returns the union. The token keeps being served for what it can do.
  Result<std::vector<std::string>> require_consent(const std::string& name,
                                                   const std::vector<std::string>& challenged);

  // Another process sharing the store changed profile `name` (server
  // mode: a replica's event): the profile and credential are read again. A
  // profile gone from the store is dropped (its waiters get not_found); a
  // new one is added and scheduled; a credential another process rotated
  // or marked reauth_required ends the waits on that process's refresh.
  // While this process's own refresh of it is in flight, the credential is
  // left to that refresh's commit.
  void reload(const std::string& name);
  // Every profile of the store (after notifications may have been lost).
  Result<> reload_all();

  [[nodiscard]] const EngineStats& stats() const { return m_stats; }
  // Stops timers and cancels requests in flight (waiters get unavailable).
  void shutdown();

 private:
  struct Runtime {
    std::optional<WallTime> due;  // next scheduled action
    int failures = 0;
    bool in_flight = false;
    bool queued = false;
    bool held_elsewhere = false;  // another process holds the refresh claim
    std::uint64_t http_id = 0;
    std::vector<DoneCallback> waiters;
    std::int64_t expiring_sent_for = -1;  // generation the expiring event was sent for
  };
  struct Entry {
    store::Profile profile;
    store::Credential credential;
    Runtime rt;
  };

  [[nodiscard]] ProfileView view_of(const Entry& e) const;
  [[nodiscard]] std::int64_t now_ms() const { return to_unix_ms(m_clock.wall_now()); }
  [[nodiscard]] bool can_refresh(const Entry& e) const;
  [[nodiscard]] Millis buffer_of(const Entry& e) const;
  Result<TokenGrant> grant_of(const Entry& e, std::string_view name,
                              const TokenRequest& request) const;
  void audit(std::string_view kind, std::string_view profile,
             json::Json detail = json::Json::object());

  // Engine.
  void schedule(Entry& e, std::optional<WallTime> at);
  void schedule_from_token(Entry& e);
  void rearm();
  void on_tick();
  void start_refresh(const std::string& name);
  void launch(Entry& e);
  void on_refresh_done(const std::string& name, Result<net::HttpResponse> result, WallTime sent_at,
                       std::int64_t generation, Millis reuse, Millis default_lifetime);
  void finish(Entry& e, Result<> outcome);
  void start_queued();
  void reload_credential(Entry& e);
  // The refresh is not sent: `e.credential` (read under the claim) is what
  // to serve, or the claim is another process's.
  void adopt(Entry& e);
  void drop_entry(std::string_view name, const Error& why);
  [[nodiscard]] bool due_now(const Entry& e) const;
  [[nodiscard]] Millis claim_retry_delay();
  // Stores a state change and reloads the entry, so memory holds what the
  // store holds. A failed write is logged and counted; the entry then keeps
  // the stored state, as a restarted daemon would see it.
  bool record_state(Entry& e, store::CredState state, std::string_view why);
  void abandon_refresh(Entry& e, const Error& why);

  store::Store& m_store;
  const Clock& m_clock;
  EventBus& m_events;
  TimerPort* m_timer = nullptr;
  net::HttpTransport* m_http = nullptr;
  EngineOptions m_options;
  EngineStats m_stats;
  std::map<std::string, Entry, std::less<>> m_entries;
  std::set<std::pair<WallTime, std::string>> m_due;  // wall-time schedule
  std::deque<std::string> m_ready;                   // waiting for a refresh slot
  bool m_shut_down = false;
};

}  // namespace tokend::tokens

#include "tokens/token_service.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <random>

#include "core/encoding.hpp"
#include "oauth/protocol.hpp"
#include "tokens/sinks.hpp"

namespace tokend::tokens {

using store::CredentialKind;
using store::CredState;

namespace {

// The timer wakes at least this often, so a suspend (the monotonic clock
// stands still while the wall clock moves) or a clock step is noticed.
constexpr Millis k_max_sleep{30'000};

std::function<double()> default_random() {
  auto rng = std::make_shared<std::mt19937_64>(std::random_device{}());
  return [rng] { return std::uniform_real_distribution<double>(0.0, 1.0)(*rng); };
}

// What tokend itself wrote into a profile's config (discovery results, a
// dynamically registered client, the Atlassian cloud id) survives a PUT that
// does not mention it, as long as what it was derived from is unchanged.
void keep_managed_config(const store::Profile& old, store::Profile& next) {
  const store::ProfileConfig& o = old.config;
  store::ProfileConfig& n = next.config;
  const bool same_server = o.issuer == n.issuer && o.mcp_server == n.mcp_server;
  if (o.discovered && !n.discovered && same_server) n.discovered = o.discovered;
  if (o.client_registered && n.client_id.empty() && next.client_secret.empty() && same_server) {
    // What the registration set, where the PUT set nothing of its own (it
    // cannot set client_registered or client_registered_for).
    n.client_id = o.client_id;
    n.client_registered = true;
    n.client_registered_for = o.client_registered_for;
    if (!n.token_endpoint_auth) n.token_endpoint_auth = o.token_endpoint_auth;
    if (n.redirect_uri.empty()) n.redirect_uri = o.redirect_uri;
    if (n.client_id_metadata_document.empty())
      n.client_id_metadata_document = o.client_id_metadata_document;
    next.client_secret = old.client_secret;
  }
  if (!o.cloud_id.empty() && n.cloud_id.empty() && o.site == n.site && o.client_id == n.client_id) {
    n.cloud_id = o.cloud_id;
    n.cloud_url = o.cloud_url;
  }
}

}  // namespace

TokenService::TokenService(store::Store& store, const Clock& clock, EventBus& events)
    : m_store(store), m_clock(clock), m_events(events) {}

TokenService::TokenService(store::Store& store, const Clock& clock, EventBus& events,
                           TimerPort& timer, net::HttpTransport& http, EngineOptions options)
    : m_store(store),
      m_clock(clock),
      m_events(events),
      m_timer(&timer),
      m_http(&http),
      m_options(std::move(options)) {
  if (!m_options.random01) m_options.random01 = default_random();
}

TokenService::~TokenService() {
  shutdown();
}

void TokenService::shutdown() {
  if (m_shut_down) return;
  m_shut_down = true;
  if (m_timer != nullptr) m_timer->disarm();
  for (auto& [name, e] : m_entries) {
    if (e.rt.in_flight && m_http != nullptr) {
      m_http->cancel(e.rt.http_id);
      // The marker stays: whoever refreshes next retries the refresh token.
      m_store.release_refresh(name);
    }
    e.rt.in_flight = false;
    auto waiters = std::move(e.rt.waiters);
    for (auto& w : waiters) w(fail(Errc::unavailable, "tokend is shutting down"));
  }
}

void TokenService::audit(std::string_view kind, std::string_view profile, json::Json detail) {
  store::AuditEvent e;
  e.kind = std::string(kind);
  e.profile = std::string(profile);
  e.detail = std::move(detail);
  // Best effort: a failed audit write must not undo a committed change.
  (void)m_store.append_audit(e);
}

Result<> TokenService::load() {
  auto profiles = m_store.list_profiles();
  if (!profiles) return std::unexpected(profiles.error());
  auto credentials = m_store.list_credentials();
  if (!credentials) return std::unexpected(credentials.error());
  m_entries.clear();
  m_due.clear();
  for (auto& p : *profiles) {
    std::string name = p.name;
    m_entries.emplace(std::move(name), Entry{std::move(p), {}, {}});
  }
  for (auto& c : *credentials) {
    auto it = m_entries.find(c.profile);
    if (it != m_entries.end()) it->second.credential = std::move(c);
  }
  for (auto& [name, e] : m_entries) {
    if (!can_refresh(e)) {
      schedule_from_token(e);
      continue;
    }
    const auto& c = e.credential;
    if (c.refresh_inflight_since_ms || c.state == CredState::refreshing ||
        c.state == CredState::backoff || c.state == CredState::expired) {
      // Killed mid-refresh, or it was failing: try again now. The provider's
      // reuse window makes the same refresh token work a second time.
      if (c.refresh_inflight_since_ms) {
        spdlog::info("profile {}: a refresh was in flight when tokend stopped; retrying it", name);
      }
      schedule(e, m_clock.wall_now());
    } else {
      schedule_from_token(e);
    }
  }
  rearm();
  return {};
}

bool TokenService::can_refresh(const Entry& e) const {
  return m_http != nullptr && e.profile.kind == CredentialKind::oauth2 &&
         !e.credential.refresh_token.empty() && e.credential.state != CredState::reauth_required &&
         e.credential.state != CredState::disabled;
}

Millis TokenService::buffer_of(const Entry& e) const {
  if (const auto& buffer = e.profile.config.refresh_buffer) return Millis(*buffer * 1000);
  return m_options.policy.buffer;
}

// --- profiles --------------------------------------------------------------

void TokenService::reload_credential(Entry& e) {
  auto c = m_store.get_credential(e.profile.name);
  if (!c) {
    ++m_stats.store_failures;
    spdlog::error("profile {}: reading the credential back failed: {}", e.profile.name,
                  c.error().message);
    return;
  }
  e.credential = std::move(*c);
}

bool TokenService::record_state(Entry& e, CredState state, std::string_view why) {
  auto r = m_store.set_state(e.profile.name, state, why);
  if (!r) {
    ++m_stats.store_failures;
    spdlog::error("profile {}: storing the state {} failed: {}", e.profile.name,
                  store::to_string(state), r.error().message);
  }
  reload_credential(e);
  return r.has_value();
}

Result<bool> TokenService::put_profile(ProfileSpec spec) {
  const std::string name = spec.profile.name;
  auto existing = m_entries.find(name);
  const bool is_new = existing == m_entries.end();
  // The kind decides how the stored token is used: changing it invalidates
  // the old credential unless a new one is supplied.
  const bool kind_changed = !is_new && existing->second.profile.kind != spec.profile.kind;
  if (!is_new && !kind_changed) keep_managed_config(existing->second.profile, spec.profile);
  if (auto r = m_store.put_profile(spec.profile); !r) return std::unexpected(r.error());
  if (spec.tokens) {
    if (auto r = m_store.store_token_set(name, *spec.tokens); !r) return std::unexpected(r.error());
  } else if (kind_changed) {
    if (auto r = m_store.clear_credential(name); !r) return std::unexpected(r.error());
  } else if (!is_new && existing->second.credential.state == CredState::reauth_required &&
             !existing->second.credential.refresh_token.empty()) {
    // A fixed configuration (e.g. a corrected client secret) gets another try.
    if (auto r = m_store.set_state(name, CredState::valid, ""); !r)
      return std::unexpected(r.error());
  }
  auto profile = m_store.get_profile(name);
  if (!profile) return std::unexpected(profile.error());
  auto credential = m_store.get_credential(name);
  if (!credential) return std::unexpected(credential.error());

  Runtime rt;
  if (!is_new) {
    // Keep a refresh in flight (and its waiters) across a profile update.
    rt = std::move(existing->second.rt);
    rt.failures = 0;
  }
  auto& e =
      m_entries
          .insert_or_assign(name, Entry{std::move(*profile), std::move(*credential), std::move(rt)})
          .first->second;
  audit(is_new ? "profile_added" : "profile_updated", name);
  if (auto w = write_sinks(e.profile, e.credential); !w) {
    m_events.publish(EventKind::sink_failed, name, now_ms(), {{"error", w.error().message}});
  }
  m_events.publish(is_new ? EventKind::profile_added : EventKind::profile_updated, name, now_ms(),
                   {{"kind", store::to_string(e.profile.kind)},
                    {"state", store::to_string(e.credential.state)}});
  if (!e.rt.in_flight) {
    schedule_from_token(e);
    rearm();
  }
  return is_new;
}

Result<> TokenService::remove_profile(std::string_view name) {
  if (auto r = m_store.delete_profile(name); !r) return r;
  drop_entry(name, Error{Errc::not_found, fmt::format("profile '{}' was removed", name)});
  audit("profile_removed", name);
  m_events.publish(EventKind::profile_removed, std::string(name), now_ms());
  rearm();
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
  v.has_client_secret = !e.profile.client_secret.empty();
  v.generation = e.credential.generation;
  v.updated_at_ms = e.profile.updated_at_ms;
  if (e.rt.due && can_refresh(e)) v.next_refresh_at_ms = to_unix_ms(*e.rt.due);
  // A token past its expiry is reported as expired, whatever was stored.
  if ((v.state == CredState::valid || v.state == CredState::backoff) && v.expires_at_ms &&
      *v.expires_at_ms <= now_ms()) {
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
  if (it == m_entries.end())
    return fail(Errc::not_found, fmt::format("no profile named '{}'", name));
  return view_of(it->second);
}

Result<store::Profile> TokenService::profile_of(std::string_view name) const {
  auto it = m_entries.find(name);
  if (it == m_entries.end())
    return fail(Errc::not_found, fmt::format("no profile named '{}'", name));
  return it->second.profile;
}

Result<store::Credential> TokenService::credential_of(std::string_view name) const {
  auto it = m_entries.find(name);
  if (it == m_entries.end())
    return fail(Errc::not_found, fmt::format("no profile named '{}'", name));
  return it->second.credential;
}

Result<> TokenService::update_profile(const store::Profile& profile) {
  auto it = m_entries.find(profile.name);
  if (it == m_entries.end())
    return fail(Errc::not_found, fmt::format("no profile named '{}'", profile.name));
  if (auto r = m_store.put_profile(profile); !r) return r;
  auto stored = m_store.get_profile(profile.name);
  if (!stored) return std::unexpected(stored.error());
  it->second.profile = std::move(*stored);
  return {};
}

void TokenService::drop_entry(std::string_view name, const Error& why) {
  auto it = m_entries.find(name);
  if (it == m_entries.end()) return;
  Entry& e = it->second;
  if (e.rt.in_flight && m_http != nullptr) {
    m_http->cancel(e.rt.http_id);
    m_store.release_refresh(name);
    e.rt.in_flight = false;
    --m_stats.in_flight;
  }
  if (e.rt.queued) std::erase(m_ready, it->first);
  if (e.rt.due) m_due.erase({*e.rt.due, it->first});
  auto waiters = std::move(e.rt.waiters);
  m_entries.erase(it);
  for (auto& w : waiters) w(std::unexpected(why));
  start_queued();
}

void TokenService::abandon_refresh(Entry& e, const Error& why) {
  if (e.rt.in_flight && m_http != nullptr) {
    m_http->cancel(e.rt.http_id);
    m_store.release_refresh(e.profile.name);
    e.rt.in_flight = false;
    --m_stats.in_flight;
  }
  e.rt.held_elsewhere = false;
  finish(e, std::unexpected(why));
}

Result<> TokenService::install_tokens(const std::string& name, const store::TokenSet& tokens) {
  auto it = m_entries.find(name);
  if (it == m_entries.end())
    return fail(Errc::not_found, fmt::format("profile '{}' was removed", name));
  Entry& e = it->second;
  // A login replaces the credential whatever generation it had.
  if (auto r = m_store.store_token_set(name, tokens); !r) return std::unexpected(r.error());
  const bool was_in_flight = e.rt.in_flight;
  if (was_in_flight && m_http != nullptr) {
    m_http->cancel(e.rt.http_id);
    m_store.release_refresh(name);
    e.rt.in_flight = false;
    --m_stats.in_flight;
  }
  reload_credential(e);
  e.rt.failures = 0;
  schedule_from_token(e);
  audit("login", name);
  if (auto w = write_sinks(e.profile, e.credential); !w) {
    m_events.publish(EventKind::sink_failed, name, now_ms(), {{"error", w.error().message}});
  }
  // Waiters on the abandoned refresh: the new token is there for them.
  finish(e, {});
  if (was_in_flight) start_queued();
  rearm();
  return {};
}

Result<> TokenService::forget_tokens(const std::string& name) {
  auto it = m_entries.find(name);
  if (it == m_entries.end())
    return fail(Errc::not_found, fmt::format("no profile named '{}'", name));
  Entry& e = it->second;
  if (auto r = m_store.clear_credential(name); !r) return r;
  const bool was_in_flight = e.rt.in_flight;
  abandon_refresh(e,
                  Error{Errc::reauth_required, fmt::format("profile '{}' was logged out", name)});
  reload_credential(e);
  schedule(e, std::nullopt);
  audit("logout", name);
  if (was_in_flight) start_queued();
  rearm();
  return {};
}

Result<std::vector<std::string>> TokenService::require_consent(
    const std::string& name, const std::vector<std::string>& challenged) {
  auto it = m_entries.find(name);
  if (it == m_entries.end())
    return fail(Errc::not_found, fmt::format("no profile named '{}'", name));
  Entry& e = it->second;
  if (e.profile.kind != CredentialKind::oauth2) {
    return fail(Errc::invalid_argument,
                fmt::format("profile '{}' holds a static token; more scope needs a new one", name));
  }
  std::vector<std::string> scopes;
  auto add = [&](std::string_view s) {
    // RFC 6749 §3.3 scope-token characters only; anything else is dropped.
    if (s.empty() || s.size() > 256 || scopes.size() >= 128) return;
    for (const char c : s) {
      const auto u = static_cast<unsigned char>(c);
      if (u < 0x21 || u > 0x7e || c == '"' || c == '\\') return;
    }
    if (std::find(scopes.begin(), scopes.end(), s) == scopes.end()) scopes.emplace_back(s);
  };
  auto add_list = [&](const std::vector<std::string>& list) {
    for (const auto& v : list) add(v);
  };
  auto add_words = [&](std::string_view text) {
    while (!text.empty()) {
      const auto sp = text.find(' ');
      add(text.substr(0, sp));
      if (sp == std::string_view::npos) break;
      text.remove_prefix(sp + 1);
    }
  };
  if (e.profile.config.scopes) add_list(*e.profile.config.scopes);
  add_words(e.credential.scope);
  add_list(e.profile.config.step_up_scopes);
  const std::size_t before = scopes.size();
  for (const auto& s : challenged) add(s);
  if (scopes.empty()) {
    return fail(
        Errc::invalid_argument,
        fmt::format("the insufficient_scope challenge for '{}' names no usable scope", name));
  }
  store::Profile updated = e.profile;
  updated.config.step_up_scopes = scopes;
  if (auto r = m_store.put_profile(updated); !r) return std::unexpected(r.error());
  if (auto stored = m_store.get_profile(name)) e.profile = std::move(*stored);
  std::string joined;
  for (const auto& s : scopes) joined += (joined.empty() ? "" : " ") + s;
  const std::string reason = fmt::format(
      "the provider asks for more scope (insufficient_scope); log in again to "
      "consent to: {}",
      joined);
  spdlog::warn("profile {}: {}", name, reason);
  audit("consent_required", name, {{"scopes", scopes}});
  m_events.publish(EventKind::consent_required, name, now_ms(),
                   {{"reason", reason},
                    {"scopes", scopes},
                    {"new_scopes", scopes.size() - before},
                    {"command", "tokenctl login " + name}});
  return scopes;
}

// --- tokens ----------------------------------------------------------------

TokenGrant::TokenGrant(std::string_view token_type, std::string_view token,
                       std::optional<std::int64_t> expires_at_ms)
    : m_bytes(Secret::concat({token_type, " ", token})),
      m_type_size(token_type.size()),
      m_authorization_size(m_bytes.size()),
      m_token_at(token_type.size() + 1),
      m_expires_at_ms(expires_at_ms) {}

TokenGrant TokenGrant::with_authorization(std::string_view authorization, std::string_view token,
                                          std::optional<std::int64_t> expires_at_ms) {
  TokenGrant g;
  g.m_bytes = Secret::concat({authorization, token});
  g.m_type_size = std::min(authorization.find(' '), authorization.size());
  g.m_authorization_size = authorization.size();
  g.m_token_at = authorization.size();
  g.m_expires_at_ms = expires_at_ms;
  return g;
}

Result<TokenGrant> TokenService::grant_of(const Entry& e, std::string_view name,
                                          const TokenRequest& request) const {
  const store::Credential& c = e.credential;
  if (c.state == CredState::reauth_required) {
    return fail(
        Errc::reauth_required,
        fmt::format("profile '{}' needs a new login ({}); run: tokenctl login {}", name,
                    c.last_error.empty() ? "refreshing is no longer possible" : c.last_error,
                    name));
  }
  if (c.access_token.empty()) {
    if (!c.refresh_token.empty() && e.profile.kind == CredentialKind::oauth2) {
      // A refresh token alone: unavailable until the first refresh, which
      // token_async starts (or joins).
      return fail(
          Errc::unavailable,
          fmt::format("profile '{}' has only a refresh token so far; it is being "
                      "refreshed{}",
                      name, c.last_error.empty() ? "" : " (last refresh: " + c.last_error + ")"));
    }
    return fail(Errc::reauth_required,
                fmt::format("profile '{}' has no token yet; run: tokenctl login {}", name, name));
  }
  if (c.state == CredState::disabled)
    return fail(Errc::unavailable, fmt::format("profile '{}' is disabled", name));

  if (e.profile.kind == CredentialKind::api_token) {
    const Secret pair = Secret::concat({e.profile.config.email, ":", c.access_token.reveal()});
    std::string encoded = base64_encode(pair.reveal());
    const Secret authorization = Secret::concat({"Basic ", encoded});
    secure_wipe(encoded);
    return TokenGrant::with_authorization(authorization.reveal(), c.access_token.reveal(),
                                          c.expires_at_ms);
  }
  const std::string_view token_type =
      c.token_type.empty() || c.token_type == "bearer" ? std::string_view("Bearer") : c.token_type;
  if (c.expires_at_ms) {
    // Validity is judged on the wall clock at every request.
    const std::int64_t left_ms = *c.expires_at_ms - now_ms();
    std::optional<Millis> lifetime;
    if (c.obtained_at_ms) lifetime = Millis(*c.expires_at_ms - *c.obtained_at_ms);
    const Millis need =
        required_validity(Millis(request.min_valid_s * 1000), request.half_lifetime, lifetime);
    if (left_ms < need.count()) {
      const std::string why =
          c.last_error.empty() ? std::string() : fmt::format(" (last refresh: {})", c.last_error);
      return fail(
          Errc::unavailable,
          fmt::format("the token of '{}' is valid for {} s, less than the {} s needed{}", name,
                      std::max<std::int64_t>(0, left_ms / 1000), (need.count() + 999) / 1000, why));
    }
  }
  return TokenGrant(token_type, c.access_token.reveal(), c.expires_at_ms);
}

Result<TokenGrant> TokenService::token(std::string_view name, const TokenRequest& request) {
  auto it = m_entries.find(name);
  if (it == m_entries.end()) {
    return fail(
        Errc::not_found,
        fmt::format("no profile named '{}'; see tokenctl list, or add it with tokenctl add", name));
  }
  return grant_of(it->second, name, request);
}

void TokenService::token_async(const std::string& name, const TokenRequest& request,
                               GrantCallback done) {
  auto it = m_entries.find(name);
  if (it == m_entries.end()) {
    done(token(name, request));
    return;
  }
  auto now = grant_of(it->second, name, request);
  if (now || now.error().code != Errc::unavailable || !can_refresh(it->second)) {
    done(std::move(now));
    return;
  }
  // Not valid for long enough: wait on the profile's (single) refresh.
  refresh(name, [this, name, request, done = std::move(done)](Result<> outcome) {
    auto e = m_entries.find(name);
    if (e == m_entries.end()) {
      done(fail(Errc::not_found, fmt::format("profile '{}' was removed", name)));
      return;
    }
    auto g = grant_of(e->second, name, request);
    if (!g && !outcome && g.error().code == Errc::unavailable) {
      done(std::unexpected(Error{
          outcome.error().code == Errc::reauth_required ? Errc::reauth_required : Errc::unavailable,
          g.error().message + "; refreshing failed: " + outcome.error().message}));
      return;
    }
    done(std::move(g));
  });
}

void TokenService::refresh(const std::string& name, DoneCallback done) {
  auto it = m_entries.find(name);
  if (it == m_entries.end()) {
    done(fail(Errc::not_found, fmt::format("no profile named '{}'", name)));
    return;
  }
  Entry& e = it->second;
  if (e.profile.kind != CredentialKind::oauth2) {
    done(fail(
        Errc::invalid_argument,
        fmt::format("profile '{}' holds an {} that is not refreshed", name,
                    e.profile.kind == CredentialKind::pat ? "access token (PAT)" : "API token")));
    return;
  }
  if (m_http == nullptr || m_shut_down) {
    done(fail(Errc::unavailable, "refreshing is not available"));
    return;
  }
  if (e.credential.refresh_token.empty()) {
    done(
        fail(Errc::reauth_required,
             fmt::format("profile '{}' has no refresh token; run: tokenctl login {}", name, name)));
    return;
  }
  if (e.credential.state == CredState::reauth_required) {
    done(fail(Errc::reauth_required,
              fmt::format("profile '{}' needs a new login ({}); run: tokenctl login {}", name,
                          e.credential.last_error, name)));
    return;
  }
  e.rt.waiters.push_back(std::move(done));
  start_refresh(name);
}

// --- engine ----------------------------------------------------------------

void TokenService::schedule(Entry& e, std::optional<WallTime> at) {
  if (e.rt.due) m_due.erase({*e.rt.due, e.profile.name});
  e.rt.due = at;
  if (at) m_due.insert({*at, e.profile.name});
}

void TokenService::schedule_from_token(Entry& e) {
  const auto& c = e.credential;
  if (c.access_token.empty() && m_timer != nullptr && can_refresh(e)) {
    schedule(e, m_clock.wall_now());  // a refresh token alone: refreshed at once
    return;
  }
  if (m_timer == nullptr || e.profile.kind != CredentialKind::oauth2 || !c.expires_at_ms ||
      c.state == CredState::reauth_required || c.access_token.empty()) {
    schedule(e, std::nullopt);
    return;
  }
  const WallTime expires = from_unix_ms(*c.expires_at_ms);
  const WallTime obtained = from_unix_ms(c.obtained_at_ms.value_or(*c.expires_at_ms - 3'600'000));
  if (can_refresh(e)) {
    schedule(e, refresh_due(obtained, expires, buffer_of(e), m_options.policy.max_jitter,
                            m_options.random01()));
    return;
  }
  // No refresh token: warn when it is about to expire, and mark it expired.
  const WallTime warn = expires - buffer_of(e);
  schedule(e, e.rt.expiring_sent_for == c.generation ? expires : warn);
}

void TokenService::rearm() {
  if (m_timer == nullptr || m_shut_down) return;
  const WallTime wall = m_clock.wall_now();
  Millis sleep = k_max_sleep;
  if (!m_due.empty()) {
    sleep = std::min(
        sleep,
        std::max(Millis(0), std::chrono::duration_cast<Millis>(m_due.begin()->first - wall)));
  }
  m_timer->arm(m_clock.mono_now() + sleep, [this] { on_tick(); });
}

void TokenService::on_tick() {
  const WallTime now = m_clock.wall_now();
  std::vector<std::string> due;
  while (!m_due.empty() && m_due.begin()->first <= now) {
    due.push_back(m_due.begin()->second);
    auto it = m_entries.find(m_due.begin()->second);
    m_due.erase(m_due.begin());
    if (it != m_entries.end()) it->second.rt.due.reset();
  }
  for (const auto& name : due) {
    auto it = m_entries.find(name);
    if (it == m_entries.end()) continue;
    Entry& e = it->second;
    e.rt.held_elsewhere = false;  // its claim is tried again
    if (can_refresh(e)) {
      start_refresh(name);
      continue;
    }
    // A token that cannot be refreshed: announce expiry, then mark it.
    const auto& c = e.credential;
    if (!c.expires_at_ms || c.access_token.empty()) continue;
    if (*c.expires_at_ms <= to_unix_ms(now)) {
      if (c.state != CredState::reauth_required && e.profile.kind == CredentialKind::oauth2) {
        const std::string why = "the access token expired and there is no refresh token";
        record_state(e, CredState::reauth_required, why);
        m_events.publish(EventKind::reauth_required, name, now_ms(),
                         {{"reason", why}, {"command", "tokenctl login " + name}});
      }
    } else {
      if (e.rt.expiring_sent_for != c.generation) {
        e.rt.expiring_sent_for = c.generation;
        m_events.publish(EventKind::expiring, name, now_ms(),
                         {{"expires_at", *c.expires_at_ms / 1000}});
      }
      schedule(e, from_unix_ms(*c.expires_at_ms));
    }
  }
  rearm();
}

void TokenService::start_refresh(const std::string& name) {
  auto it = m_entries.find(name);
  if (it == m_entries.end() || m_shut_down) return;
  Entry& e = it->second;
  // Single flight: waiters join the refresh in flight, or the wait for
  // another process's.
  if (e.rt.in_flight || e.rt.queued || e.rt.held_elsewhere) return;
  if (m_stats.in_flight >= m_options.max_concurrent) {
    e.rt.queued = true;
    m_ready.push_back(name);
    return;
  }
  launch(e);
}

void TokenService::start_queued() {
  while (!m_ready.empty() && m_stats.in_flight < m_options.max_concurrent && !m_shut_down) {
    const std::string name = m_ready.front();
    m_ready.pop_front();
    auto it = m_entries.find(name);
    if (it == m_entries.end()) continue;
    it->second.rt.queued = false;
    launch(it->second);
  }
}

void TokenService::launch(Entry& e) {
  const std::string name = e.profile.name;
  schedule(e, std::nullopt);
  auto endpoint = oauth::token_endpoint_of(e.profile);
  if (!endpoint) {
    record_state(e, CredState::reauth_required, endpoint.error().message);
    m_events.publish(EventKind::refresh_failed, name, now_ms(),
                     {{"error", endpoint.error().message}, {"kind", "config"}});
    finish(e, std::unexpected(Error{Errc::reauth_required, endpoint.error().message}));
    return;
  }
  // Leadership: of the processes sharing the store, the one holding the
  // claim refreshes, from the credential as stored now.
  auto claim = m_store.claim_refresh(name);
  if (!claim) {
    ++m_stats.store_failures;
    spdlog::error("profile {}: cannot claim the refresh: {}", name, claim.error().message);
    finish(e, std::unexpected(claim.error()));
    schedule(e, m_clock.wall_now() + backoff_delay(++e.rt.failures, m_options.random01(),
                                                   std::nullopt, m_options.policy));
    rearm();
    return;
  }
  const bool changed = claim->credential.generation != e.credential.generation;
  e.credential = std::move(claim->credential);
  if (changed && (!claim->ours || !due_now(e))) {
    // Rotated by another process (or a login) since it was read here.
    if (claim->ours) m_store.release_refresh(name);
    ++m_stats.refreshes_adopted;
    spdlog::debug("profile {}: refreshed elsewhere (generation {}); not refreshing", name,
                  e.credential.generation);
    adopt(e);
    return;
  }
  if (!claim->ours) {
    // Another process is refreshing: its change ends the wait (reload()),
    // or the claim is tried again shortly, in case that process died.
    ++m_stats.claims_held_elsewhere;
    e.rt.held_elsewhere = true;
    spdlog::debug("profile {}: another replica is refreshing", name);
    schedule(e, m_clock.wall_now() + claim_retry_delay());
    rearm();
    return;
  }
  const bool settled = e.credential.state == CredState::valid &&
                       !e.credential.refresh_inflight_since_ms && !due_now(e);
  if (!can_refresh(e) || (e.rt.waiters.empty() && settled)) {
    // reauth_required or disabled since it was read here; or a scheduled
    // refresh (nobody waits) of a credential adopted while it was queued.
    m_store.release_refresh(name);
    adopt(e);
    return;
  }
  if (e.credential.refresh_inflight_since_ms) {
    spdlog::info(
        "profile {}: taking over a refresh left in flight (by a replica that stopped, or a "
        "crash); retrying the stored refresh token",
        name);
  }
  const WallTime sent_at = m_clock.wall_now();
  // Rotation safety: the marker is on disk before the refresh token leaves.
  if (auto r = m_store.mark_refresh_inflight(name, to_unix_ms(sent_at)); !r) {
    spdlog::error("profile {}: cannot record the refresh: {}", name, r.error().message);
    m_store.release_refresh(name);
    finish(e, std::unexpected(r.error()));
    schedule(e, sent_at + backoff_delay(++e.rt.failures, m_options.random01(), std::nullopt,
                                        m_options.policy));
    rearm();
    return;
  }
  e.credential.refresh_inflight_since_ms = to_unix_ms(sent_at);
  e.credential.state = CredState::refreshing;
  e.rt.in_flight = true;
  ++m_stats.refreshes_started;
  ++m_stats.in_flight;
  m_stats.peak_in_flight = std::max(m_stats.peak_in_flight, m_stats.in_flight);
  const std::int64_t generation = e.credential.generation;
  spdlog::debug("profile {}: refreshing (generation {})", name, generation);
  // What the answer needs from the endpoint travels with the request: the
  // profile config is not parsed a second time.
  e.rt.http_id = m_http->start(
      oauth::make_refresh_request(*endpoint, e.credential.refresh_token, m_options.http_timeout),
      [this, name, sent_at, generation, reuse = endpoint->reuse_window,
       lifetime = endpoint->default_lifetime](Result<net::HttpResponse> r) {
        on_refresh_done(name, std::move(r), sent_at, generation, reuse, lifetime);
      });
}

bool TokenService::due_now(const Entry& e) const {
  const auto& c = e.credential;
  if (c.access_token.empty()) return true;  // a refresh token alone
  if (!c.expires_at_ms) return false;
  const WallTime expires = from_unix_ms(*c.expires_at_ms);
  const WallTime obtained = from_unix_ms(c.obtained_at_ms.value_or(*c.expires_at_ms - 3'600'000));
  // The earliest moment any process would refresh it (the whole jitter).
  return m_clock.wall_now() >=
         refresh_due(obtained, expires, buffer_of(e), m_options.policy.max_jitter, 1.0);
}

Millis TokenService::claim_retry_delay() {
  const double factor = 0.5 + m_options.random01();
  return Millis(
      static_cast<std::int64_t>(static_cast<double>(m_options.claim_retry.count()) * factor));
}

void TokenService::adopt(Entry& e) {
  e.rt.held_elsewhere = false;
  e.rt.failures = 0;
  schedule_from_token(e);
  if (e.credential.state == CredState::reauth_required) {
    finish(e, fail(Errc::reauth_required, fmt::format("profile '{}' needs a new login ({})",
                                                      e.profile.name, e.credential.last_error)));
  } else {
    finish(e, {});
  }
  rearm();
}

void TokenService::reload(const std::string& name) {
  ++m_stats.reloads;
  auto profile = m_store.get_profile(name);
  if (!profile) {
    if (profile.error().code == Errc::not_found) {
      drop_entry(name, Error{Errc::not_found, fmt::format("profile '{}' was removed", name)});
      rearm();
    } else {
      ++m_stats.store_failures;
      spdlog::error("profile {}: reading it again: {}", name, profile.error().message);
    }
    return;
  }
  auto credential = m_store.get_credential(name);
  if (!credential) {
    ++m_stats.store_failures;
    spdlog::error("profile {}: reading its credential again: {}", name, credential.error().message);
    return;
  }
  auto it = m_entries.find(name);
  if (it == m_entries.end()) {
    auto [added, _] =
        m_entries.emplace(name, Entry{std::move(*profile), std::move(*credential), {}});
    schedule_from_token(added->second);
    rearm();
    return;
  }
  Entry& e = it->second;
  e.profile = std::move(*profile);
  if (e.rt.in_flight) return;  // this process's refresh settles the credential
  const bool changed = credential->generation != e.credential.generation;
  const bool was_waiting = e.rt.held_elsewhere;
  e.credential = std::move(*credential);
  if (changed || (was_waiting && !can_refresh(e))) {
    adopt(e);
  } else if (!e.rt.held_elsewhere && !e.rt.queued) {
    schedule_from_token(e);
    rearm();
  }
}

Result<> TokenService::reload_all() {
  auto profiles = m_store.list_profiles();
  if (!profiles) return std::unexpected(profiles.error());
  std::set<std::string> names;
  for (const auto& p : *profiles) names.insert(p.name);
  std::vector<std::string> gone;
  for (const auto& [name, e] : m_entries) {
    if (!names.contains(name)) gone.push_back(name);
  }
  for (const auto& name : gone) reload(name);
  for (const auto& name : names) reload(name);
  return {};
}

void TokenService::finish(Entry& e, Result<> outcome) {
  auto waiters = std::move(e.rt.waiters);
  e.rt.waiters.clear();
  for (auto& w : waiters) w(outcome);
}

void TokenService::on_refresh_done(const std::string& name, Result<net::HttpResponse> result,
                                   WallTime sent_at, std::int64_t generation, Millis reuse,
                                   Millis default_lifetime) {
  --m_stats.in_flight;
  auto it = m_entries.find(name);
  if (it == m_entries.end()) {
    start_queued();
    return;
  }
  Entry& e = it->second;
  e.rt.in_flight = false;
  auto tokens = oauth::interpret_token_response(result, sent_at, default_lifetime);

  if (tokens) {
    auto committed = m_store.store_token_set(name, *tokens, generation, now_ms() + reuse.count());
    // The outcome is committed (or refused): others may claim now.
    m_store.release_refresh(name);
    if (!committed) {
      // The profile was replaced meanwhile (a PUT with new tokens): its
      // credential wins; this answer belongs to the old one.
      spdlog::warn("profile {}: refreshed tokens not stored: {}", name, committed.error().message);
      reload_credential(e);
      finish(e, std::unexpected(committed.error()));
    } else {
      reload_credential(e);
      ++m_stats.refreshes_ok;
      e.rt.failures = 0;
      schedule_from_token(e);
      spdlog::debug("profile {}: refreshed, valid for {} s", name,
                    (*e.credential.expires_at_ms - now_ms()) / 1000);
      // Committed first; now the sinks, the waiters and the subscribers.
      if (auto w = write_sinks(e.profile, e.credential); !w) {
        m_events.publish(EventKind::sink_failed, name, now_ms(), {{"error", w.error().message}});
      }
      finish(e, {});
      m_events.publish(EventKind::refreshed, name, now_ms(),
                       {{"expires_at", *e.credential.expires_at_ms / 1000},
                        {"generation", e.credential.generation}});
    }
  } else {
    ++m_stats.refreshes_failed;
    const oauth::RefreshFailure& f = tokens.error();
    if (f.kind == oauth::FailureKind::transient) {
      ++e.rt.failures;
      const Millis delay =
          backoff_delay(e.rt.failures, m_options.random01(), f.retry_after, m_options.policy);
      const bool expired = e.credential.expires_at_ms && *e.credential.expires_at_ms <= now_ms();
      record_state(e, expired ? CredState::expired : CredState::backoff, f.message);
      m_store.release_refresh(name);
      schedule(e, m_clock.wall_now() + delay);
      spdlog::warn("profile {}: refresh failed ({}); retrying in {} ms", name, f.message,
                   delay.count());
      m_events.publish(
          EventKind::refresh_failed, name, now_ms(),
          {{"error", f.message}, {"kind", "transient"}, {"retry_in_ms", delay.count()}});
      if (e.credential.expires_at_ms &&
          *e.credential.expires_at_ms - now_ms() < buffer_of(e).count() &&
          e.rt.expiring_sent_for != e.credential.generation) {
        e.rt.expiring_sent_for = e.credential.generation;
        m_events.publish(EventKind::expiring, name, now_ms(),
                         {{"expires_at", *e.credential.expires_at_ms / 1000}});
      }
      finish(e, fail(Errc::transient, f.message));
    } else {
      const std::string message =
          f.kind == oauth::FailureKind::config ? "configuration: " + f.message : f.message;
      record_state(e, CredState::reauth_required, message);
      m_store.release_refresh(name);
      schedule(e, std::nullopt);
      spdlog::warn("profile {}: {}; a new login is needed (tokenctl login {})", name, message,
                   name);
      audit("reauth_required", name, {{"reason", message}});
      m_events.publish(EventKind::refresh_failed, name, now_ms(),
                       {{"error", message},
                        {"kind", f.kind == oauth::FailureKind::config ? "config" : "reauth"}});
      m_events.publish(EventKind::reauth_required, name, now_ms(),
                       {{"reason", message}, {"command", "tokenctl login " + name}});
      finish(e, fail(Errc::reauth_required, message));
    }
  }
  start_queued();
  rearm();
}

}  // namespace tokend::tokens

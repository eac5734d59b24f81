// Internal to login/: what a login flow holds, and the helpers the flow
// files share (login.cpp: the manager; resolve.cpp: discovery and client
// registration; code_flow.cpp and device_flow.cpp: the two grants;
// finish.cpp: a token set arriving; logout.cpp: revocation and test).
#pragma once

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "core/encoding.hpp"
#include "core/html.hpp"
#include "login/login.hpp"
#include "net/url.hpp"
#include "oauth/atlassian.hpp"
#include "oauth/discovery.hpp"
#include "oauth/pkce.hpp"
#include "oauth/protocol.hpp"
#include "tokens/profile_spec.hpp"

namespace tokend::login {

using json::Json;

// The parameters of an authorization response (RFC 6749 §4.1.2). A missing
// state is kept as "" so that it fails the comparison.
struct Redirect {
  std::string code;
  std::optional<std::string> state = std::string();
  std::optional<std::string> error;
  std::string description;
  std::optional<std::string> iss;  // RFC 9207
  bool bare = false;               // a bare code, typed in
};

inline constexpr std::string_view k_default_redirect_uri = "http://127.0.0.1:8976/callback";
inline constexpr std::string_view k_device_grant = "urn:ietf:params:oauth:grant-type:device_code";
inline constexpr Millis k_default_device_interval{5'000};
inline constexpr Millis k_slow_down_step{5'000};  // RFC 8628 §3.5
inline constexpr Millis k_max_device_lifetime{1'800'000};

inline std::vector<std::string> list_of(const Json& j, const char* key) {
  std::vector<std::string> out;
  if (!j.is_object()) return out;
  if (auto it = j.find(key); it != j.end() && it->is_array()) {
    for (const auto& v : *it) {
      if (v.is_string()) out.push_back(v.get<std::string>());
    }
  }
  return out;
}

inline bool contains(const std::vector<std::string>& v, std::string_view s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

inline std::string join(const std::vector<std::string>& v, std::string_view sep) {
  std::string out;
  for (const auto& s : v) {
    if (!out.empty()) out += sep;
    out += s;
  }
  return out;
}

inline Redirect redirect_of(std::vector<std::pair<std::string, std::string>> query) {
  Redirect r;
  for (auto& [k, v] : query) {
    if (k == "code")
      r.code = std::move(v);
    else if (k == "state")
      r.state = std::move(v);
    else if (k == "error")
      r.error = std::move(v);
    else if (k == "error_description")
      r.description = std::move(v);
    else if (k == "iss")
      r.iss = std::move(v);
  }
  return r;
}

// A client id that is a client ID metadata document URL (MCP 2026-07-28,
// draft-ietf-oauth-client-id-metadata-document): https with a path.
inline bool is_client_id_metadata_url(std::string_view client_id) {
  if (!client_id.starts_with("https://")) return false;
  const auto slash = client_id.find('/', 8);
  return slash != std::string_view::npos && slash + 1 < client_id.size();
}

inline std::string page(std::string_view title, std::string_view text) {
  return fmt::format(
      "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>tokend: {0}</title></head>\n"
      "<body style=\"font-family: sans-serif; margin: 3em\"><h1>{0}</h1><p>{1}</p></body></html>\n",
      html_escape(title), html_escape(text));
}

inline std::vector<std::string> scopes_for(const store::Profile& p) {
  // After an insufficient_scope answer the login asks for the union of the
  // scopes and the challenged ones (TokenService::require_consent).
  const store::ProfileConfig& c = p.config;
  if (!c.step_up_scopes.empty()) return c.step_up_scopes;
  std::vector<std::string> scopes = c.scopes.value_or(std::vector<std::string>{});
  const std::vector<std::string> as_scopes =
      c.discovered ? c.discovered->scopes_supported.value_or(std::vector<std::string>{})
                   : std::vector<std::string>{};
  if (p.provider == "atlassian") {
    if (scopes.empty()) scopes = {"read:jira-work", "read:jira-user"};
    if (!contains(scopes, "offline_access")) scopes.emplace_back("offline_access");
  } else if (p.provider == "mcp" && scopes.empty()) {
    if (c.discovered) scopes = c.discovered->resource_scopes;
    if (scopes.empty()) scopes = as_scopes;
    // offline_access where offered, so that a refresh token comes back.
    if (contains(as_scopes, "offline_access") && !contains(scopes, "offline_access"))
      scopes.emplace_back("offline_access");
  }
  return scopes;
}

struct LoginManager::Flow {
  std::uint64_t id = 0;
  std::string profile;
  bool device = false;
  enum class Phase { resolving, awaiting, exchanging, finishing, done } phase = Phase::resolving;
  FlowState state = FlowState::pending;
  std::string reason;
  std::string message;
  std::string warning;
  Json extra = Json::object();
  MonoTime deadline{};
  std::int64_t started_at_ms = 0;
  std::int64_t expires_at_ms = 0;
  std::optional<std::int64_t> token_expires_at_ms;
  store::Profile resolved;
  oauth::TokenEndpoint endpoint;
  std::uint64_t http_id = 0;
  bool http_pending = false;
  // code
  Secret state_value;
  std::optional<oauth::Pkce> pkce;
  std::string redirect_uri;
  std::string callback_path;
  std::vector<std::string> asked_scopes;
  std::string authorize_url;
  std::unique_ptr<CallbackListener> listener;
  // RFC 9207: the issuer the redirect must name, and whether it must carry
  // iss (fixed when the flow starts, and kept with a shared flow).
  std::string expected_issuer;
  bool issuer_required = false;
  // Server mode (share_flows): kept in the store while it waits; claimed
  // from it by this manager (the code is ours to redeem); or claimed by
  // another replica, whose event ends it here.
  bool shared = false;
  bool claimed = false;
  bool elsewhere = false;
  // A flow another replica started: that replica and its flow's id, named
  // in this flow's events so that it ends its own flow with them.
  std::string origin_replica;
  std::uint64_t origin_id = 0;
  std::function<void(CallbackReply)> browser_reply;
  std::vector<JsonCallback> completions;
  JsonCallback start_done;  // a start still waiting for the provider
  // device
  Secret device_code;
  std::string user_code;
  std::string verification_uri;
  std::string verification_uri_complete;
  Millis interval{k_default_device_interval};
  std::optional<MonoTime> next_poll;
};

}  // namespace tokend::login

#include "tokens/profile_spec.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "net/url.hpp"
#include "oauth/protocol.hpp"
#include "tokens/sinks.hpp"

namespace tokend::tokens {

namespace {

using json::Json;
using store::CredentialKind;

constexpr std::size_t k_max_field_bytes = 8192;   // URLs, ids, emails
constexpr std::size_t k_max_token_bytes = 16384;  // JWTs can be a few kB

// Non-secret settings stored in the profile config, per kind.
const std::set<std::string, std::less<>> k_common = {
    "kind",        "provider", "site",   "api_base",  "refresh_buffer",
    "description", "sinks",    "policy", "jira_base", "confluence_base"};
const std::set<std::string, std::less<>> k_oauth2 = {"client_id",
                                                     "client_secret",
                                                     "scopes",
                                                     "authorize_url",
                                                     "token_url",
                                                     "redirect_uri",
                                                     "issuer",
                                                     "mcp_server",
                                                     "audience",
                                                     "access_token",
                                                     "refresh_token",
                                                     "expires_in",
                                                     "expires_at",
                                                     "token_type",
                                                     "scope",
                                                     "revocation_url",
                                                     "userinfo_url",
                                                     "pkce",
                                                     "token_endpoint_auth",
                                                     "reuse_window",
                                                     "device_authorization_url",
                                                     "registration_url",
                                                     "resource",
                                                     "cloud_id",
                                                     "prompt",
                                                     "authorize_params",
                                                     "authorization_server"};
const std::set<std::string, std::less<>> k_api_token = {"email", "token"};
const std::set<std::string, std::less<>> k_pat = {"token"};
const std::set<std::string, std::less<>> k_url_fields = {"site",
                                                         "api_base",
                                                         "authorize_url",
                                                         "token_url",
                                                         "issuer",
                                                         "mcp_server",
                                                         "revocation_url",
                                                         "userinfo_url",
                                                         "device_authorization_url",
                                                         "registration_url",
                                                         "resource",
                                                         "redirect_uri",
                                                         "jira_base",
                                                         "confluence_base",
                                                         "authorization_server"};
const std::set<std::string, std::less<>> k_secret_fields = {"client_secret", "token",
                                                            "access_token", "refresh_token"};

Result<std::string> string_field(const Json& body, std::string_view key, std::size_t max) {
  const auto& v = body.at(std::string(key));
  if (!v.is_string())
    return std::unexpected(bad_input(fmt::format("field \"{}\" must be a string", key)));
  auto s = v.get<std::string>();
  if (s.size() > max) {
    return std::unexpected(
        bad_input(fmt::format("field \"{}\" is longer than {} bytes", key, max)));
  }
  for (const char c : s) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return std::unexpected(
          bad_input(fmt::format("field \"{}\" contains a control character", key)));
    }
  }
  return s;
}

// The proxy's per-profile policy.
Result<store::ProxyPolicy> validate_policy(const Json& v) {
  if (!v.is_object()) return std::unexpected(bad_input("field \"policy\" must be an object"));
  store::ProxyPolicy out;
  for (const auto& [k, item] : v.items()) {
    if (k == "read_only") {
      if (!item.is_boolean())
        return std::unexpected(bad_input("policy.read_only must be true or false"));
      out.read_only = item.get<bool>();
    } else if (k == "allow" || k == "deny") {
      if (!item.is_array() || item.size() > 256) {
        return std::unexpected(
            bad_input(fmt::format("policy.{} must be a list of path prefixes (at most 256)", k)));
      }
      for (const auto& prefix : item) {
        if (!prefix.is_string() || prefix.get_ref<const std::string&>().empty() ||
            prefix.get_ref<const std::string&>().size() > 1024) {
          return std::unexpected(
              bad_input(fmt::format("policy.{} entries must be non-empty path prefixes like "
                                    "\"jira/rest/api/3/project/ABC\"",
                                    k)));
        }
        for (const char c : prefix.get_ref<const std::string&>()) {
          if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
            return std::unexpected(
                bad_input(fmt::format("policy.{} entries must not contain control characters", k)));
          }
        }
      }
      (k == "allow" ? out.allow : out.deny) = item.get<std::vector<std::string>>();
    } else if (k == "rate_per_minute") {
      if (!item.is_number() || item.get<double>() <= 0 || item.get<double>() > 1e6) {
        return std::unexpected(bad_input("policy.rate_per_minute must be a positive number"));
      }
      out.rate_per_minute = item.get<double>();
    } else {
      return std::unexpected(bad_input(fmt::format(
          "policy.{} is not known (read_only, allow, deny, rate_per_minute)", k.substr(0, 64))));
    }
  }
  return out;
}

// Parameters tokend sets itself may not be overridden (state, PKCE and the
// redirect are what make the flow safe; prompt and scope have their fields).
const std::set<std::string, std::less<>> k_reserved_authorize_params = {
    "client_id",     "redirect_uri",   "state",
    "response_type", "code_challenge", "code_challenge_method",
    "scope",         "prompt",         "resource",
    "request",       "request_uri",    "response_mode",
    "nonce"};

Result<std::map<std::string, std::string>> validate_authorize_params(const Json& v) {
  if (!v.is_object() || v.size() > 32) {
    return std::unexpected(
        bad_input("field \"authorize_params\" must be an object of at most 32 string values, "
                  "e.g. {\"access_type\": \"offline\"}"));
  }
  for (const auto& [k, item] : v.items()) {
    if (k.empty() || k.size() > 64 || !std::all_of(k.begin(), k.end(), [](char c) {
          return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
        })) {
      return std::unexpected(
          bad_input("authorize_params names must be 1-64 letters, digits, '_', '-' or '.'"));
    }
    if (k_reserved_authorize_params.contains(k)) {
      return std::unexpected(
          bad_input(fmt::format("authorize_params may not set \"{}\": tokend sets it{}", k,
                                k == "prompt"     ? " (use the prompt field, tokenctl add --prompt)"
                                : k == "scope"    ? " (use the scopes field, tokenctl add --scopes)"
                                : k == "resource" ? " (use the resource field)"
                                                  : "")));
    }
    if (!item.is_string() || item.get_ref<const std::string&>().size() > 1024) {
      return std::unexpected(
          bad_input(fmt::format("authorize_params.{} must be a string of at most 1024 bytes", k)));
    }
    for (const char c : item.get_ref<const std::string&>()) {
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
        return std::unexpected(
            bad_input(fmt::format("authorize_params.{} contains a control character", k)));
      }
    }
  }
  return v.get<std::map<std::string, std::string>>();
}

}  // namespace

Result<ProfileSpec> parse_profile_spec(std::string_view name, const Json& body,
                                       std::int64_t now_ms) {
  if (auto r = store::validate_profile_name(name); !r) return std::unexpected(r.error());
  if (!body.is_object())
    return std::unexpected(bad_input("the request body must be a JSON object"));

  auto kind_name = json::required_string(body, "kind");
  if (!kind_name) return std::unexpected(kind_name.error());
  auto kind = store::parse_credential_kind(*kind_name);
  if (!kind) return std::unexpected(kind.error());

  const auto& allowed = *kind == CredentialKind::oauth2      ? k_oauth2
                        : *kind == CredentialKind::api_token ? k_api_token
                                                             : k_pat;
  for (const auto& [key, _] : body.items()) {
    if (!k_common.contains(key) && !allowed.contains(key)) {
      return std::unexpected(bad_input(
          fmt::format("field \"{}\" is not known for kind {}", key.substr(0, 64), *kind_name)));
    }
  }

  ProfileSpec spec;
  store::Profile& p = spec.profile;
  p.name = std::string(name);
  p.kind = *kind;
  store::ProfileConfig& config = p.config;
  std::optional<std::string> access;
  std::optional<std::string> refresh;

  for (const auto& [key, value] : body.items()) {
    if (key == "kind" || value.is_null()) continue;
    if (key == "scopes") {
      std::vector<std::string> scopes;
      if (value.is_string()) {
        std::string_view s = value.get_ref<const std::string&>();
        while (!s.empty()) {
          const auto sp = s.find(' ');
          if (sp != 0) scopes.emplace_back(s.substr(0, sp));
          if (sp == std::string_view::npos) break;
          s.remove_prefix(sp + 1);
        }
      } else if (value.is_array() && std::all_of(value.begin(), value.end(),
                                                 [](const Json& v) { return v.is_string(); })) {
        scopes = value.get<std::vector<std::string>>();
      } else {
        return std::unexpected(
            bad_input("field \"scopes\" must be a list of strings or a space-separated string"));
      }
      config.scopes = std::move(scopes);
      continue;
    }
    if (key == "sinks") {
      auto sinks = validate_sinks(value);
      if (!sinks) return std::unexpected(sinks.error());
      config.sinks = std::move(*sinks);
      continue;
    }
    if (key == "policy") {
      auto policy = validate_policy(value);
      if (!policy) return std::unexpected(policy.error());
      config.policy = std::move(*policy);
      continue;
    }
    if (key == "token_endpoint_auth") {
      const auto method = store::parse_client_auth_method(
          value.is_string() ? std::string_view(value.get_ref<const std::string&>()) : "");
      if (!method) {
        return std::unexpected(
            bad_input("field \"token_endpoint_auth\" must be client_secret_basic, "
                      "client_secret_post or none"));
      }
      config.token_endpoint_auth = *method;
      continue;
    }
    if (key == "reuse_window") {
      if (!value.is_number_integer() || value.get<std::int64_t>() < 0 ||
          value.get<std::int64_t>() > 86'400) {
        return std::unexpected(
            bad_input("field \"reuse_window\" must be a number of seconds from 0 to 86400"));
      }
      config.reuse_window = value.get<std::int64_t>();
      continue;
    }
    if (key == "refresh_buffer" || key == "expires_in" || key == "expires_at") {
      if (!value.is_number_integer())
        return std::unexpected(
            bad_input(fmt::format("field \"{}\" must be an integer (seconds)", key)));
      const auto n = value.get<std::int64_t>();
      if (n < 0 || n > 10LL * 365 * 24 * 3600 * (key == "expires_at" ? 10 : 1)) {
        return std::unexpected(bad_input(fmt::format("field \"{}\" is out of range", key)));
      }
      if (key == "refresh_buffer") config.refresh_buffer = n;
      continue;  // expiry handled with the token set below
    }
    if (key == "authorize_params") {
      auto params = validate_authorize_params(value);
      if (!params) return std::unexpected(params.error());
      config.authorize_params = std::move(*params);
      continue;
    }
    if (key == "pkce") {
      const auto mode = store::parse_pkce_mode(
          value.is_string() ? std::string_view(value.get_ref<const std::string&>()) : "");
      if (!mode) {
        return std::unexpected(
            bad_input("field \"pkce\" must be \"S256\", \"required\" or \"off\""));
      }
      config.pkce = *mode;
      continue;
    }
    const bool secret = k_secret_fields.contains(key);
    auto s = string_field(body, key, secret ? k_max_token_bytes : k_max_field_bytes);
    if (!s) return std::unexpected(s.error());
    if (s->empty()) return std::unexpected(bad_input(fmt::format("field \"{}\" is empty", key)));
    if (k_url_fields.contains(key)) {
      if (auto r = oauth::check_endpoint_url(key, *s); !r) return std::unexpected(r.error());
    }
    if (key == "access_token" || (key == "token")) {
      access = std::move(*s);
    } else if (key == "refresh_token") {
      refresh = std::move(*s);
    } else if (key == "client_secret") {
      p.client_secret = Secret::adopt(std::move(*s));
    } else if (key == "provider") {
      if (*s != "atlassian" && *s != "atlassian-dc" && *s != "generic" && *s != "mcp") {
        return std::unexpected(
            bad_input("field \"provider\" must be atlassian, atlassian-dc, generic or mcp"));
      }
      p.provider = *s;
    } else if (key == "prompt") {
      // OIDC Core §3.1.2.1: a space-separated list of ASCII words.
      if (s->size() > 128 || !std::all_of(s->begin(), s->end(), [](char c) {
            return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == ' ';
          })) {
        return std::unexpected(
            bad_input("field \"prompt\" must be space-separated words such as consent, login, "
                      "select_account or none"));
      }
      config.prompt = std::move(*s);
    } else if (key == "token_type" || key == "scope") {
      continue;  // part of the supplied token set, read below
    } else if (key == "email" && s->find('@') == std::string::npos) {
      return std::unexpected(bad_input("field \"email\" must be an email address"));
    } else if (std::string* setting = store::string_setting(config, key); setting != nullptr) {
      *setting = std::move(*s);
    } else {
      // Every key allowed above is a setting store::ProfileConfig knows.
      return fail(Errc::internal, fmt::format("field \"{}\" has no place in a profile", key));
    }
  }

  // Per-kind requirements.
  if (*kind == CredentialKind::api_token) {
    if (config.email.empty()) return std::unexpected(bad_input("kind api-token needs \"email\""));
    if (!access) return std::unexpected(bad_input("kind api-token needs \"token\""));
    if (config.site.empty())
      return std::unexpected(
          bad_input("kind api-token needs \"site\" (https://YOUR-SITE.atlassian.net)"));
  } else if (*kind == CredentialKind::pat) {
    if (!access) return std::unexpected(bad_input("kind pat needs \"token\""));
    if (config.site.empty())
      return std::unexpected(
          bad_input("kind pat needs \"site\" (your Jira or Confluence Data Center URL)"));
  } else {
    if (p.provider.empty()) p.provider = "generic";
    if (p.provider == "mcp" && config.mcp_server.empty()) {
      return std::unexpected(bad_input("provider mcp needs \"mcp_server\" (the MCP server URL)"));
    }
    if (p.provider == "atlassian-dc") {
      if (config.site.empty()) {
        return std::unexpected(bad_input(
            "provider atlassian-dc needs \"site\" (your Jira or Confluence Data Center URL, "
            "e.g. https://jira.example.com)"));
      }
      if (config.redirect_uri.empty()) {
        // Data Center checks the redirect URI on every token request, the
        // refresh included, so it must be the one registered there.
        return std::unexpected(bad_input(
            "provider atlassian-dc needs \"redirect_uri\": the redirect URL of the incoming "
            "link you created in Data Center (e.g. http://127.0.0.1:8976/callback)"));
      }
      if (config.pkce == store::PkceMode::off) {
        return std::unexpected(
            bad_input("provider atlassian-dc uses PKCE; \"pkce\": \"off\" is not possible"));
      }
    }
  }

  if (access || refresh) {
    store::TokenSet t;
    if (access) {
      t.access_token = Secret::adopt(std::move(*access));
    } else {
      // A refresh token alone (moving from another tool): stored as already
      // expired, so the token service refreshes it at once.
      t.expires_at_ms = now_ms;
    }
    if (refresh) t.refresh_token = Secret::adopt(std::move(*refresh));
    t.obtained_at_ms = now_ms;
    t.token_type = *kind == CredentialKind::api_token ? "Basic" : "Bearer";
    if (auto tt = body.find("token_type"); tt != body.end() && tt->is_string())
      t.token_type = tt->get<std::string>();
    if (auto sc = body.find("scope"); sc != body.end() && sc->is_string())
      t.scope = sc->get<std::string>();
    if (t.access_token.empty()) {
      // a refresh token alone keeps the expiry set above
    } else if (auto e = body.find("expires_in"); e != body.end() && e->is_number_integer()) {
      t.expires_at_ms = now_ms + e->get<std::int64_t>() * 1000;
    } else if (auto a = body.find("expires_at"); a != body.end() && a->is_number_integer()) {
      t.expires_at_ms = a->get<std::int64_t>() * 1000;
    }
    spec.tokens = std::move(t);
  }
  return spec;
}

}  // namespace tokend::tokens

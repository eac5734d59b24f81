#include "commands/profile_options.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>
#include <initializer_list>
#include <utility>

namespace tokend::ctl {

namespace {

void check_choice(const po::variables_map& vm, const char* flag,
                  std::initializer_list<std::string_view> choices) {
  const auto v = opt(vm, flag);
  if (!v) return;
  for (const auto c : choices) {
    if (*v == c) return;
  }
  throw UsageError{fmt::format("--{} must be one of: {}", flag, fmt::join(choices, ", "))};
}

std::string absolute(const std::string& p) {
  return std::filesystem::path(p).is_absolute() ? p : std::filesystem::absolute(p).string();
}

// --sink-file and --sink-dotenv as the profile's "sinks" array.
json::Json sinks_of(const po::variables_map& vm) {
  json::Json sinks = json::Json::array();
  if (vm.count("sink-file") != 0) {
    for (const auto& p : vm["sink-file"].as<std::vector<std::string>>()) {
      sinks.push_back({{"type", "file"}, {"path", absolute(p)}});
    }
  }
  if (vm.count("sink-dotenv") != 0) {
    for (const auto& spec : vm["sink-dotenv"].as<std::vector<std::string>>()) {
      const auto eq = spec.rfind('=');
      json::Json sink = {{"type", "dotenv"}, {"path", absolute(spec.substr(0, eq))}};
      if (eq != std::string::npos) sink["variable"] = spec.substr(eq + 1);
      sinks.push_back(std::move(sink));
    }
  }
  return sinks;
}

}  // namespace

void add_profile_options(po::options_description& o) {
  o.add_options()("provider", po::value<std::string>(),
                  "atlassian, atlassian-dc (Data Center, needs --site and --redirect-uri), generic "
                  "or mcp (oauth2)")("client-id", po::value<std::string>(), "OAuth client id")(
      "scopes", po::value<std::string>(), "space-separated scopes")(
      "issuer", po::value<std::string>(), "issuer URL for discovery (RFC 8414 / OIDC)")(
      "authorize-url", po::value<std::string>(), "authorization endpoint")(
      "token-url", po::value<std::string>(), "token endpoint")(
      "device-authorization-url", po::value<std::string>(),
      "device authorization endpoint (RFC 8628, login --device)")(
      "registration-url", po::value<std::string>(),
      "dynamic client registration endpoint (RFC 7591)")(
      "revocation-url", po::value<std::string>(),
      "token revocation endpoint (RFC 7009, used by logout)")(
      "userinfo-url", po::value<std::string>(), "endpoint tokenctl test calls (generic, mcp)")(
      "redirect-uri", po::value<std::string>(),
      "redirect URI (http://127.0.0.1:PORT/PATH is served by tokend)")(
      "mcp-server", po::value<std::string>(), "MCP server URL (provider mcp)")(
      "resource", po::value<std::string>(), "resource indicator (RFC 8707)")(
      "audience", po::value<std::string>(), "audience parameter of the authorization request")(
      "pkce", po::value<std::string>(), "S256 (default), required or off")(
      "prompt", po::value<std::string>(),
      "prompt parameter of the authorization request (default: consent when offline_access is "
      "asked for)")("authorize-param", po::value<std::vector<std::string>>(),
                    "extra authorization request parameter K=V, repeatable (e.g. "
                    "access_type=offline, login_hint=me@example.com)")(
      "authorization-server", po::value<std::string>(),
      "provider mcp: which of the MCP server's authorization servers to use (issuer URL)")(
      "token-endpoint-auth", po::value<std::string>(),
      "client_secret_basic (default), client_secret_post or none")(
      "reuse-window", po::value<std::string>(),
      "seconds the provider accepts a rotated refresh token (atlassian: 600)")(
      "refresh-buffer", po::value<std::string>(),
      "refresh this many seconds before expiry (default: tokend's)")(
      "site", po::value<std::string>(), "Jira/Confluence site URL")(
      "api-base", po::value<std::string>(), "base URL for proxied calls (generic)")(
      "sink-file", po::value<std::vector<std::string>>(),
      "also write the token to this file at every refresh (0600)")(
      "sink-dotenv", po::value<std::vector<std::string>>(),
      "also update VARIABLE in this .env file: PATH[=VARIABLE] (default ACCESS_TOKEN)");
}

void check_profile_options(const po::variables_map& vm) {
  check_choice(vm, "provider", {"atlassian", "atlassian-dc", "generic", "mcp"});
  if (vm.count("authorize-param") != 0) {
    for (const auto& kv : vm["authorize-param"].as<std::vector<std::string>>()) {
      if (kv.find('=') == std::string::npos || kv.front() == '=') {
        throw UsageError{
            fmt::format("--authorize-param takes NAME=VALUE, not '{}'", kv.substr(0, 64))};
      }
    }
  }
  check_choice(vm, "pkce", {"S256", "required", "off"});
  check_choice(vm, "token-endpoint-auth", {"client_secret_basic", "client_secret_post", "none"});
  seconds(vm, "reuse-window", 86'400);
  seconds(vm, "refresh-buffer", 86'400);
}

void apply_profile_options(const po::variables_map& vm, json::Json& body) {
  const std::pair<const char*, const char*> plain[] = {
      {"provider", "provider"},
      {"client-id", "client_id"},
      {"scopes", "scopes"},
      {"issuer", "issuer"},
      {"authorize-url", "authorize_url"},
      {"token-url", "token_url"},
      {"device-authorization-url", "device_authorization_url"},
      {"registration-url", "registration_url"},
      {"revocation-url", "revocation_url"},
      {"userinfo-url", "userinfo_url"},
      {"redirect-uri", "redirect_uri"},
      {"mcp-server", "mcp_server"},
      {"resource", "resource"},
      {"audience", "audience"},
      {"pkce", "pkce"},
      {"prompt", "prompt"},
      {"authorization-server", "authorization_server"},
      {"token-endpoint-auth", "token_endpoint_auth"},
      {"site", "site"},
      {"api-base", "api_base"}};
  for (const auto& [flag, field] : plain) {
    if (auto v = opt(vm, flag)) body[field] = *v;
  }
  if (vm.count("authorize-param") != 0) {
    json::Json params = json::Json::object();
    for (const auto& kv : vm["authorize-param"].as<std::vector<std::string>>()) {
      const auto eq = kv.find('=');
      params[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    body["authorize_params"] = std::move(params);
  }
  if (auto w = seconds(vm, "reuse-window", 86'400)) body["reuse_window"] = *w;
  if (auto b = seconds(vm, "refresh-buffer", 86'400)) body["refresh_buffer"] = *b;
  if (vm.count("sink-file") != 0 || vm.count("sink-dotenv") != 0) body["sinks"] = sinks_of(vm);
}

}  // namespace tokend::ctl

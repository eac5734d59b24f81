#include "ctl/import.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <charconv>
#include <cmath>
#include <limits>
#include <vector>

#include "core/encoding.hpp"

namespace tokend::ctl {

namespace {

std::string_view trim(std::string_view s) {
  const auto space = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  while (!s.empty() && space(s.front())) s.remove_prefix(1);
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  return s;
}

const Secret* find(const DotenvValues& vars, std::string_view key) {
  const auto it = vars.find(key);
  return it == vars.end() || trim(it->second.reveal()).empty() ? nullptr : &it->second;
}

}  // namespace

std::optional<std::int64_t> jwt_expiry(std::string_view token) {
  token = trim(token);
  const auto first = token.find('.');
  if (first == std::string_view::npos) return std::nullopt;
  const auto second = token.find('.', first + 1);
  if (second == std::string_view::npos || token.find('.', second + 1) != std::string_view::npos)
    return std::nullopt;
  // Padding is not part of a JWT (RFC 7515 §2) but is tolerated here.
  std::string_view encoded = token.substr(first + 1, second - first - 1);
  while (!encoded.empty() && encoded.back() == '=') encoded.remove_suffix(1);
  auto payload = base64url_decode(encoded);
  if (!payload) return std::nullopt;
  auto claims = json::parse(*payload, "JWT payload");
  if (!claims || !claims->is_object()) return std::nullopt;
  const auto exp = claims->find("exp");
  if (exp == claims->end()) return std::nullopt;
  if (exp->is_number_integer()) {
    const auto v = exp->get<std::int64_t>();
    return v > 0 ? std::optional(v) : std::nullopt;
  }
  if (exp->is_number_float()) {
    const double d = exp->get<double>();
    if (!std::isfinite(d) || d <= 0 || d > 1e15) return std::nullopt;
    return static_cast<std::int64_t>(d);
  }
  return std::nullopt;
}

std::optional<std::int64_t> parse_unix_time(std::string_view text) {
  text = trim(text);
  if (const auto dot = text.find('.'); dot != std::string_view::npos) {
    const auto fraction = text.substr(dot + 1);
    for (const char c : fraction) {
      if (c < '0' || c > '9') return std::nullopt;
    }
    text = text.substr(0, dot);
  }
  std::int64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size() || v <= 0)
    return std::nullopt;
  if (v > 100'000'000'000) v /= 1000;  // milliseconds: 10^11 s is the year 5138
  return v;
}

Result<json::Json> import_profile_body(const DotenvValues& vars, std::string_view provider) {
  std::vector<std::string_view> missing;
  for (const auto name : k_import_required) {
    if (find(vars, name) == nullptr) missing.push_back(name);
  }
  if (!missing.empty()) {
    return fail(Errc::not_found,
                fmt::format("missing {} {}", missing.size() == 1 ? "variable" : "variables",
                            fmt::join(missing, ", ")));
  }
  // Trimmed: a value taken from the environment may end in a newline.
  auto get = [&](std::string_view name) { return std::string(trim(find(vars, name)->reveal())); };
  json::Json body = {{"kind", "oauth2"},
                     {"provider", std::string(provider)},
                     {"client_id", get("JIRA_OAUTH_CLIENT_ID")},
                     {"client_secret", get("JIRA_OAUTH_CLIENT_SECRET")},
                     {"redirect_uri", get("JIRA_OAUTH_REDIRECT_URI")},
                     {"refresh_token", get("JIRA_OAUTH_REFRESH_TOKEN")}};
  const Secret* access = find(vars, "JIRA_OAUTH_ACCESS_TOKEN");
  const bool has_access = access != nullptr && !trim(access->reveal()).empty();
  if (has_access) body["access_token"] = get("JIRA_OAUTH_ACCESS_TOKEN");
  if (const Secret* scopes = find(vars, "JIRA_OAUTH_SCOPES")) {
    std::string s(trim(scopes->reveal()));
    for (char& c : s) {
      if (c == ',') c = ' ';
    }
    body["scopes"] = s;
  }
  if (const Secret* cloud = find(vars, "JIRA_OAUTH_CLOUD_ID"))
    body["cloud_id"] = std::string(trim(cloud->reveal()));
  for (const auto name : {"JIRA_OAUTH_SITE", "JIRA_URL", "JIRA_BASE_URL"}) {
    if (const Secret* site = find(vars, name)) {
      body["site"] = std::string(trim(site->reveal()));
      break;
    }
  }
  if (!has_access) {
    // a refresh token alone: tokend refreshes it at once
  } else if (const Secret* at = find(vars, "JIRA_OAUTH_EXPIRES_AT")) {
    const auto t = parse_unix_time(at->reveal());
    if (!t) {
      return fail(Errc::invalid_argument,
                  "JIRA_OAUTH_EXPIRES_AT is not a unix time (seconds since 1970, like 1790000000)");
    }
    body["expires_at"] = *t;
  } else if (const auto exp = jwt_expiry(access->reveal())) {
    body["expires_at"] = *exp;
  } else {
    body["expires_in"] = 0;
  }
  return body;
}

std::optional<json::Json> login_paste_body(std::string_view pasted) {
  pasted = trim(pasted);
  if (pasted.empty()) return std::nullopt;
  const bool url = pasted.find("://") != std::string_view::npos || pasted.starts_with('?') ||
                   pasted.find("code=") != std::string_view::npos;
  if (!url) return json::Json{{"code", std::string(pasted)}};
  // tokend reads the query after the '?': a bare "code=...&state=..." gets one.
  const bool has_query = pasted.find('?') != std::string_view::npos;
  return json::Json{{"redirect_url", has_query ? std::string(pasted) : "?" + std::string(pasted)}};
}

}  // namespace tokend::ctl

#include "oauth/protocol.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <ctime>

#include "core/encoding.hpp"
#include "core/json.hpp"
#include "net/url.hpp"

namespace tokend::oauth {

namespace {

constexpr std::int64_t k_max_lifetime_s = 10LL * 365 * 24 * 3600;

// A string field, or `fallback` when absent or of another type (upstream
// JSON is hostile: nlohmann's value() would throw on a wrong type).
std::string str_field(const json::Json& j, const char* key, std::string fallback = {}) {
  if (!j.is_object()) return fallback;
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : fallback;
}

RefreshFailure transient(std::string message, std::optional<Millis> retry_after = std::nullopt) {
  return RefreshFailure{FailureKind::transient, std::move(message), retry_after};
}

// Bigger than any real token (JWTs with many claims stay under 16 KiB), and
// small enough for a header line.
constexpr std::size_t k_max_token_bytes = 32 * 1024;

bool alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

// RFC 6750 §2.1 b64token, what may follow "Bearer " in a header:
// 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=".
bool is_b64token(std::string_view s) {
  if (s.size() > k_max_token_bytes) return false;
  std::size_t i = 0;
  while (i < s.size() &&
         (alnum(s[i]) || std::string_view("-._~+/").find(s[i]) != std::string_view::npos))
    ++i;
  if (i == 0) return false;
  while (i < s.size() && s[i] == '=') ++i;
  return i == s.size();
}

// RFC 6749 §A.13 type-name: 1*( "-" / "." / "_" / DIGIT / ALPHA ).
bool is_type_name(std::string_view s) {
  return !s.empty() && s.size() <= 64 && std::all_of(s.begin(), s.end(), [](char c) {
    return alnum(c) || c == '-' || c == '.' || c == '_';
  });
}

// RFC 6749 §3.3: scope-tokens of %x21 / %x23-5B / %x5D-7E, separated by spaces.
bool is_scope(std::string_view s) {
  return s.size() <= 8192 && std::all_of(s.begin(), s.end(), [](char c) {
           const auto u = static_cast<unsigned char>(c);
           return u == 0x20 || (u >= 0x21 && u <= 0x7e && c != '"' && c != '\\');
         });
}

// The token answer's fields as JSON, from JSON or from a form-encoded body
// (GitHub answers application/x-www-form-urlencoded unless asked for JSON).
// nullopt when the body is neither; the body itself is never quoted.
std::optional<json::Json> token_answer_fields(std::string_view body,
                                              std::string_view content_type) {
  const bool form =
      content_type.find("application/x-www-form-urlencoded") != std::string_view::npos;
  if (!form) {
    auto parsed = json::parse(body, "the token endpoint's answer");
    if (!parsed) return std::nullopt;
    return std::move(*parsed);
  }
  auto pairs = parse_query(body);
  if (!pairs) return std::nullopt;
  json::Json out = json::Json::object();
  for (auto& [k, v] : *pairs) {
    if (!out.contains(k)) out[k] = v;
    secure_wipe(v);
  }
  return out;
}

// The parts of a token answer that reach headers, files, environments and
// logs must be what the RFCs allow there, or the answer is not used.
std::optional<RefreshFailure> validate_token_answer(const json::Json& j) {
  const std::string_view k_how = "(RFC 6750: letters, digits and -._~+/, then = padding)";
  if (!is_b64token(j["access_token"].get_ref<const std::string&>())) {
    return transient(fmt::format(
        "the token endpoint's access_token is not a usable token {}; nothing was stored", k_how));
  }
  if (auto rt = j.find("refresh_token"); rt != j.end() && !rt->is_null()) {
    if (!rt->is_string() || !is_b64token(rt->get_ref<const std::string&>())) {
      return transient(fmt::format(
          "the token endpoint's refresh_token is not a usable token {}; nothing was stored",
          k_how));
    }
  }
  if (auto tt = j.find("token_type"); tt != j.end() && !tt->is_null()) {
    if (!tt->is_string() || !is_type_name(tt->get_ref<const std::string&>())) {
      return transient(
          "the token endpoint's token_type is not one word (RFC 6749: letters, digits, -._); "
          "nothing "
          "was stored");
    }
  }
  if (auto sc = j.find("scope"); sc != j.end() && !sc->is_null()) {
    if (!sc->is_string() || !is_scope(sc->get_ref<const std::string&>())) {
      return transient(
          "the token endpoint's scope holds characters a scope cannot (RFC 6749 §3.3); nothing was "
          "stored");
    }
  }
  return std::nullopt;
}

}  // namespace

Result<> check_endpoint_url(std::string_view field, std::string_view url) {
  const auto invalid = [](std::string message) {
    return Error{Errc::invalid_argument, std::move(message)};
  };
  std::string_view rest;
  bool https = false;
  if (url.starts_with("https://")) {
    https = true;
    rest = url.substr(8);
  } else if (url.starts_with("http://")) {
    rest = url.substr(7);
  } else {
    return std::unexpected(invalid(fmt::format("field \"{}\" must be an https:// URL", field)));
  }
  const auto end = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, end);
  if (authority.find('@') != std::string_view::npos) {
    return std::unexpected(
        invalid(fmt::format("field \"{}\" must not contain credentials (user@host)", field)));
  }
  std::string_view host = authority;
  if (host.starts_with('[')) {
    host = host.substr(0, host.find(']') + 1);
  } else {
    host = host.substr(0, host.find(':'));
  }
  if (host.empty() || host.find_first_of(" \t\\") != std::string_view::npos) {
    return std::unexpected(invalid(fmt::format("field \"{}\" has no valid host", field)));
  }
  if (!https && !net::is_loopback_host(host)) {
    return std::unexpected(invalid(fmt::format(
        "field \"{}\" must use https (plain http is accepted only for loopback hosts)", field)));
  }
  return {};
}

std::string printable_excerpt(std::string_view text, std::size_t max) {
  // Printable ASCII only: a control character could forge a log line or
  // drive a terminal, and a cut multi-byte sequence is not valid UTF-8 (JSON
  // output would fail on it).
  std::string out;
  for (const char c : text.substr(0, max)) {
    const auto u = static_cast<unsigned char>(c);
    out += (u < 0x20 || u == 0x7f) ? ' ' : u > 0x7f ? '?' : c;
  }
  return out;
}

ProviderEndpoints endpoints_of(const store::Profile& p) {
  ProviderEndpoints e;
  const store::ProfileConfig& c = p.config;
  const bool atlassian = p.provider == "atlassian";
  // Data Center: the endpoints live under the site's /rest/oauth2/latest/.
  std::string dc_authorize;
  std::string dc_token;
  if (p.provider == "atlassian-dc") {
    std::string site = c.site;
    while (!site.empty() && site.back() == '/') site.pop_back();
    if (!site.empty()) {
      dc_authorize = site + std::string(k_atlassian_dc_oauth_path) + "authorize";
      dc_token = site + std::string(k_atlassian_dc_oauth_path) + "token";
    }
  }
  static const store::ProviderMetadata k_nothing_discovered;
  const store::ProviderMetadata& d = c.discovered ? *c.discovered : k_nothing_discovered;
  auto pick = [](const std::string& configured, const std::string& discovered,
                 std::string_view preset = {}) {
    if (!configured.empty()) return configured;
    if (!discovered.empty()) return discovered;
    return std::string(preset);
  };
  e.issuer = pick(c.issuer, d.issuer);
  e.authorize_url = pick(c.authorize_url, d.authorization_endpoint,
                         atlassian ? k_atlassian_authorize_url : dc_authorize);
  e.token_url = pick(c.token_url, d.token_endpoint, atlassian ? k_atlassian_token_url : dc_token);
  e.device_url = pick(c.device_authorization_url, d.device_authorization_endpoint);
  e.revocation_url = pick(c.revocation_url, d.revocation_endpoint);
  e.registration_url = pick(c.registration_url, d.registration_endpoint);
  e.userinfo_url = pick(c.userinfo_url, d.userinfo_endpoint);
  e.api_base = pick(c.api_base, {}, atlassian ? k_atlassian_api_base : "");
  if (d.scopes_supported) e.scopes_supported = *d.scopes_supported;
  return e;
}

Result<TokenEndpoint> token_endpoint_of(const store::Profile& p) {
  using store::ClientAuthMethod;
  TokenEndpoint e;
  const store::ProfileConfig& c = p.config;
  const bool atlassian = p.provider == "atlassian";
  e.token_url = endpoints_of(p).token_url;
  if (e.token_url.empty()) {
    return fail(
        Errc::config,
        fmt::format("profile '{}' has no token_url; set it with tokenctl add {} --token-url URL "
                    "(or --issuer URL for discovery)",
                    p.name, p.name));
  }
  e.client_id = c.client_id;
  e.client_secret = p.client_secret;
  const std::optional<ClientAuthMethod> auth = c.token_endpoint_auth;
  if (auth == ClientAuthMethod::client_secret_post) {
    e.auth = ClientAuth::post;
  } else if (auth == ClientAuthMethod::none || (!auth && e.client_secret.empty())) {
    e.auth = ClientAuth::none;
  } else {
    e.auth =
        (atlassian || p.provider == "atlassian-dc") && !auth ? ClientAuth::post : ClientAuth::basic;
  }
  e.json_body = atlassian;
  if (atlassian && e.client_secret.empty()) {
    return fail(
        Errc::config,
        fmt::format("profile '{}' uses the atlassian provider, which needs a client secret; "
                    "add it with tokenctl add {} --client-secret-file FILE",
                    p.name, p.name));
  }
  // Data Center checks redirect_uri on the refresh too, and answers a bare
  // invalid_grant without it.
  if (p.provider == "atlassian-dc") e.refresh_redirect_uri = c.redirect_uri;
  e.resource = c.resource;
  if (e.resource.empty() && c.discovered) e.resource = c.discovered->resource;
  // Atlassian keeps a rotated refresh token usable for 10 minutes.
  const std::int64_t reuse = c.reuse_window.value_or(atlassian ? 600 : 0);
  e.reuse_window = Millis(reuse * 1000);
  return e;
}

net::HttpRequest make_token_request(const TokenEndpoint& e, const TokenParams& params,
                                    Millis timeout) {
  net::HttpRequest r;
  r.method = "POST";
  r.url = e.token_url;
  r.timeout = timeout;
  r.headers.emplace_back("Accept", "application/json");
  std::string body;
  if (e.json_body) {
    json::Json j = json::Json::object();
    for (const auto& [k, v] : params) j[std::string(k)] = v;
    if (!e.client_id.empty()) j["client_id"] = e.client_id;
    if (e.auth == ClientAuth::post && !e.client_secret.empty())
      j["client_secret"] = e.client_secret.reveal();
    if (!e.resource.empty()) j["resource"] = e.resource;
    body = j.dump();
    r.headers.emplace_back("Content-Type", "application/json");
  } else {
    auto add = [&body](std::string_view k, std::string_view v) {
      if (!body.empty()) body += '&';
      body += form_encode(k);
      body += '=';
      body += form_encode(v);
    };
    for (const auto& [k, v] : params) add(k, v);
    if (e.auth != ClientAuth::basic && !e.client_id.empty()) add("client_id", e.client_id);
    if (e.auth == ClientAuth::post && !e.client_secret.empty())
      add("client_secret", e.client_secret.reveal());
    if (!e.resource.empty()) add("resource", e.resource);
    r.headers.emplace_back("Content-Type", "application/x-www-form-urlencoded");
  }
  if (e.auth == ClientAuth::basic) {
    // RFC 6749 §2.3.1: both parts form-encoded before base64.
    std::string pair = form_encode(e.client_id) + ":" + form_encode(e.client_secret.reveal());
    r.headers.emplace_back("Authorization", "Basic " + base64_encode(pair));
    secure_wipe(pair);
  }
  r.body = Secret::adopt(std::move(body));
  return r;
}

net::HttpRequest make_refresh_request(const TokenEndpoint& e, const Secret& refresh_token,
                                      Millis timeout) {
  TokenParams params = {{"grant_type", "refresh_token"}, {"refresh_token", refresh_token.reveal()}};
  if (!e.scope.empty()) params.emplace_back("scope", e.scope);
  if (!e.refresh_redirect_uri.empty()) params.emplace_back("redirect_uri", e.refresh_redirect_uri);
  return make_token_request(e, params, timeout);
}

OAuthError oauth_error_of(const net::HttpResponse& r) {
  OAuthError out;
  auto parsed = json::parse(r.body.reveal(), "an OAuth error");
  if (parsed && parsed->is_object()) {
    out.error = printable_excerpt(str_field(*parsed, "error"), 64);
    out.description = printable_excerpt(str_field(*parsed, "error_description"));
  }
  return out;
}

std::optional<Millis> parse_retry_after(std::string_view v, WallTime now) {
  while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
  std::int64_t seconds = 0;
  const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), seconds);
  if (ec == std::errc{} && end == v.data() + v.size()) {
    if (seconds < 0) return std::nullopt;
    return Millis(std::min<std::int64_t>(seconds, 86'400) * 1000);
  }
  std::tm tm{};
  const std::string s(v);
  if (::strptime(s.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm) == nullptr) return std::nullopt;
  const auto at = std::chrono::system_clock::from_time_t(::timegm(&tm));
  if (at <= now) return Millis(0);
  return std::chrono::duration_cast<Millis>(at - now);
}

std::expected<store::TokenSet, RefreshFailure> interpret_token_response(
    const Result<net::HttpResponse>& result, WallTime sent_at, Millis default_lifetime) {
  if (!result) {
    return std::unexpected(
        transient(fmt::format("token endpoint unreachable: {}", result.error().message)));
  }
  const net::HttpResponse& r = *result;
  const std::string_view body = r.body.reveal();
  const std::string_view type = r.header("content-type");
  const auto retry_after = parse_retry_after(r.header("retry-after"), sent_at);
  const bool json_type = type.find("json") != std::string_view::npos;

  if (r.status == 429) {
    return std::unexpected(transient("the token endpoint is rate limiting (429)", retry_after));
  }
  if (r.status >= 500) {
    return std::unexpected(transient(fmt::format("the token endpoint failed with {}{}", r.status,
                                                 json_type ? "" : " (an HTML error page)"),
                                     retry_after));
  }
  auto parsed = token_answer_fields(body, type);
  if (r.status != 200) {
    // The provider's words reach logs, listings and TOKEND_REASON: printable
    // excerpts only.
    std::string error;
    std::string description;
    if (parsed && parsed->is_object()) {
      error = printable_excerpt(str_field(*parsed, "error"), 64);
      description = printable_excerpt(str_field(*parsed, "error_description"), 200);
    }
    const std::string detail =
        description.empty() ? error : fmt::format("{}: {}", error, description);
    if (error == "invalid_grant") {
      // Atlassian answers 403, the RFC 400: either way the grant is gone.
      return std::unexpected(
          RefreshFailure{FailureKind::reauth,
                         fmt::format("the provider rejected the refresh token ({})", detail),
                         {}});
    }
    if (error == "invalid_client" || r.status == 401) {
      return std::unexpected(
          RefreshFailure{FailureKind::config,
                         fmt::format("the provider rejected the client credentials ({}); check "
                                     "client_id and client secret",
                                     detail.empty() ? std::to_string(r.status) : detail),
                         {}});
    }
    if (error == "unauthorized_client" || error == "unsupported_grant_type" ||
        error == "invalid_scope" || error == "invalid_request") {
      return std::unexpected(RefreshFailure{
          FailureKind::config, fmt::format("the provider refused the refresh ({})", detail), {}});
    }
    if (r.status == 404 || r.status == 405) {
      return std::unexpected(
          RefreshFailure{FailureKind::config,
                         fmt::format("the token endpoint answered {}; check token_url", r.status),
                         {}});
    }
    return std::unexpected(transient(fmt::format("the token endpoint answered {}{}", r.status,
                                                 detail.empty() ? "" : " (" + detail + ")"),
                                     retry_after));
  }
  // A 200 body may hold tokens in a form this code does not read: it is
  // described, never quoted.
  if (!parsed) {
    if (!json_type || body.starts_with("<")) {
      return std::unexpected(transient(
          fmt::format("the token endpoint answered with {} ({} bytes), not JSON "
                      "(a login page or proxy?)",
                      type.empty() ? std::string("no Content-Type") : printable_excerpt(type, 64),
                      body.size())));
    }
    return std::unexpected(transient("the token endpoint's answer is not valid JSON (truncated?)"));
  }
  const json::Json& j = *parsed;
  if (!j.is_object())
    return std::unexpected(transient("the token endpoint's answer is not a JSON object"));
  auto access = j.find("access_token");
  if (access == j.end() || !access->is_string() || access->get_ref<const std::string&>().empty()) {
    return std::unexpected(transient("the token endpoint's answer has no access_token"));
  }
  std::int64_t lifetime_s = -1;
  auto exp = j.find("expires_in");
  if (exp == j.end() || exp->is_null()) {
    lifetime_s = default_lifetime.count() / 1000;
  } else if (exp->is_number_integer()) {
    lifetime_s = exp->get<std::int64_t>();
  } else if (exp->is_string()) {
    // Some providers send the number as a string; accept digits only.
    const auto& s = exp->get_ref<const std::string&>();
    std::int64_t n = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
    if (ec == std::errc{} && end == s.data() + s.size()) lifetime_s = n;
  }
  if (lifetime_s <= 0 || lifetime_s > k_max_lifetime_s) {
    return std::unexpected(transient(fmt::format(
        "the token endpoint's answer has an unusable expires_in ({})",
        exp == j.end() ? "absent"
                       : printable_excerpt(
                             exp->dump(-1, ' ', true, json::Json::error_handler_t::replace), 40))));
  }
  if (auto bad = validate_token_answer(j)) return std::unexpected(std::move(*bad));
  store::TokenSet t;
  t.access_token = Secret(access->get_ref<const std::string&>());
  if (auto rt = j.find("refresh_token"); rt != j.end() && rt->is_string()) {
    t.refresh_token = Secret(rt->get_ref<const std::string&>());
  }
  t.token_type = str_field(j, "token_type", "Bearer");
  if (t.token_type.empty() || t.token_type == "bearer") t.token_type = "Bearer";
  t.scope = str_field(j, "scope");
  t.obtained_at_ms = to_unix_ms(sent_at);
  t.expires_at_ms = to_unix_ms(sent_at) + lifetime_s * 1000;
  return t;
}

}  // namespace tokend::oauth

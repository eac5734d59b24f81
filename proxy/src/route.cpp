#include "proxy/route.hpp"

#include <fmt/format.h>
#include <strings.h>

#include <algorithm>
#include <cctype>

#include "core/encoding.hpp"

namespace tokend::proxy {

namespace {

std::string trimmed_base(std::string base) {
  while (!base.empty() && base.back() == '/') base.pop_back();
  return base;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && ::strncasecmp(a.data(), b.data(), a.size()) == 0;
}

// Characters allowed in a path segment and a query as sent upstream
// (RFC 3986 pchar plus '%' escapes; '/' separates segments).
bool plain_path_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 ||
         std::string_view("-._~!$&'()*+,;=:@/%").find(c) != std::string_view::npos;
}

Result<std::string> encode_path(std::string_view rest) {
  // `rest` arrives decoded; encode what must be encoded again.
  std::string out;
  for (const char c : rest) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f)
      return std::unexpected(bad_input("the path contains a control character"));
    if (c == '\\') return std::unexpected(bad_input("the path contains a backslash"));
    if (c == '%' || c == '?' || c == '#' || !plain_path_char(c)) {
      append_percent_escape(out, u);
    } else {
      out += c;
    }
  }
  return out;
}

// The segments of `rest`, with what a Tomcat-based server (Jira and
// Confluence Data Center) strips before routing: ";params" from each segment
// (RFC 2396 path parameters). Errc::invalid_argument for a segment that is
// then a dot segment ("..;x" climbs out of the base on such servers).
Result<std::vector<std::string_view>> normalised_segments(std::string_view rest) {
  std::vector<std::string_view> out;
  for (;;) {
    const auto slash = rest.find('/');
    std::string_view segment = rest.substr(0, slash);
    segment = segment.substr(0, segment.find(';'));
    if (segment == "." || segment == "..") {
      return std::unexpected(bad_input(
          "the proxied path must not contain '.' or '..' segments (path parameters included)"));
    }
    out.push_back(segment);
    if (slash == std::string_view::npos) break;
    rest.remove_prefix(slash + 1);
  }
  return out;
}

std::string joined(const std::vector<std::string_view>& segments) {
  std::string out;
  for (std::size_t i = 0; i < segments.size(); ++i) {
    if (i > 0) out += '/';
    out += segments[i];
  }
  return out;
}

}  // namespace

Result<std::string> site_base(const store::Profile& p, std::string_view product) {
  const std::string site = trimmed_base(p.config.site);
  const std::string own =
      trimmed_base(product == "jira" ? p.config.jira_base : p.config.confluence_base);
  std::string base;
  if (!own.empty()) {
    base = own;
  } else if (product == "confluence" && p.kind == store::CredentialKind::api_token) {
    base = site + "/wiki";  // Confluence Cloud lives under the site's /wiki
  } else {
    base = site;
  }
  if (base.empty()) return fail(Errc::config, fmt::format("profile '{}' has no site", p.name));
  return base;
}

Result<std::string> upstream_url(const store::Profile& p, std::string_view rest,
                                 std::string_view raw_query) {
  if (rest.empty())
    return std::unexpected(
        bad_input("the proxied path is empty; e.g. /v1/proxy/NAME/jira/rest/api/3/myself"));
  if (rest.front() == '/' || rest.find("//") != std::string_view::npos) {
    return std::unexpected(
        bad_input("the proxied path must be relative and must not contain '//'"));
  }
  if (rest.find("://") != std::string_view::npos)
    return std::unexpected(bad_input("absolute URLs are not proxied"));
  // Dot segments would climb out of the profile's base.
  if (auto segments = normalised_segments(rest); !segments)
    return std::unexpected(segments.error());
  for (const char c : raw_query) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u == 0x7f || c == '#' || c == '\\')
      return std::unexpected(bad_input("the query contains a character that is not allowed"));
  }

  std::string base;
  std::string_view path = rest;
  const bool atlassian_oauth = p.kind == store::CredentialKind::oauth2 && p.provider == "atlassian";
  // atlassian-dc OAuth tokens reach the Data Center site itself, like a PAT.
  const bool data_center_oauth =
      p.kind == store::CredentialKind::oauth2 && p.provider == "atlassian-dc";
  if (p.kind == store::CredentialKind::oauth2 && !atlassian_oauth && !data_center_oauth) {
    base = trimmed_base(p.config.api_base);
    if (base.empty()) {
      return fail(
          Errc::config,
          fmt::format("profile '{}' has no api_base to forward to; set it with tokenctl add {} "
                      "--api-base URL",
                      p.name, p.name));
    }
  } else {
    const auto slash = rest.find('/');
    const std::string_view product = rest.substr(0, slash);
    path = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash + 1);
    if (product != "jira" && product != "confluence") {
      return std::unexpected(bad_input(
          fmt::format("an Atlassian profile forwards jira/... and confluence/... only (got '{}')",
                      std::string(product.substr(0, 32)))));
    }
    if (atlassian_oauth) {
      const std::string& cloud = p.config.cloud_id;
      if (cloud.empty()) {
        return fail(
            Errc::config,
            fmt::format("profile '{}' has no cloud id yet; run tokenctl login {}", p.name, p.name));
      }
      std::string gateway = trimmed_base(p.config.api_base);
      if (gateway.empty()) gateway = "https://api.atlassian.com";
      auto cloud_enc = encode_path(cloud);
      if (!cloud_enc || cloud.find('/') != std::string::npos)
        return std::unexpected(bad_input("the stored cloud id is not usable"));
      base = fmt::format("{}/ex/{}/{}", gateway, product, *cloud_enc);
    } else {
      auto b = site_base(p, product);
      if (!b) return std::unexpected(b.error());
      base = std::move(*b);
    }
  }
  auto encoded = encode_path(path);
  if (!encoded) return std::unexpected(encoded.error());
  std::string url = base + "/" + *encoded;
  if (!raw_query.empty()) url += "?" + std::string(raw_query);
  return url;
}

bool needs_cloud_id(const store::Profile& p, std::string_view rest) {
  return p.kind == store::CredentialKind::oauth2 && p.provider == "atlassian" &&
         p.config.cloud_id.empty() &&
         (rest.starts_with("jira/") || rest.starts_with("confluence/") || rest == "jira" ||
          rest == "confluence");
}

Result<Headers> request_headers(const Headers& in) {
  // Hop-by-hop headers named by Connection are dropped too (RFC 9110 §7.6.1).
  std::vector<std::string> named;
  for (const auto& [k, v] : in) {
    if (!iequals(k, "connection")) continue;
    std::string_view s = v;
    while (!s.empty()) {
      const auto comma = s.find(',');
      std::string_view t = s.substr(0, comma);
      while (!t.empty() && t.front() == ' ') t.remove_prefix(1);
      while (!t.empty() && t.back() == ' ') t.remove_suffix(1);
      if (!t.empty()) named.emplace_back(t);
      if (comma == std::string_view::npos) break;
      s.remove_prefix(comma + 1);
    }
  }
  static constexpr std::string_view k_dropped[] = {"authorization",
                                                   "cookie",
                                                   "host",
                                                   "connection",
                                                   "keep-alive",
                                                   "te",
                                                   "trailer",
                                                   "transfer-encoding",
                                                   "upgrade",
                                                   "content-length",
                                                   "expect",
                                                   "proxy-authorization",
                                                   "proxy-authenticate",
                                                   "proxy-connection"};
  Headers out;
  for (const auto& [k, v] : in) {
    for (const std::string_view s : {std::string_view(k), std::string_view(v)}) {
      for (const char c : s) {
        if (c == '\r' || c == '\n' || c == '\0')
          return std::unexpected(bad_input("a header contains CR, LF or NUL"));
      }
    }
    const bool drop = std::any_of(std::begin(k_dropped), std::end(k_dropped),
                                  [&](std::string_view d) { return iequals(k, d); }) ||
                      (k.size() >= 6 && iequals(std::string_view(k).substr(0, 6), "proxy-")) ||
                      (k.size() >= 9 && iequals(std::string_view(k).substr(0, 9), "x-tokend-")) ||
                      std::any_of(named.begin(), named.end(),
                                  [&](const std::string& n) { return iequals(k, n); });
    if (!drop) out.emplace_back(k, v);
  }
  return out;
}

Headers response_headers(const Headers& in) {
  static constexpr std::string_view k_dropped[] = {
      "connection", "keep-alive",        "te",
      "trailer",    "transfer-encoding", "upgrade",
      "set-cookie", "content-length",    "proxy-authenticate"};
  Headers out;
  for (const auto& [k, v] : in) {
    if (std::any_of(std::begin(k_dropped), std::end(k_dropped),
                    [&](std::string_view d) { return iequals(k, d); }))
      continue;
    if (k.size() >= 9 && iequals(std::string_view(k).substr(0, 9), "x-tokend-"))
      continue;  // tokend's own, never the upstream's
    if (v.find_first_of("\r\n") != std::string::npos) continue;
    out.emplace_back(k, v);
  }
  return out;
}

Result<std::vector<std::vector<std::string>>> policy_paths(const store::Profile& p,
                                                           std::string_view rest) {
  auto segments = normalised_segments(rest);
  if (!segments) return std::unexpected(segments.error());
  std::vector<std::string> forms = {std::string(rest)};
  if (auto stripped = joined(*segments); stripped != rest) forms.push_back(std::move(stripped));
  std::vector<std::vector<std::string>> out;
  for (const auto& form : forms) {
    std::vector<std::string> names = {form};
    // An API token or PAT reaches both products on the site, so one upstream
    // URL can have two names: "jira/wiki/x" is "confluence/x" on Confluence
    // Cloud, and with one base for both, "jira/x" is "confluence/x".
    const auto slash = form.find('/');
    const std::string_view product = std::string_view(form).substr(0, slash);
    if (p.kind != store::CredentialKind::oauth2 && (product == "jira" || product == "confluence")) {
      const std::string path = slash == std::string::npos ? std::string() : form.substr(slash + 1);
      if (auto base = site_base(p, product)) {
        const std::string url = *base + "/" + path;
        for (const std::string_view other : {"jira", "confluence"}) {
          auto other_base = site_base(p, other);
          if (!other_base) continue;
          const std::string prefix = *other_base + "/";
          if (url.starts_with(prefix))
            names.push_back(std::string(other) + "/" + url.substr(prefix.size()));
        }
      }
    }
    std::sort(names.begin(), names.end());
    names.erase(std::unique(names.begin(), names.end()), names.end());
    out.push_back(std::move(names));
  }
  return out;
}

Result<> check_policy(const store::Profile& profile, std::string_view method,
                      std::string_view rest) {
  // The path is judged even without a policy: what policy_paths refuses is
  // refused here whatever the profile allows.
  auto readings = policy_paths(profile, rest);
  if (!readings) return std::unexpected(readings.error());
  static const store::ProxyPolicy k_no_policy;
  return check_policy(profile.config.policy ? *profile.config.policy : k_no_policy, method,
                      *readings);
}

Result<> check_policy(const store::ProxyPolicy& policy, std::string_view method,
                      const std::vector<std::vector<std::string>>& readings) {
  static const std::vector<std::string> k_no_prefixes;
  const std::vector<std::string>& deny = policy.deny ? *policy.deny : k_no_prefixes;
  const std::vector<std::string>& allow = policy.allow ? *policy.allow : k_no_prefixes;
  // A prefix matches whole segments: "jira/rest/api/3/project/AB" is not a
  // prefix of ".../project/ABC".
  auto matches = [](std::string_view rest, const std::string& prefix) {
    std::string_view p = prefix;
    while (!p.empty() && p.front() == '/') p.remove_prefix(1);
    while (!p.empty() && p.back() == '/') p.remove_suffix(1);
    return rest.starts_with(p) &&
           (rest.size() == p.size() || rest[p.size()] == '/' || rest[p.size()] == '?');
  };
  if (policy.read_only.value_or(false) && method != "GET" && method != "HEAD") {
    return fail(Errc::permission,
                fmt::format("policy: this profile is read-only ({} refused)", method));
  }
  // Denied when any name of any reading is denied; allowed only when every
  // reading has a name under an allowed prefix.
  for (const auto& d : deny) {
    for (const auto& names : readings) {
      for (const auto& name : names) {
        if (matches(name, d))
          return fail(Errc::permission,
                      fmt::format("policy: the path is denied by the rule '{}'", d));
      }
    }
  }
  if (allow.empty()) return {};
  for (const auto& names : readings) {
    const bool allowed = std::any_of(names.begin(), names.end(), [&](const std::string& name) {
      return std::any_of(allow.begin(), allow.end(),
                         [&](const std::string& a) { return matches(name, a); });
    });
    if (!allowed) return fail(Errc::permission, "policy: the path is not under any allowed prefix");
  }
  return {};
}

std::optional<Millis> RateLimiter::take(double rate_per_minute, MonoTime now) {
  if (rate_per_minute <= 0) return std::nullopt;
  const double per_ms = rate_per_minute / 60'000.0;
  if (m_tokens < 0) {
    m_tokens = rate_per_minute;
  } else {
    const auto elapsed = std::chrono::duration_cast<Millis>(now - m_last).count();
    m_tokens = std::min(rate_per_minute, m_tokens + static_cast<double>(elapsed) * per_ms);
  }
  m_last = now;
  if (m_tokens >= 1.0) {
    m_tokens -= 1.0;
    return std::nullopt;
  }
  return Millis(static_cast<std::int64_t>((1.0 - m_tokens) / per_ms) + 1);
}

}  // namespace tokend::proxy

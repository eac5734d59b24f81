#include "oauth/discovery.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>

#include "core/encoding.hpp"
#include "net/url.hpp"
#include "oauth/protocol.hpp"

namespace tokend::oauth {

namespace {

std::string without_trailing_slash(std::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  return path == "/" ? std::string() : std::string(path);
}

std::vector<std::string> strings_of(const json::Json& j, const char* key) {
  std::vector<std::string> out;
  if (auto it = j.find(key); it != j.end() && it->is_array()) {
    for (const auto& v : *it) {
      if (v.is_string() && v.get_ref<const std::string&>().size() <= 1024)
        out.push_back(v.get<std::string>());
      if (out.size() >= 64) break;
    }
  }
  return out;
}

}  // namespace

Result<> check_discovered_url(std::string_view field, std::string_view url,
                              std::string_view source) {
  if (auto ok = check_endpoint_url(field, url); !ok) return ok;
  auto from = net::parse_url(source, "the document's URL");
  if (from && net::is_loopback_host(from->host)) return {};
  auto to = net::parse_url(url, field);
  if (!to) return std::unexpected(to.error());
  if (to->scheme == "https" && !net::is_loopback_host(to->host)) return {};
  return fail(
      Errc::invalid_argument,
      fmt::format(
          "field \"{}\" must be an https URL of a remote host: a loopback URL (or plain http) is "
          "accepted only from a document that itself came from loopback",
          field));
}

Result<std::vector<std::string>> metadata_urls(std::string_view issuer) {
  auto url = net::parse_url(issuer, "the issuer");
  if (!url) return std::unexpected(url.error());
  if (!url->query.empty()) return fail(Errc::invalid_argument, "the issuer must not have a query");
  const std::string origin = url->origin();
  const std::string path = without_trailing_slash(url->path);
  std::vector<std::string> out = {origin + "/.well-known/oauth-authorization-server" + path,
                                  origin + "/.well-known/openid-configuration" + path};
  if (!path.empty()) out.push_back(origin + path + "/.well-known/openid-configuration");
  return out;
}

Result<std::vector<std::string>> protected_resource_urls(std::string_view resource) {
  auto url = net::parse_url(resource, "the MCP server URL");
  if (!url) return std::unexpected(url.error());
  const std::string origin = url->origin();
  const std::string path = without_trailing_slash(url->path);
  std::vector<std::string> out = {origin + "/.well-known/oauth-protected-resource" + path};
  if (!path.empty()) out.push_back(origin + "/.well-known/oauth-protected-resource");
  return out;
}

std::optional<std::string> resource_metadata_of(std::string_view h) {
  return bearer_challenge_param(h, "resource_metadata");
}

std::optional<std::string> bearer_challenge_param(std::string_view h, std::string_view wanted) {
  // challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ]; we need the
  // auth-param resource_metadata of the Bearer challenge.
  std::size_t i = 0;
  auto skip_ws = [&] {
    while (i < h.size() && (h[i] == ' ' || h[i] == '\t' || h[i] == ',')) ++i;
  };
  skip_ws();
  const auto scheme_end = h.find_first_of(" \t", i);
  if (scheme_end == std::string_view::npos || ascii_lower(h.substr(i, scheme_end - i)) != "bearer")
    return std::nullopt;
  i = scheme_end;
  while (i < h.size()) {
    skip_ws();
    const auto eq = h.find('=', i);
    if (eq == std::string_view::npos) return std::nullopt;
    std::string name = ascii_lower(h.substr(i, eq - i));
    while (!name.empty() && (name.back() == ' ' || name.back() == '\t')) name.pop_back();
    i = eq + 1;
    while (i < h.size() && (h[i] == ' ' || h[i] == '\t')) ++i;
    std::string value;
    if (i < h.size() && h[i] == '"') {
      ++i;
      while (i < h.size() && h[i] != '"') {
        if (h[i] == '\\' && i + 1 < h.size()) ++i;
        value += h[i++];
      }
      if (i >= h.size()) return std::nullopt;  // unterminated
      ++i;
    } else {
      const auto end = h.find_first_of(", \t", i);
      value = std::string(
          h.substr(i, end == std::string_view::npos ? std::string_view::npos : end - i));
      i = end == std::string_view::npos ? h.size() : end;
    }
    if (name == wanted && !value.empty()) return value;
    // A second challenge ("Basic realm=...") ends the Bearer parameters.
    skip_ws();
    const auto next_space = h.find_first_of(" \t=", i);
    if (next_space != std::string_view::npos && h[next_space] != '=') return std::nullopt;
  }
  return std::nullopt;
}

bool same_resource(std::string_view a, std::string_view b) {
  auto ua = net::parse_url(a, "a");
  auto ub = net::parse_url(b, "b");
  if (!ua || !ub) return false;
  return ua->scheme == ub->scheme && ascii_lower(ua->host) == ascii_lower(ub->host) &&
         ua->port == ub->port &&
         without_trailing_slash(ua->path) == without_trailing_slash(ub->path) &&
         ua->query == ub->query;
}

Result<store::ProviderMetadata> check_server_metadata(const json::Json& m,
                                                      std::string_view issuer) {
  if (!m.is_object())
    return fail(Errc::protocol, "the authorization server metadata is not a JSON object");
  auto it = m.find("issuer");
  if (it == m.end() || !it->is_string())
    return fail(Errc::protocol, "the authorization server metadata has no issuer");
  const std::string& got = it->get_ref<const std::string&>();
  if (without_trailing_slash(got) != without_trailing_slash(issuer) && got != issuer) {
    return fail(Errc::protocol,
                fmt::format("the authorization server metadata names issuer '{}', not '{}' "
                            "(RFC 8414 §3.3: refusing it)",
                            printable_excerpt(got, 200), issuer));
  }
  using Meta = store::ProviderMetadata;
  Meta out;
  out.issuer = got;
  const std::pair<const char*, std::string Meta::*> endpoints[] = {
      {"authorization_endpoint", &Meta::authorization_endpoint},
      {"token_endpoint", &Meta::token_endpoint},
      {"device_authorization_endpoint", &Meta::device_authorization_endpoint},
      {"revocation_endpoint", &Meta::revocation_endpoint},
      {"registration_endpoint", &Meta::registration_endpoint},
      {"userinfo_endpoint", &Meta::userinfo_endpoint}};
  for (const auto& [field, member] : endpoints) {
    auto f = m.find(field);
    if (f == m.end() || !f->is_string()) continue;
    const std::string& v = f->get_ref<const std::string&>();
    if (v.size() > 4096)
      return fail(Errc::protocol, fmt::format("the metadata's {} is too long", field));
    if (auto ok = check_discovered_url(field, v, issuer); !ok) {
      return fail(Errc::protocol, "the authorization server metadata: " + ok.error().message);
    }
    out.*member = v;
  }
  if (out.token_endpoint.empty())
    return fail(Errc::protocol, "the authorization server metadata has no token_endpoint");
  const std::pair<const char*, std::optional<std::vector<std::string>> Meta::*> lists[] = {
      {"scopes_supported", &Meta::scopes_supported},
      {"code_challenge_methods_supported", &Meta::code_challenge_methods_supported},
      {"token_endpoint_auth_methods_supported", &Meta::token_endpoint_auth_methods_supported},
      {"grant_types_supported", &Meta::grant_types_supported}};
  for (const auto& [list, member] : lists) {
    if (m.contains(list)) out.*member = strings_of(m, list);
  }
  // RFC 9207 and the MCP client ID metadata documents: only a JSON true counts.
  const auto flag = [&m](const char* name) {
    auto f = m.find(name);
    return f != m.end() && f->is_boolean() && f->get<bool>();
  };
  out.authorization_response_iss_parameter_supported =
      flag("authorization_response_iss_parameter_supported");
  out.client_id_metadata_document_supported = flag("client_id_metadata_document_supported");
  return out;
}

Result<ProtectedResource> check_resource_metadata(const json::Json& m, std::string_view resource) {
  if (!m.is_object())
    return fail(Errc::protocol, "the protected resource metadata is not a JSON object");
  ProtectedResource r;
  if (auto it = m.find("resource"); it != m.end() && it->is_string())
    r.resource = it->get<std::string>();
  if (r.resource.empty() || !same_resource(r.resource, resource)) {
    return fail(Errc::protocol,
                fmt::format("the protected resource metadata is for '{}', not for '{}' "
                            "(RFC 9728 §3.3: refusing it)",
                            printable_excerpt(r.resource, 200), resource));
  }
  r.authorization_servers = strings_of(m, "authorization_servers");
  if (r.authorization_servers.empty()) {
    return fail(Errc::protocol, "the protected resource metadata names no authorization_servers");
  }
  for (const auto& as : r.authorization_servers) {
    if (auto ok = check_discovered_url("authorization_servers", as, resource); !ok) {
      return fail(Errc::protocol, "the protected resource metadata: " + ok.error().message);
    }
  }
  r.scopes_supported = strings_of(m, "scopes_supported");
  return r;
}

}  // namespace tokend::oauth

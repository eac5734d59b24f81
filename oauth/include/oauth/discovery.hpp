// Discovery as pure functions: which URLs to ask, and what the answers mean.
// RFC 8414 (authorization server metadata), OpenID Connect Discovery 1.0,
// RFC 9728 (protected resource metadata) and the MCP authorization rules
// built on them. The login manager does the fetching.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.hpp"
#include "core/json.hpp"
#include "store/profile_config.hpp"

namespace tokend::oauth {

// Metadata URLs for an issuer, in the order to try: RFC 8414 path-insert,
// OIDC path-insert, OIDC path-append (the last two only differ for an issuer
// with a path).
Result<std::vector<std::string>> metadata_urls(std::string_view issuer);

// Protected-resource metadata URLs for a resource URL: path-insert first,
// then the root.
Result<std::vector<std::string>> protected_resource_urls(std::string_view resource);

// The resource_metadata parameter of a WWW-Authenticate: Bearer challenge.
std::optional<std::string> resource_metadata_of(std::string_view www_authenticate);
// Any auth-param of the Bearer challenge (`name` in lower case), e.g.
// "error" and "scope" of an RFC 6750 §3.1 insufficient_scope answer.
std::optional<std::string> bearer_challenge_param(std::string_view www_authenticate,
                                                  std::string_view name);

// A URL that a fetched document (metadata, a WWW-Authenticate challenge)
// names, checked as check_endpoint_url does, and more: plain http on a
// loopback host only when `source`, the URL the document came from (or was
// looked up for), is itself loopback. A remote server cannot point tokend
// at a local service.
Result<> check_discovered_url(std::string_view field, std::string_view url,
                              std::string_view source);

// Authorization server metadata, checked: `issuer` must equal the one asked
// for (RFC 8414 §3.3) and every endpoint must pass check_discovered_url with
// the issuer as the source.
// Returns the fields tokend keeps (config.discovered).
Result<store::ProviderMetadata> check_server_metadata(const json::Json& metadata,
                                                      std::string_view issuer);

struct ProtectedResource {
  std::string resource;
  std::vector<std::string> authorization_servers;
  std::vector<std::string> scopes_supported;
};
// RFC 9728 §3.3: `resource` must be the URL the metadata was looked up for;
// the authorization servers pass check_discovered_url with it as the source.
Result<ProtectedResource> check_resource_metadata(const json::Json& metadata,
                                                  std::string_view resource);

// Same resource per RFC 8707/9728 comparison: scheme and host case-insensitive,
// a trailing slash ignored.
bool same_resource(std::string_view a, std::string_view b);

}  // namespace tokend::oauth

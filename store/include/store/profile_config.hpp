// A profile's non-secret settings, typed: what `Profile::config` holds. The
// store keeps them as one JSON object (the `config` column, the same JSON
// the API shows as a profile's "config"); parse_profile_config turns that
// object into a ProfileConfig when the store loads a profile, and to_json
// turns it back when the store writes one. Nothing else reads settings by
// JSON key.
//
// The stored JSON is unchanged by the round trip: for every object tokend
// writes, to_json(*parse_profile_config(j)) == j. Two rules make that hold:
// - a string setting that is absent and one that is empty mean the same to
//   every reader (an empty string is never stored: a PUT refuses it), so a
//   std::string is empty for "not set" and an empty one is not written;
//   lists and objects a client can send empty ("scopes": []) are
//   std::optional, so that what was stored is what is shown;
// - keys this version does not know, at the top level and inside the
//   nested objects, are kept in `other` and written back unchanged. They
//   come from a newer tokend sharing the database (or a hand edit); keeping
//   them means going back and forth between versions loses nothing. No
//   reader sees them, and a PUT (which refuses unknown keys) replaces them.
//
// How a PUT body becomes a ProfileConfig (what may be set, URL and size
// checks) is tokens/profile_spec's business; this header only knows the
// shapes.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.hpp"
#include "core/json.hpp"

namespace tokend::store {

// "pkce": PKCE with S256 unless "off"; "required" also refuses a provider
// whose metadata does not offer S256. Absent: S256.
enum class PkceMode { s256, required, off };
std::string_view to_string(PkceMode m) noexcept;  // "S256", "required", "off"
Result<PkceMode> parse_pkce_mode(std::string_view s);

// "token_endpoint_auth": how the client authenticates at the token endpoint
// (RFC 7591 names).
enum class ClientAuthMethod { client_secret_basic, client_secret_post, none };
std::string_view to_string(ClientAuthMethod m) noexcept;
Result<ClientAuthMethod> parse_client_auth_method(std::string_view s);

// One entry of "sinks" (tokens/sinks.hpp writes them).
struct Sink {
  enum class Type { file, dotenv };
  enum class Format { raw, header, json };
  Type type = Type::file;
  std::string path;
  Format format = Format::raw;            // file sinks
  std::string variable = "ACCESS_TOKEN";  // dotenv sinks
  json::Json other = json::Json::object();

  bool operator==(const Sink&) const = default;
};

// "policy": what the proxy lets through for the profile (proxy/route.hpp).
struct ProxyPolicy {
  std::optional<bool> read_only;
  std::optional<std::vector<std::string>> allow;  // path prefixes, "jira/rest/api/3/project"
  std::optional<std::vector<std::string>> deny;
  std::optional<double> rate_per_minute;  // a whole number is stored as an integer
  json::Json other = json::Json::object();

  bool operator==(const ProxyPolicy&) const = default;
};

// "discovered": what the login resolver kept of an authorization server's
// metadata (oauth::check_server_metadata) and, for MCP, of the protected
// resource metadata that named it.
struct ProviderMetadata {
  std::string issuer;
  std::string authorization_endpoint;
  std::string token_endpoint;
  std::string device_authorization_endpoint;
  std::string revocation_endpoint;
  std::string registration_endpoint;
  std::string userinfo_endpoint;
  std::optional<std::vector<std::string>> scopes_supported;
  std::optional<std::vector<std::string>> code_challenge_methods_supported;
  std::optional<std::vector<std::string>> token_endpoint_auth_methods_supported;
  std::optional<std::vector<std::string>> grant_types_supported;
  bool authorization_response_iss_parameter_supported = false;  // stored only when true
  bool client_id_metadata_document_supported = false;           // stored only when true
  // MCP: the protected resource and the authorization servers it names.
  std::string resource;
  std::string authorization_server;                // the one chosen
  std::vector<std::string> authorization_servers;  // all of them
  std::vector<std::string> resource_scopes;        // its scopes_supported
  std::optional<std::int64_t> at;                  // when it was discovered (Unix seconds)
  json::Json other = json::Json::object();

  bool operator==(const ProviderMetadata&) const = default;
};

struct ProfileConfig {
  // Every kind.
  std::string site;  // Atlassian site (API token, PAT, atlassian-dc)
  std::string api_base;
  std::string jira_base;
  std::string confluence_base;
  std::string email;  // api-token: the account the token belongs to
  std::string description;
  std::optional<std::int64_t> refresh_buffer;  // seconds before expiry to refresh
  std::optional<std::vector<Sink>> sinks;
  std::optional<ProxyPolicy> policy;

  // OAuth: the client and the provider's endpoints.
  std::string client_id;
  std::optional<std::vector<std::string>> scopes;
  std::string authorize_url;
  std::string token_url;
  std::string redirect_uri;
  std::string issuer;
  std::string mcp_server;
  std::string audience;
  std::string revocation_url;
  std::string userinfo_url;
  std::string device_authorization_url;
  std::string registration_url;
  std::string resource;              // RFC 8707
  std::string authorization_server;  // MCP: which of the server's authorization servers
  std::string prompt;
  std::optional<std::map<std::string, std::string>> authorize_params;
  std::optional<PkceMode> pkce;
  std::optional<ClientAuthMethod> token_endpoint_auth;
  std::optional<std::int64_t> reuse_window;  // seconds the previous refresh token stays usable

  // What tokend itself keeps: the login resolver (discovery, a registered
  // client or a client ID metadata document), the Atlassian cloud id (login,
  // proxy) and the scopes a step-up asks for (TokenService::require_consent).
  std::optional<ProviderMetadata> discovered;
  bool client_registered = false;  // stored only when true
  // The issuer the client was registered with; may be stored empty (a
  // registration endpoint configured without an issuer).
  std::optional<std::string> client_registered_for;
  std::string client_id_metadata_document;
  std::string cloud_id;
  std::string cloud_url;
  std::vector<std::string> step_up_scopes;

  json::Json other = json::Json::object();  // keys this version does not know

  bool operator==(const ProfileConfig&) const = default;
};

// The stored JSON object as settings. Every known key must have its shape;
// a key that does not is an invalid_argument naming it (and never quoting
// its value): `setting "policy.read_only" must be true or false`. A null
// value counts as absent. "token_endpoint_auth" is the one lenient key: a
// method tokend does not implement (what a dynamic registration once
// answered, such as private_key_jwt) reads as client_secret_basic, the way
// the token request always used it.
Result<ProfileConfig> parse_profile_config(const json::Json& stored);

// The config column every store keeps (JSON text), written and read in one
// place: what cannot be read back is Errc::corrupt and names the profile.
std::string config_column(const ProfileConfig& config);
Result<ProfileConfig> read_config_column(std::string_view text, std::string_view profile);

// The JSON the store writes and the API shows (nlohmann's ADL hooks, so
// json::Json(config) works too).
void to_json(json::Json& out, const ProfileConfig& config);
void to_json(json::Json& out, const Sink& sink);
void to_json(json::Json& out, const ProxyPolicy& policy);
void to_json(json::Json& out, const ProviderMetadata& metadata);

// The plain string setting stored under `key` (site, client_id, ...), for
// code that sets settings by the names a client sends; nullptr for any key
// that is not a plain string setting.
std::string* string_setting(ProfileConfig& config, std::string_view key);

}  // namespace tokend::store

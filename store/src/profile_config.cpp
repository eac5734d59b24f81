#include "store/profile_config.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <set>
#include <utility>

#include "enum_names.hpp"

namespace tokend::store {

namespace {

using json::Json;

constexpr std::array<std::pair<PkceMode, std::string_view>, 3> k_pkce_modes{{
    {PkceMode::s256, "S256"},
    {PkceMode::required, "required"},
    {PkceMode::off, "off"},
}};

constexpr std::array<std::pair<ClientAuthMethod, std::string_view>, 3> k_auth_methods{{
    {ClientAuthMethod::client_secret_basic, "client_secret_basic"},
    {ClientAuthMethod::client_secret_post, "client_secret_post"},
    {ClientAuthMethod::none, "none"},
}};

constexpr std::array<std::pair<Sink::Type, std::string_view>, 2> k_sink_types{{
    {Sink::Type::file, "file"},
    {Sink::Type::dotenv, "dotenv"},
}};

constexpr std::array<std::pair<Sink::Format, std::string_view>, 3> k_sink_formats{{
    {Sink::Format::raw, "raw"},
    {Sink::Format::header, "header"},
    {Sink::Format::json, "json"},
}};

using detail::name_of;
using detail::value_of;

// The plain string settings, by their stored names.
struct StringSetting {
  std::string_view key;
  std::string ProfileConfig::* member;
};
constexpr std::array<StringSetting, 23> k_string_settings{{
    {"site", &ProfileConfig::site},
    {"api_base", &ProfileConfig::api_base},
    {"jira_base", &ProfileConfig::jira_base},
    {"confluence_base", &ProfileConfig::confluence_base},
    {"email", &ProfileConfig::email},
    {"description", &ProfileConfig::description},
    {"client_id", &ProfileConfig::client_id},
    {"authorize_url", &ProfileConfig::authorize_url},
    {"token_url", &ProfileConfig::token_url},
    {"redirect_uri", &ProfileConfig::redirect_uri},
    {"issuer", &ProfileConfig::issuer},
    {"mcp_server", &ProfileConfig::mcp_server},
    {"audience", &ProfileConfig::audience},
    {"revocation_url", &ProfileConfig::revocation_url},
    {"userinfo_url", &ProfileConfig::userinfo_url},
    {"device_authorization_url", &ProfileConfig::device_authorization_url},
    {"registration_url", &ProfileConfig::registration_url},
    {"resource", &ProfileConfig::resource},
    {"authorization_server", &ProfileConfig::authorization_server},
    {"prompt", &ProfileConfig::prompt},
    {"client_id_metadata_document", &ProfileConfig::client_id_metadata_document},
    {"cloud_id", &ProfileConfig::cloud_id},
    {"cloud_url", &ProfileConfig::cloud_url},
}};

struct MetadataString {
  std::string_view key;
  std::string ProviderMetadata::* member;
};
constexpr std::array<MetadataString, 9> k_metadata_strings{{
    {"issuer", &ProviderMetadata::issuer},
    {"authorization_endpoint", &ProviderMetadata::authorization_endpoint},
    {"token_endpoint", &ProviderMetadata::token_endpoint},
    {"device_authorization_endpoint", &ProviderMetadata::device_authorization_endpoint},
    {"revocation_endpoint", &ProviderMetadata::revocation_endpoint},
    {"registration_endpoint", &ProviderMetadata::registration_endpoint},
    {"userinfo_endpoint", &ProviderMetadata::userinfo_endpoint},
    {"resource", &ProviderMetadata::resource},
    {"authorization_server", &ProviderMetadata::authorization_server},
}};

struct MetadataList {
  std::string_view key;
  std::optional<std::vector<std::string>> ProviderMetadata::* member;
};
constexpr std::array<MetadataList, 4> k_metadata_lists{{
    {"scopes_supported", &ProviderMetadata::scopes_supported},
    {"code_challenge_methods_supported", &ProviderMetadata::code_challenge_methods_supported},
    {"token_endpoint_auth_methods_supported",
     &ProviderMetadata::token_endpoint_auth_methods_supported},
    {"grant_types_supported", &ProviderMetadata::grant_types_supported},
}};

// --- reading -----------------------------------------------------------------

// The shape a JSON value must have to be read into a T, and how a message
// names it. nlohmann's get_to does the conversion once the shape is right.
bool has_shape(const Json& v, const std::string*) {
  return v.is_string();
}
bool has_shape(const Json& v, const bool*) {
  return v.is_boolean();
}
bool has_shape(const Json& v, const std::int64_t*) {
  return v.is_number_integer() &&
         (!v.is_number_unsigned() ||
          v.get<std::uint64_t>() <=
              static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()));
}
bool has_shape(const Json& v, const double*) {
  return v.is_number();
}
bool has_shape(const Json& v, const std::vector<std::string>*) {
  return v.is_array() &&
         std::all_of(v.begin(), v.end(), [](const Json& s) { return s.is_string(); });
}
bool has_shape(const Json& v, const std::map<std::string, std::string>*) {
  return v.is_object() &&
         std::all_of(v.begin(), v.end(), [](const Json& s) { return s.is_string(); });
}

std::string_view shape_name(const std::string*) {
  return "a string";
}
std::string_view shape_name(const bool*) {
  return "true or false";
}
std::string_view shape_name(const std::int64_t*) {
  return "an integer";
}
std::string_view shape_name(const double*) {
  return "a number";
}
std::string_view shape_name(const std::vector<std::string>*) {
  return "a list of strings";
}
std::string_view shape_name(const std::map<std::string, std::string>*) {
  return "an object of strings";
}

// The first failure of several reads (all of them run: a read only sets
// its field).
Result<> first_failure(std::initializer_list<Result<>> reads) {
  for (const auto& r : reads) {
    if (!r) return r;
  }
  return {};
}

Error wrong_shape(std::string_view path, std::string_view shape) {
  return Error{Errc::invalid_argument, fmt::format("setting \"{}\" must be {}", path, shape)};
}

// Reads the known keys of one JSON object; whatever is left over is kept
// (`rest()`). `prefix` names the object in messages ("policy.").
class ObjectReader {
 public:
  ObjectReader(const Json& object, std::string prefix)
      : m_object(object), m_prefix(std::move(prefix)) {}

  // The value under `key`, marked as known; nullptr when absent or null.
  const Json* take(std::string_view key) {
    m_known.emplace(key);
    auto it = m_object.find(key);
    if (it == m_object.end() || it->is_null()) return nullptr;
    return &*it;
  }

  [[nodiscard]] std::string path(std::string_view key) const { return m_prefix + std::string(key); }

  template <class T>
  Result<> read(std::string_view key, T& out) {
    const Json* v = take(key);
    if (v == nullptr) return {};
    if (!has_shape(*v, &out)) return std::unexpected(wrong_shape(path(key), shape_name(&out)));
    v->get_to(out);
    return {};
  }

  template <class T>
  Result<> read(std::string_view key, std::optional<T>& out) {
    const Json* v = take(key);
    if (v == nullptr) return {};
    T value{};
    if (!has_shape(*v, &value)) return std::unexpected(wrong_shape(path(key), shape_name(&value)));
    v->get_to(value);
    out = std::move(value);
    return {};
  }

  template <class E, std::size_t N>
  Result<std::optional<E>> read_enum(std::string_view key,
                                     const std::array<std::pair<E, std::string_view>, N>& table) {
    const Json* v = take(key);
    if (v == nullptr) return std::optional<E>{};
    auto e = v->is_string() ? value_of(table, v->get_ref<const std::string&>()) : std::nullopt;
    if (!e) {
      std::string names;
      for (const auto& [_, name] : table) names += (names.empty() ? "" : ", ") + std::string(name);
      return std::unexpected(
          Error{Errc::invalid_argument,
                fmt::format("setting \"{}\" must be one of {}", path(key), names)});
    }
    return e;
  }

  [[nodiscard]] Json rest() const {
    Json out = Json::object();
    for (const auto& [k, v] : m_object.items()) {
      if (!m_known.contains(k)) out[k] = v;
    }
    return out;
  }

 private:
  const Json& m_object;
  std::string m_prefix;
  std::set<std::string, std::less<>> m_known;
};

Result<Sink> read_sink(const Json& j, std::size_t index) {
  const std::string prefix = fmt::format("sinks[{}].", index);
  if (!j.is_object())
    return std::unexpected(wrong_shape(prefix.substr(0, prefix.size() - 1), "an object"));
  ObjectReader r(j, prefix);
  Sink s;
  auto type = r.read_enum("type", k_sink_types);
  if (!type) return std::unexpected(type.error());
  if (!*type) return std::unexpected(wrong_shape(r.path("type"), "file or dotenv"));
  s.type = **type;
  if (auto ok = r.read("path", s.path); !ok) return std::unexpected(ok.error());
  auto format = r.read_enum("format", k_sink_formats);
  if (!format) return std::unexpected(format.error());
  s.format = format->value_or(Sink::Format::raw);
  if (auto ok = r.read("variable", s.variable); !ok) return std::unexpected(ok.error());
  s.other = r.rest();
  return s;
}

Result<ProxyPolicy> read_policy(const Json& j) {
  if (!j.is_object()) return std::unexpected(wrong_shape("policy", "an object"));
  ObjectReader r(j, "policy.");
  ProxyPolicy p;
  if (auto ok =
          first_failure({r.read("read_only", p.read_only), r.read("allow", p.allow),
                         r.read("deny", p.deny), r.read("rate_per_minute", p.rate_per_minute)});
      !ok) {
    return std::unexpected(ok.error());
  }
  p.other = r.rest();
  return p;
}

Result<ProviderMetadata> read_metadata(const Json& j) {
  if (!j.is_object()) return std::unexpected(wrong_shape("discovered", "an object"));
  ObjectReader r(j, "discovered.");
  ProviderMetadata m;
  for (const auto& [key, member] : k_metadata_strings) {
    if (auto ok = r.read(key, m.*member); !ok) return std::unexpected(ok.error());
  }
  for (const auto& [key, member] : k_metadata_lists) {
    if (auto ok = r.read(key, m.*member); !ok) return std::unexpected(ok.error());
  }
  if (auto ok = first_failure(
          {r.read("authorization_response_iss_parameter_supported",
                  m.authorization_response_iss_parameter_supported),
           r.read("client_id_metadata_document_supported", m.client_id_metadata_document_supported),
           r.read("authorization_servers", m.authorization_servers),
           r.read("resource_scopes", m.resource_scopes), r.read("at", m.at)});
      !ok) {
    return std::unexpected(ok.error());
  }
  m.other = r.rest();
  return m;
}

// --- writing -----------------------------------------------------------------

void put_string(Json& out, std::string_view key, const std::string& value) {
  if (!value.empty()) out[std::string(key)] = value;
}

template <class T>
void put_optional(Json& out, std::string_view key, const std::optional<T>& value) {
  if (value) out[std::string(key)] = *value;
}

void put_list(Json& out, std::string_view key, const std::vector<std::string>& value) {
  if (!value.empty()) out[std::string(key)] = value;
}

// Known keys over what `other` holds: a known key is always written from
// its field.
Json start_with(const Json& other) {
  return other.is_object() ? other : Json::object();
}

}  // namespace

std::string_view to_string(PkceMode m) noexcept {
  return name_of(k_pkce_modes, m);
}

Result<PkceMode> parse_pkce_mode(std::string_view s) {
  if (auto m = value_of(k_pkce_modes, s)) return *m;
  return fail(Errc::invalid_argument, "pkce must be \"S256\", \"required\" or \"off\"");
}

std::string_view to_string(ClientAuthMethod m) noexcept {
  return name_of(k_auth_methods, m);
}

Result<ClientAuthMethod> parse_client_auth_method(std::string_view s) {
  if (auto m = value_of(k_auth_methods, s)) return *m;
  return fail(Errc::invalid_argument,
              "token_endpoint_auth must be client_secret_basic, client_secret_post or none");
}

std::string* string_setting(ProfileConfig& config, std::string_view key) {
  for (const auto& [name, member] : k_string_settings) {
    if (name == key) return &(config.*member);
  }
  return nullptr;
}

Result<ProfileConfig> parse_profile_config(const Json& stored) {
  if (!stored.is_object())
    return fail(Errc::invalid_argument, "the settings must be a JSON object");
  ObjectReader r(stored, "");
  ProfileConfig c;
  for (const auto& [key, member] : k_string_settings) {
    if (auto ok = r.read(key, c.*member); !ok) return std::unexpected(ok.error());
  }
  if (auto ok = first_failure({r.read("client_registered_for", c.client_registered_for),
                               r.read("refresh_buffer", c.refresh_buffer),
                               r.read("reuse_window", c.reuse_window), r.read("scopes", c.scopes),
                               r.read("step_up_scopes", c.step_up_scopes),
                               r.read("authorize_params", c.authorize_params),
                               r.read("client_registered", c.client_registered)});
      !ok) {
    return std::unexpected(ok.error());
  }

  auto pkce = r.read_enum("pkce", k_pkce_modes);
  if (!pkce) return std::unexpected(pkce.error());
  c.pkce = *pkce;

  if (const Json* v = r.take("token_endpoint_auth")) {
    if (!v->is_string()) return std::unexpected(wrong_shape("token_endpoint_auth", "a string"));
    // Lenient on purpose (see the header): a registration's answer was once
    // stored as it came, and anything but post or none was sent as Basic.
    c.token_endpoint_auth = value_of(k_auth_methods, v->get_ref<const std::string&>())
                                .value_or(ClientAuthMethod::client_secret_basic);
  }

  if (const Json* v = r.take("sinks")) {
    if (!v->is_array()) return std::unexpected(wrong_shape("sinks", "a list of sinks"));
    std::vector<Sink> sinks;
    for (std::size_t i = 0; i < v->size(); ++i) {
      auto s = read_sink((*v)[i], i);
      if (!s) return std::unexpected(s.error());
      sinks.push_back(std::move(*s));
    }
    c.sinks = std::move(sinks);
  }
  if (const Json* v = r.take("policy")) {
    auto p = read_policy(*v);
    if (!p) return std::unexpected(p.error());
    c.policy = std::move(*p);
  }
  if (const Json* v = r.take("discovered")) {
    auto m = read_metadata(*v);
    if (!m) return std::unexpected(m.error());
    c.discovered = std::move(*m);
  }
  c.other = r.rest();
  return c;
}

void to_json(Json& out, const Sink& s) {
  out = start_with(s.other);
  out["type"] = name_of(k_sink_types, s.type);
  out["path"] = s.path;
  if (s.type == Sink::Type::file) {
    out["format"] = name_of(k_sink_formats, s.format);
  } else {
    out["variable"] = s.variable;
  }
}

void to_json(Json& out, const ProxyPolicy& p) {
  out = start_with(p.other);
  put_optional(out, "read_only", p.read_only);
  put_optional(out, "allow", p.allow);
  put_optional(out, "deny", p.deny);
  if (p.rate_per_minute) {
    // 60 was stored as 60, not 60.0: a whole number goes back as an integer.
    const double rate = *p.rate_per_minute;
    const bool whole = std::trunc(rate) == rate && std::abs(rate) < 9.0e15;
    out["rate_per_minute"] = whole ? Json(static_cast<std::int64_t>(rate)) : Json(rate);
  }
}

void to_json(Json& out, const ProviderMetadata& m) {
  out = start_with(m.other);
  for (const auto& [key, member] : k_metadata_strings) put_string(out, key, m.*member);
  for (const auto& [key, member] : k_metadata_lists) put_optional(out, key, m.*member);
  if (m.authorization_response_iss_parameter_supported)
    out["authorization_response_iss_parameter_supported"] = true;
  if (m.client_id_metadata_document_supported) out["client_id_metadata_document_supported"] = true;
  put_list(out, "authorization_servers", m.authorization_servers);
  put_list(out, "resource_scopes", m.resource_scopes);
  put_optional(out, "at", m.at);
}

void to_json(Json& out, const ProfileConfig& c) {
  out = start_with(c.other);
  for (const auto& [key, member] : k_string_settings) put_string(out, key, c.*member);
  put_optional(out, "client_registered_for", c.client_registered_for);
  put_optional(out, "refresh_buffer", c.refresh_buffer);
  put_optional(out, "reuse_window", c.reuse_window);
  put_optional(out, "scopes", c.scopes);
  put_list(out, "step_up_scopes", c.step_up_scopes);
  put_optional(out, "authorize_params", c.authorize_params);
  if (c.client_registered) out["client_registered"] = true;
  if (c.pkce) out["pkce"] = to_string(*c.pkce);
  if (c.token_endpoint_auth) out["token_endpoint_auth"] = to_string(*c.token_endpoint_auth);
  put_optional(out, "sinks", c.sinks);
  put_optional(out, "policy", c.policy);
  put_optional(out, "discovered", c.discovered);
}

std::string config_column(const ProfileConfig& config) {
  return Json(config).dump();
}

Result<ProfileConfig> read_config_column(std::string_view text, std::string_view profile) {
  auto stored = json::parse(text, "stored profile config");
  if (!stored) return std::unexpected(Error{Errc::corrupt, stored.error().message});
  auto config = parse_profile_config(*stored);
  if (!config) {
    return fail(Errc::corrupt, fmt::format("profile '{}': the stored config cannot be read: {}",
                                           profile, config.error().message));
  }
  return config;
}

}  // namespace tokend::store

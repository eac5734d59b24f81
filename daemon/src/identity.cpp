#include "daemon/identity.hpp"

#include <fmt/format.h>
#include <openssl/evp.h>

#include <algorithm>

#include "core/encoding.hpp"
#include "daemon/oidc.hpp"
#include "store/pg_store.hpp"

namespace tokend::daemon {

namespace {

bool valid_service_name(std::string_view name) {
  return !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

// Every value of a header (a repeated header is a request to refuse).
std::vector<std::string_view> header_values(const ipc::Request& req, std::string_view name) {
  std::vector<std::string_view> out;
  for (const auto& [k, v] : req.headers) {
    if (ascii_iequals(k, name)) out.emplace_back(v);
  }
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::unexpected<Refusal> refuse(int status, std::string code, std::string message,
                                std::string user = {}, std::string service = {}) {
  return std::unexpected(
      Refusal{status, std::move(code), std::move(message), std::move(user), std::move(service)});
}

std::expected<Caller, Refusal> act_as(const ServicePolicy& s,
                                      const std::vector<std::string_view>& act_as_values);

// The user a header names, checked as the store checks it.
std::expected<std::string, Refusal> user_from(std::string_view value, std::string_view header,
                                              std::string_view service) {
  if (auto ok = store::check_user_id(value); !ok) {
    return refuse(
        401, "invalid_user",
        fmt::format("the {} header does not hold a valid user id ({})", header, ok.error().message),
        {}, std::string(service));
  }
  return std::string(value);
}

}  // namespace

namespace {
// The digest of a service's secret, after checking its shape.
Result<SecretDigest> service_secret_digest(const std::string& name, const Secret& secret);
}  // namespace

Result<UserPattern> UserPattern::parse(std::string_view text) {
  UserPattern p;
  p.m_text = std::string(text);
  if (text == "*") {
    p.m_kind = Kind::any;
    return p;
  }
  if (text.starts_with("*@")) {
    const auto domain = text.substr(1);
    if (domain.size() < 2 || domain.find_first_of("@*", 1) != std::string_view::npos) {
      return fail(Errc::config,
                  fmt::format("act-for pattern '{}': write *@DOMAIN with a domain that holds no "
                              "'@' or '*'",
                              text));
    }
    p.m_kind = Kind::domain;
    p.m_domain = std::string(domain);
    return p;
  }
  if (text.find('*') != std::string_view::npos) {
    return fail(Errc::config,
                fmt::format("act-for pattern '{}': '*' may only stand alone (every user) or "
                            "begin *@DOMAIN",
                            text));
  }
  if (auto ok = store::check_user_id(text); !ok) {
    return fail(Errc::config,
                fmt::format("act-for: '{}' is not a user id: {}", text, ok.error().message));
  }
  return p;
}

bool UserPattern::matches(std::string_view user) const {
  switch (m_kind) {
    case Kind::any:
      return true;
    case Kind::exact:
      return user == m_text;
    case Kind::domain: {
      if (!user.ends_with(m_domain)) return false;
      const auto local = user.substr(0, user.size() - m_domain.size());
      return !local.empty() && local.find('@') == std::string_view::npos;
    }
  }
  return false;
}

SecretDigest secret_digest(std::string_view secret) {
  SecretDigest out{};
  unsigned int size = 0;
  if (EVP_Digest(secret.data(), secret.size(), out.data(), &size, EVP_sha256(), nullptr) != 1 ||
      size != out.size()) {
    // Never a usable digest: matches no presented secret's.
    out.fill(0);
  }
  return out;
}

bool ServicePolicy::may_act_for(std::string_view user) const {
  return std::any_of(act_for.begin(), act_for.end(),
                     [&](const UserPattern& p) { return p.matches(user); });
}

Result<ServicePolicy> make_service_policy(std::string name, const Secret& secret,
                                          const std::vector<std::string>& act_for) {
  return make_service_policy(std::move(name), &secret, {}, act_for);
}

Result<ServicePolicy> make_service_policy(std::string name, const Secret* secret,
                                          std::string_view cert_subject,
                                          const std::vector<std::string>& act_for) {
  if (!valid_service_name(name)) {
    return fail(Errc::config, fmt::format("service '{}': a service name is 1-64 of "
                                          "[A-Za-z0-9._-]",
                                          name.substr(0, 64)));
  }
  if (secret == nullptr && cert_subject.empty()) {
    return fail(Errc::config,
                fmt::format("service '{}' needs secret-file or cert-subject (or both)", name));
  }
  if (std::any_of(cert_subject.begin(), cert_subject.end(),
                  [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; }) ||
      cert_subject.size() > 1024) {
    return fail(Errc::config,
                fmt::format("service '{}': cert-subject is a certificate's CN or subject "
                            "alternative name (at most 1024 bytes, no control characters)",
                            name));
  }
  ServicePolicy p;
  p.cert_subject = std::string(cert_subject);
  if (secret != nullptr) {
    auto digest = service_secret_digest(name, *secret);
    if (!digest) return std::unexpected(digest.error());
    p.has_secret = true;
    p.secret_digest = *digest;
  }
  if (act_for.empty()) {
    return fail(Errc::config, fmt::format("service '{}': act-for is empty; list the users it may "
                                          "act for (user ids, *@DOMAIN or *)",
                                          name));
  }
  p.name = std::move(name);
  for (const auto& text : act_for) {
    auto pattern = UserPattern::parse(text);
    if (!pattern) return std::unexpected(pattern.error().context("service '" + p.name + "'"));
    p.act_for.push_back(std::move(*pattern));
  }
  return p;
}

namespace {
Result<SecretDigest> service_secret_digest(const std::string& name, const Secret& secret) {
  std::string_view bytes = secret.reveal();
  bytes = trim(bytes);
  while (!bytes.empty() && (bytes.back() == '\n' || bytes.back() == '\r')) bytes.remove_suffix(1);
  if (bytes.size() < k_min_service_secret_bytes) {
    return fail(Errc::config,
                fmt::format("service '{}': its secret is {} bytes; use at least {} (e.g. "
                            "openssl rand -hex 32)",
                            name, bytes.size(), k_min_service_secret_bytes));
  }
  if (std::any_of(bytes.begin(), bytes.end(),
                  [](char c) { return c == '\n' || c == '\r' || c == ' ' || c == '\t'; })) {
    return fail(
        Errc::config,
        fmt::format("service '{}': its secret file must hold one line without spaces", name));
  }
  return secret_digest(bytes);
}
}  // namespace

Result<> check_identity_config(const IdentityConfig& config) {
  if (config.user_header.empty() ||
      std::any_of(config.user_header.begin(), config.user_header.end(), [](char c) {
        return !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '_');
      })) {
    return fail(Errc::config,
                fmt::format("user-header '{}': a header name is letters, digits, '-' and '_'",
                            config.user_header.substr(0, 64)));
  }
  if (ascii_iequals(config.user_header, "authorization") ||
      ascii_iequals(config.user_header, k_act_as_header)) {
    return fail(Errc::config, fmt::format("user-header may not be {}", config.user_header));
  }
  for (std::size_t i = 0; i < config.services.size(); ++i) {
    for (std::size_t j = i + 1; j < config.services.size(); ++j) {
      const auto& a = config.services[i];
      const auto& b = config.services[j];
      if (a.name == b.name) {
        return fail(Errc::config, fmt::format("service '{}' is configured twice", a.name));
      }
      if (!a.cert_subject.empty() && a.cert_subject == b.cert_subject) {
        return fail(Errc::config,
                    fmt::format("services '{}' and '{}' have the same cert-subject; give each "
                                "service its own certificate",
                                a.name, b.name));
      }
      if (a.has_secret && b.has_secret && a.secret_digest == b.secret_digest) {
        return fail(Errc::config, fmt::format("services '{}' and '{}' have the same secret; give "
                                              "each service its own",
                                              a.name, b.name));
      }
    }
  }
  return {};
}

std::expected<Caller, Refusal> identify(const IdentityConfig& config, const ipc::Request& request,
                                        uid_t peer_uid) {
  ipc::Peer peer;
  peer.uid = peer_uid;
  return identify(config, request, peer);
}

std::expected<Caller, Refusal> identify(const IdentityConfig& config, const ipc::Request& request,
                                        const ipc::Peer& peer, const SessionCookie& session) {
  const uid_t peer_uid = peer.uid;
  const auto user_values = header_values(request, config.user_header);
  const auto act_as_values = header_values(request, k_act_as_header);
  const auto auth_values = header_values(request, "authorization");

  // The trusted proxy's header: only from its uid on the Unix socket, never
  // ignored.
  if (!user_values.empty()) {
    if (peer.tls) {
      return refuse(403, "untrusted_user_header",
                    fmt::format("the {} header is accepted only on the Unix socket from the "
                                "trusted proxy (trusted-proxy-uid), never over TLS",
                                config.user_header));
    }
    if (config.trusted_proxy_uids.count(peer_uid) == 0) {
      return refuse(403, "untrusted_user_header",
                    fmt::format("the {} header is accepted only from the trusted proxy "
                                "(trusted-proxy-uid), and uid {} is not one; a service "
                                "authenticates with Authorization: Bearer and names the user in "
                                "{}",
                                config.user_header, peer_uid, k_act_as_header));
    }
    if (user_values.size() > 1 || !act_as_values.empty() || !auth_values.empty()) {
      return refuse(403, "ambiguous_identity",
                    fmt::format("a request through the trusted proxy names its user in one {} "
                                "header, with neither Authorization nor {}",
                                config.user_header, k_act_as_header));
    }
    auto user = user_from(user_values.front(), config.user_header, {});
    if (!user) return std::unexpected(user.error());
    return Caller{std::move(*user), {}};
  }

  // A person signed in with OIDC: the session cookie, over TLS only.
  if (peer.tls && session.present) {
    if (!auth_values.empty() || !act_as_values.empty()) {
      return refuse(403, "ambiguous_identity",
                    fmt::format("a request signed in by session cookie carries neither "
                                "Authorization nor {}",
                                k_act_as_header));
    }
    if (session.user.empty()) {
      return refuse(401, "session_expired",
                    fmt::format("the session has ended or is unknown; sign in again at "
                                "{}/auth/login",
                                session.public_url));
    }
    if (state_changing(request.method) &&
        !same_origin(request.header("Origin").value_or(""), session.public_url)) {
      return refuse(403, "cross_origin",
                    fmt::format("a request signed in by cookie that changes something must come "
                                "from tokend's own pages: its Origin must be {}",
                                session.public_url),
                    session.user);
    }
    return Caller{session.user, {}};
  }

  // A service: its certificate or its secret, then the user it names.
  const ServicePolicy* by_cert = nullptr;
  if (peer.tls) {
    for (const auto& s : config.services) {
      if (s.cert_subject.empty()) continue;
      if (std::find(peer.client_cert_names.begin(), peer.client_cert_names.end(), s.cert_subject) ==
          peer.client_cert_names.end()) {
        continue;
      }
      if (by_cert != nullptr) {
        return refuse(403, "ambiguous_identity",
                      fmt::format("the client certificate names services '{}' and '{}'; give "
                                  "each service a certificate of its own",
                                  by_cert->name, s.name));
      }
      by_cert = &s;
    }
  }
  if (by_cert != nullptr && auth_values.empty()) return act_as(*by_cert, act_as_values);
  if (auth_values.empty()) {
    if (!act_as_values.empty()) {
      return refuse(401, "unauthenticated",
                    fmt::format("{} is for services: authenticate with Authorization: Bearer and "
                                "the service's secret",
                                k_act_as_header));
    }
    if (peer.tls) {
      return refuse(401, "unauthenticated",
                    fmt::format("tokend runs in server mode: every request acts for one user; "
                                "over TLS a service authenticates with its client certificate "
                                "(cert-subject) or Authorization: Bearer SECRET, and names the "
                                "user in {}",
                                k_act_as_header));
    }
    return refuse(401, "unauthenticated",
                  fmt::format("tokend runs in server mode: every request acts for one user, "
                              "named by the trusted proxy's {} header or by a service "
                              "(Authorization: Bearer SECRET and {})",
                              config.user_header, k_act_as_header));
  }
  if (auth_values.size() > 1) {
    return refuse(401, "unauthenticated", "send one Authorization header");
  }
  std::string_view auth = trim(auth_values.front());
  if (auth.size() < 7 || !ascii_iequals(auth.substr(0, 7), "bearer ")) {
    return refuse(401, "unauthenticated",
                  "Authorization must be 'Bearer' and the service's secret");
  }
  const std::string_view presented = trim(auth.substr(7));
  const SecretDigest digest = secret_digest(presented);
  const ServicePolicy* service = nullptr;
  // Every service is compared, whichever matches.
  for (const auto& s : config.services) {
    const std::string_view a(reinterpret_cast<const char*>(s.secret_digest.data()),
                             s.secret_digest.size());
    const std::string_view b(reinterpret_cast<const char*>(digest.data()), digest.size());
    if (constant_time_equal(a, b) && !presented.empty() && s.has_secret) service = &s;
  }
  if (service == nullptr) {
    return refuse(401, "unauthenticated", "the bearer secret is not a configured service's");
  }
  if (by_cert != nullptr && by_cert != service) {
    return refuse(403, "ambiguous_identity",
                  fmt::format("the client certificate is service '{}''s and the bearer secret "
                              "service '{}''s; authenticate as one service",
                              by_cert->name, service->name),
                  {}, service->name);
  }
  return act_as(*service, act_as_values);
}

namespace {

// A service is established: the user it names, if its policy allows.
std::expected<Caller, Refusal> act_as(const ServicePolicy& s,
                                      const std::vector<std::string_view>& act_as_values) {
  const ServicePolicy* service = &s;
  if (act_as_values.empty()) {
    return refuse(401, "act_as_required",
                  fmt::format("service '{}': name the user the request acts for in {}",
                              service->name, k_act_as_header),
                  {}, service->name);
  }
  if (act_as_values.size() > 1) {
    return refuse(403, "ambiguous_identity", fmt::format("send one {} header", k_act_as_header), {},
                  service->name);
  }
  auto user = user_from(act_as_values.front(), k_act_as_header, service->name);
  if (!user) return std::unexpected(user.error());
  if (!service->may_act_for(*user)) {
    return refuse(403, "act_as_denied",
                  fmt::format("service '{}' may not act for user '{}' (its act-for setting)",
                              service->name, *user),
                  *user, service->name);
  }
  return Caller{std::move(*user), service->name};
}

}  // namespace

}  // namespace tokend::daemon

// Server mode: who a request acts for (docs/server-mode.md, "Identity").
//
// Every request acts for exactly one user, established in one of these ways:
//   - the trusted authenticating reverse proxy names the user in its user
//     header (X-Forwarded-User unless configured otherwise); the header is
//     taken only on the Unix socket from peers whose uid is a trusted
//     proxy's, and from any other peer (any TLS peer too) the request is
//     refused, not the header ignored;
//   - a service (an MCP server acting for its users) authenticates as
//     itself, by its secret (`Authorization: Bearer SECRET`) or, over TLS,
//     by a client certificate that names its cert-subject, and names the
//     user in X-Tokend-Act-As; its policy lists the users it may act for;
//   - over TLS, a person signed in with OIDC presents the session cookie;
//     a request that changes something must then come from public-url
//     (Origin), so another site cannot make the browser send it.
// Anything else is refused with 401 (no identity established) or 403 (an
// identity that may not be used), never answered for some default user.
//
// identify() is a pure decision over the request's headers and the peer's
// uid; the caller answers a Refusal and writes its audit line.
#pragma once

#include <sys/types.h>

#include <array>
#include <expected>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.hpp"
#include "core/secret.hpp"
#include "ipc/http.hpp"

namespace tokend::daemon {

inline constexpr std::string_view k_default_user_header = "X-Forwarded-User";
inline constexpr std::string_view k_act_as_header = "X-Tokend-Act-As";

// A service secret is at least this long (openssl rand -hex 32 gives 64).
inline constexpr std::size_t k_min_service_secret_bytes = 32;

// Users a service may act for: an exact user id; "*", every user; or
// "*@DOMAIN", every user id LOCAL@DOMAIN whose LOCAL part is not empty and
// holds no '@' (so "*@example.com" does not match "x@evil.org@example.com").
class UserPattern {
 public:
  static Result<UserPattern> parse(std::string_view text);
  [[nodiscard]] bool matches(std::string_view user) const;
  [[nodiscard]] const std::string& text() const { return m_text; }

 private:
  enum class Kind { exact, any, domain };
  Kind m_kind = Kind::exact;
  std::string m_text;
  std::string m_domain;  // "@example.com" for Kind::domain
};

using SecretDigest = std::array<unsigned char, 32>;

// SHA-256 of a service secret: only the digest is kept in memory, and a
// presented secret is compared by its digest in constant time.
SecretDigest secret_digest(std::string_view secret);

struct ServicePolicy {
  std::string name;  // [A-Za-z0-9._-], 1-64
  bool has_secret = false;
  SecretDigest secret_digest{};
  // A verified client certificate is this service's when its subject CN or
  // one of its DNS, email or URI subject alternative names equals this,
  // byte for byte (empty: the service has no certificate).
  std::string cert_subject;
  std::vector<UserPattern> act_for;
  // Requests a minute this service may make, over all its users (its
  // `rate-limit`; nullopt: service-rate-limit; 0: no limit).
  std::optional<std::size_t> rate_limit;

  [[nodiscard]] bool may_act_for(std::string_view user) const;
};

// A service from its configured parts: the secret (read from its file), the
// patterns. Errors name the service and what to change, never the secret.
Result<ServicePolicy> make_service_policy(std::string name, const Secret& secret,
                                          const std::vector<std::string>& act_for);
// A service by its secret (null: none), its certificate's subject (empty:
// none), or both; at least one.
Result<ServicePolicy> make_service_policy(std::string name, const Secret* secret,
                                          std::string_view cert_subject,
                                          const std::vector<std::string>& act_for);

struct IdentityConfig {
  std::string user_header = std::string(k_default_user_header);
  std::set<uid_t> trusted_proxy_uids;
  std::vector<ServicePolicy> services;
};

// Checks a configuration as a whole: service names, secrets and
// certificate subjects unique.
Result<> check_identity_config(const IdentityConfig& config);

// Who a request acts for.
struct Caller {
  std::string user;
  std::string service;  // empty: the user came through the trusted proxy
};

// Why a request is refused. `user` and `service` are what could be
// established (for the audit line); `user` only when it is a valid id.
struct Refusal {
  int status = 401;
  std::string code;
  std::string message;
  std::string user;
  std::string service;
};

// A session cookie (server mode's OIDC sign-in), as the caller resolved it
// against the database: present, and whose (empty: unknown or expired).
struct SessionCookie {
  bool present = false;
  std::string user;
  std::string public_url;  // the origin a state-changing request must come from
};

// `peer`: the connection's uid (Unix socket) or, on the TLS listener, its
// verified client certificate's names; `session`: the request's session
// cookie, taken over TLS only.
std::expected<Caller, Refusal> identify(const IdentityConfig& config, const ipc::Request& request,
                                        const ipc::Peer& peer, const SessionCookie& session = {});
// A peer on the Unix socket.
std::expected<Caller, Refusal> identify(const IdentityConfig& config, const ipc::Request& request,
                                        uid_t peer_uid);

}  // namespace tokend::daemon

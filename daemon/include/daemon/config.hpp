// tokend's configuration: command-line flags, then environment variables,
// then the INI config file, then built-in defaults (first found wins).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.hpp"
#include "core/log.hpp"
#include "core/paths.hpp"
#include "daemon/connect.hpp"
#include "daemon/identity.hpp"
#include "daemon/oidc.hpp"
#include "ipc/server.hpp"
#include "ipc/tls.hpp"
#include "store/kek.hpp"
#include "store/types.hpp"

namespace tokend::daemon {

// Server mode (--server; docs/server-mode.md): many users on PostgreSQL.
struct ServerSettings {
  bool enabled = false;
  // A file (0600, ours) holding the libpq connection string or URI: it may
  // hold a password, so it is read only when the database is opened.
  std::filesystem::path database_url_file;
  store::KekOptions kek;  // kek-file and kek-id; empty: the other sources
  // The trusted proxy's user header and uids, and the services with their
  // secrets (read from their files, kept as digests) and policies.
  IdentityConfig identity;
  // Requests a minute one user may make (a token bucket holding a minute's
  // worth, so bursts up to it pass); 0: no limit.
  std::size_t user_rate_limit = 6000;
  // Requests a minute a service may make over all its users, unless its
  // [service.NAME] rate-limit says otherwise; 0: no limit (daemon/budget.hpp).
  std::size_t service_rate_limit = 0;
  // public-url and the [provider.NAME] templates of the connect page.
  ConnectSettings connect;
  // TLS listeners (`listen = HOST:PORT`, repeatable), their certificate and
  // key, and the CA that signs services' client certificates.
  struct ListenAddress {
    std::string host;  // an IPv4 or IPv6 address, without brackets
    std::uint16_t port = 0;
  };
  std::vector<ListenAddress> listen;
  ipc::TlsFiles tls;
  // People's sign-in with OIDC over the TLS listeners (off without oidc-issuer).
  OidcSettings oidc;
};

// "HOST:PORT" or "[V6]:PORT", checked.
Result<ServerSettings::ListenAddress> parse_listen_address(std::string_view text);

struct Config {
  Paths paths;
  ServerSettings server;
  log::Options log;
  ipc::ServerLimits limits;
  std::set<uid_t> allowed_uids;                 // besides our own
  std::chrono::milliseconds heartbeat{15'000};  // event stream keep-alive comments
  std::chrono::milliseconds drain_timeout{10'000};
  // Refreshing.
  std::chrono::milliseconds refresh_buffer{300'000};
  std::size_t max_concurrent_refreshes = 8;
  std::chrono::milliseconds http_timeout{30'000};
  std::string ca_bundle;  // empty: the system trust store
  // Logins.
  std::chrono::milliseconds login_timeout{600'000};
  std::string notify_command;  // run on reauth_required; empty: none
  // The audit log's bound (rows and age); the oldest events go first.
  store::AuditRetention audit;
};

struct ParsedArgs {
  enum class Action { run, help, version, rotate_key };
  Action action = Action::run;
  std::string help_text;
  Config config;
  // tokend rotate-key --new-kek-file FILE [--new-kek-id ID]
  store::KekOptions new_kek;
};

// argv parsing plus env and config file. Errors are usage errors (exit 2).
Result<ParsedArgs> parse_args(int argc, const char* const* argv, const EnvLookup& env);

// "250ms", "10s", "5m", "1h", "90d" or a bare number of seconds.
Result<std::chrono::milliseconds> parse_duration(std::string_view text);

std::string_view version();

}  // namespace tokend::daemon

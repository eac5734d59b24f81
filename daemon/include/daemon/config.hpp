// tokend's configuration: command-line flags, then environment variables,
// then the INI config file, then built-in defaults (first found wins).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <set>
#include <string>

#include "core/error.hpp"
#include "core/log.hpp"
#include "core/paths.hpp"
#include "ipc/server.hpp"
#include "store/types.hpp"

namespace tokend::daemon {

struct Config {
  Paths paths;
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
  enum class Action { run, help, version };
  Action action = Action::run;
  std::string help_text;
  Config config;
};

// argv parsing plus env and config file. Errors are usage errors (exit 2).
Result<ParsedArgs> parse_args(int argc, const char* const* argv, const EnvLookup& env);

// "250ms", "10s", "5m", "1h", "90d" or a bare number of seconds.
Result<std::chrono::milliseconds> parse_duration(std::string_view text);

std::string_view version();

}  // namespace tokend::daemon

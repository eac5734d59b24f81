// Server mode (tokend --server, docs/server-mode.md): many users on one
// PostgreSQL database, each request acting for one user.
#pragma once

#include <functional>

#include "core/paths.hpp"
#include "daemon/config.hpp"

namespace tokend::daemon {

// Runs until SIGTERM/SIGINT; returns the process exit code (as run_daemon).
int run_server(const Config& config, const EnvLookup& env,
               const std::function<Result<Config>()>& reparse);

// tokend rotate-key: re-wraps every row's data key with the new KEK.
// Exit 0 done, 1 failed (nothing changed), 2 configuration.
int rotate_key_command(const ParsedArgs& args, const EnvLookup& env);

}  // namespace tokend::daemon

// The running daemon: store, token service, API server and signals on one
// libuv loop.
#pragma once

#include <functional>

#include "core/paths.hpp"
#include "daemon/config.hpp"

namespace tokend::daemon {

// Runs until SIGTERM/SIGINT; returns the process exit code. `reparse` is
// called on SIGHUP to read the configuration again.
int run_daemon(const Config& config, const EnvLookup& env,
               const std::function<Result<Config>()>& reparse);

}  // namespace tokend::daemon

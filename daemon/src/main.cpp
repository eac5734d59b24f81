// tokend: the credential daemon. Wiring lives in daemon/; this is the entry.
#include <cstdio>

#include "core/log.hpp"
#include "daemon/config.hpp"
#include "daemon/daemon.hpp"
#include "daemon/server.hpp"
#include "daemon/startup.hpp"
#include "store/kek.hpp"

int main(int argc, char** argv) {
  using namespace tokend;
  try {
    daemon::harden_process();
    // The database key and server mode's key-encryption key must not reach
    // notify-command children or stay readable in /proc/PID/environ.
    const EnvLookup env = process_env_without({"TOKEND_KEY", store::k_kek_env});
    auto parsed = daemon::parse_args(argc, argv, env);
    if (!parsed) {
      std::fprintf(stderr, "tokend: %s\n", parsed.error().message.c_str());
      return 2;
    }
    if (parsed->action == daemon::ParsedArgs::Action::help) {
      std::fputs(parsed->help_text.c_str(), stdout);
      return 0;
    }
    if (parsed->action == daemon::ParsedArgs::Action::version) {
      std::printf("tokend %s\n", std::string(daemon::version()).c_str());
      return 0;
    }
    log::setup(parsed->config.log);
    if (parsed->action == daemon::ParsedArgs::Action::rotate_key) {
      return daemon::rotate_key_command(*parsed, env);
    }
    auto reparse = [&]() -> Result<daemon::Config> {
      auto again = daemon::parse_args(argc, argv, env);
      if (!again) return std::unexpected(again.error());
      return again->config;
    };
    if (parsed->config.server.enabled) return daemon::run_server(parsed->config, env, reparse);
    return daemon::run_daemon(parsed->config, env, reparse);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tokend: fatal: %s\n", e.what());
    return 1;
  }
}

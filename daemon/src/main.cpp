// tokend: the credential daemon. Wiring only; behaviour lives in the modules.
#include <csignal>
#include <cstdio>

#include <spdlog/spdlog.h>

#include "core/clock.hpp"
#include "core/log.hpp"
#include "daemon/config.hpp"
#include "daemon/startup.hpp"
#include "net/loop.hpp"

namespace {

int run(int argc, char** argv) {
  using namespace tokend;
  daemon::harden_process();
  const EnvLookup env = process_env();

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
  const daemon::Config& config = parsed->config;
  log::setup(config.log);

  SystemClock clock;
  auto store = daemon::open_store(config.paths, env, clock);
  if (!store) {
    spdlog::critical("{}", store.error().message);
    return 1;
  }

  net::Loop loop;
  int exit_code = 0;
  {
    auto sigterm = net::Signal::create(loop);
    auto sigint = net::Signal::create(loop);
    if (!sigterm || !sigint) {
      spdlog::critical("cannot install signal handlers");
      return 1;
    }
    auto stop = [&](int sig) {
      spdlog::info("received {}, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
      sigterm->close();
      sigint->close();
    };
    (void)sigterm->start(SIGTERM, stop);
    (void)sigint->start(SIGINT, stop);

    spdlog::info("tokend {} ready: database {} (schema {}), socket {}", daemon::version(),
                 config.paths.database.string(), store->schema_version(),
                 config.paths.socket.string());
    loop.run();
  }
  if (const int rc = loop.close(); rc != 0) {
    spdlog::error("event loop closed with handles still open ({})", rc);
    exit_code = 1;
  }
  spdlog::info("tokend stopped");
  return exit_code;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tokend: fatal: %s\n", e.what());
    return 1;
  }
}

// tokend's configuration: command-line flags, then environment variables,
// then the INI config file, then built-in defaults (first found wins).
#pragma once

#include <optional>
#include <string>

#include "core/error.hpp"
#include "core/log.hpp"
#include "core/paths.hpp"

namespace tokend::daemon {

struct Config {
  Paths paths;
  log::Options log;
};

struct ParsedArgs {
  enum class Action { run, help, version };
  Action action = Action::run;
  std::string help_text;
  Config config;
};

// argv parsing plus env and config file. Errors are usage errors (exit 2).
Result<ParsedArgs> parse_args(int argc, const char* const* argv, const EnvLookup& env);

std::string_view version();

}  // namespace tokend::daemon

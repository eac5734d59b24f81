#include "daemon/config.hpp"

#include <filesystem>
#include <fstream>
#include <sstream>

#include <boost/program_options.hpp>
#include <fmt/format.h>

namespace tokend::daemon {

namespace po = boost::program_options;

std::string_view version() { return TOKEND_VERSION; }

namespace {

// Flags that may also come from the environment and the config file.
struct Setting {
  const char* name;      // flag and INI key
  const char* env;       // environment variable
  const char* help;
};

constexpr Setting k_settings[] = {
    {"socket", "TOKEND_SOCKET", "Unix socket path"},
    {"db", "TOKEND_DB", "database file"},
    {"key-file", "TOKEND_KEY_FILE", "database key file"},
    {"log-level", "TOKEND_LOG_LEVEL", "trace|debug|info|warn|error|critical|off (default info)"},
    {"log-format", "TOKEND_LOG_FORMAT", "text|json (default text)"},
};

std::optional<std::string> lookup(const po::variables_map& vm, const char* key) {
  if (vm.count(key) == 0) return std::nullopt;
  return vm[key].as<std::string>();
}

}  // namespace

Result<ParsedArgs> parse_args(int argc, const char* const* argv, const EnvLookup& env) {
  po::options_description general("Options");
  general.add_options()("help,h", "show this help and exit")("version", "show the version and exit")(
      "config", po::value<std::string>(), "config file (INI; env TOKEND_CONFIG)");
  for (const auto& s : k_settings) {
    general.add_options()(s.name, po::value<std::string>(),
                          fmt::format("{} (env {})", s.help, s.env).c_str());
  }

  ParsedArgs out;
  po::variables_map flags;
  try {
    po::store(po::command_line_parser(argc, argv).options(general).run(), flags);
    po::notify(flags);
  } catch (const po::error& e) {
    return fail(Errc::invalid_argument, std::string(e.what()) + "; see tokend --help");
  }

  std::ostringstream help;
  help << "tokend " << version() << " — keeps OAuth credentials valid and serves them on a "
       << "Unix socket\n\nUsage: tokend [options]\n\n"
       << general
       << "\nEach setting is taken from, in order: the flag, the environment variable, the\n"
          "config file (INI, keys named like the flags, e.g. `log-level = debug`), the default.\n"
          "Defaults follow XDG: socket $XDG_RUNTIME_DIR/tokend/tokend.sock, database\n"
          "$XDG_DATA_HOME/tokend/tokens.db, key $XDG_CONFIG_HOME/tokend/db.key, config\n"
          "$XDG_CONFIG_HOME/tokend/tokend.conf.\n";
  out.help_text = help.str();
  if (flags.count("help") != 0) {
    out.action = ParsedArgs::Action::help;
    return out;
  }
  if (flags.count("version") != 0) {
    out.action = ParsedArgs::Action::version;
    return out;
  }

  PathOverrides path_flags;
  if (auto c = lookup(flags, "config")) path_flags.config = *c;
  const Paths defaults = resolve_paths(env, path_flags);

  // The config file: optional at its default place, required when named.
  po::variables_map file;
  const bool config_named = path_flags.config.has_value() || env("TOKEND_CONFIG").has_value();
  if (std::filesystem::exists(defaults.config)) {
    std::ifstream in(defaults.config);
    if (!in) {
      return fail(Errc::config, fmt::format("cannot read config file {}", defaults.config.string()));
    }
    po::options_description file_options;
    for (const auto& s : k_settings) file_options.add_options()(s.name, po::value<std::string>());
    try {
      po::store(po::parse_config_file(in, file_options, /*allow_unregistered=*/false), file);
    } catch (const po::error& e) {
      return fail(Errc::config, fmt::format("config file {}: {}", defaults.config.string(), e.what()));
    }
  } else if (config_named) {
    return fail(Errc::config, fmt::format("config file {} does not exist", defaults.config.string()));
  }

  auto setting = [&](const Setting& s) -> std::optional<std::string> {
    if (auto v = lookup(flags, s.name)) return v;
    if (auto v = env(s.env); v && !v->empty()) return v;
    return lookup(file, s.name);
  };

  PathOverrides overrides = path_flags;
  // Only values that did not come from the environment need overriding:
  // resolve_paths already reads the environment itself.
  if (auto v = lookup(flags, "socket")) overrides.socket = *v;
  else if (!env("TOKEND_SOCKET")) if (auto f = lookup(file, "socket")) overrides.socket = *f;
  if (auto v = lookup(flags, "db")) overrides.database = *v;
  else if (!env("TOKEND_DB")) if (auto f = lookup(file, "db")) overrides.database = *f;
  if (auto v = lookup(flags, "key-file")) overrides.key_file = *v;
  else if (!env("TOKEND_KEY_FILE")) if (auto f = lookup(file, "key-file")) overrides.key_file = *f;
  out.config.paths = resolve_paths(env, overrides);

  auto level = setting(k_settings[3]);
  auto format = setting(k_settings[4]);
  if (level) {
    auto l = log::parse_level(*level);
    if (!l) return std::unexpected(l.error());
    out.config.log.level = *l;
  }
  if (format) {
    auto f = log::parse_format(*format);
    if (!f) return std::unexpected(f.error());
    out.config.log.format = *f;
  }
  return out;
}

}  // namespace tokend::daemon

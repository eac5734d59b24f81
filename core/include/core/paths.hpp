// Where tokend keeps things (DESIGN §3): XDG defaults, each overridable by an
// environment variable and, above that, by a flag.
#pragma once

#include <filesystem>
#include <functional>
#include <optional>
#include <string>

namespace tokend {

// Environment lookup, injectable for tests.
using EnvLookup = std::function<std::optional<std::string>(const char*)>;
EnvLookup process_env();

struct Paths {
  std::filesystem::path socket;
  std::filesystem::path database;
  std::filesystem::path key_file;
  std::filesystem::path config;
  // True when key_file came from a flag or TOKEND_KEY_FILE rather than the
  // default location (an explicit key file must exist; the default one may be
  // generated).
  bool key_file_explicit = false;
};

struct PathOverrides {
  std::optional<std::filesystem::path> socket;
  std::optional<std::filesystem::path> database;
  std::optional<std::filesystem::path> key_file;
  std::optional<std::filesystem::path> config;
};

// flag > env (TOKEND_SOCKET, TOKEND_DB, TOKEND_KEY_FILE, TOKEND_CONFIG) > XDG
// default. Relative XDG_* values are ignored, as the XDG spec requires.
Paths resolve_paths(const EnvLookup& env, const PathOverrides& overrides = {});

// Just the socket (tokenctl needs nothing else).
std::filesystem::path resolve_socket_path(const EnvLookup& env,
                                          const std::optional<std::filesystem::path>& flag = {});

}  // namespace tokend

// Where tokend keeps things: XDG defaults, each overridable by an
// environment variable and, above that, by a flag.
#pragma once

#include <filesystem>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>

#include "core/secret.hpp"

namespace tokend {

// Environment lookup, injectable for tests.
using EnvLookup = std::function<std::optional<std::string>(const char*)>;
EnvLookup process_env();

// The process environment with the secrets named in `secret_names` (the
// daemon's TOKEND_KEY) taken out of it: each is copied into a Secret, its
// bytes are overwritten in the environment block (what /proc/PID/environ
// shows) and it is unset, so no child process inherits it. The lookup keeps
// answering those names from the copy, which is wiped when the last copy of
// the lookup goes. Call once, before any thread starts.
EnvLookup process_env_without(std::initializer_list<const char*> secret_names);

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

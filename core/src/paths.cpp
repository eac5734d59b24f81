#include "core/paths.hpp"

#include <pwd.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>

namespace tokend {

namespace stdfs = std::filesystem;

namespace {

std::optional<stdfs::path> absolute_env(const EnvLookup& env, const char* name) {
  auto v = env(name);
  if (!v || v->empty()) return std::nullopt;
  stdfs::path p(*v);
  if (!p.is_absolute()) return std::nullopt;  // XDG: relative values are invalid
  return p;
}

stdfs::path home_dir(const EnvLookup& env) {
  if (auto h = env("HOME"); h && !h->empty()) return *h;
  if (const passwd* pw = ::getpwuid(::getuid()); pw != nullptr && pw->pw_dir != nullptr) {
    return pw->pw_dir;
  }
  return "/";
}

std::optional<stdfs::path> env_path(const EnvLookup& env, const char* name) {
  auto v = env(name);
  if (!v || v->empty()) return std::nullopt;
  return stdfs::path(*v);
}

#ifdef __APPLE__
stdfs::path app_support(const EnvLookup& env) {
  return home_dir(env) / "Library" / "Application Support" / "tokend";
}
#endif

}  // namespace

EnvLookup process_env() {
  return [](const char* name) -> std::optional<std::string> {
    const char* v = std::getenv(name);
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
}

EnvLookup process_env_without(std::initializer_list<const char*> secret_names) {
  auto taken = std::make_shared<std::map<std::string, Secret, std::less<>>>();
  for (const char* name : secret_names) {
    char* v = std::getenv(name);
    if (v == nullptr) continue;
    taken->emplace(name, Secret(std::string_view(v)));
    // getenv points into the environment block itself: wipe it there
    // before unsetenv drops the pointer (unsetenv alone leaves the bytes).
    secure_wipe(v, std::strlen(v));
    ::unsetenv(name);
  }
  return [taken](const char* name) -> std::optional<std::string> {
    if (auto it = taken->find(std::string_view(name)); it != taken->end())
      return std::string(it->second.reveal());
    const char* v = std::getenv(name);
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
}

stdfs::path resolve_socket_path(const EnvLookup& env, const std::optional<stdfs::path>& flag) {
  if (flag) return *flag;
  if (auto p = env_path(env, "TOKEND_SOCKET")) return *p;
#ifdef __APPLE__
  if (auto t = absolute_env(env, "TMPDIR")) return *t / "tokend" / "tokend.sock";
#endif
  if (auto r = absolute_env(env, "XDG_RUNTIME_DIR")) return *r / "tokend" / "tokend.sock";
  return stdfs::path("/tmp") / ("tokend-" + std::to_string(::getuid())) / "tokend.sock";
}

Paths resolve_paths(const EnvLookup& env, const PathOverrides& overrides) {
  Paths p;
  p.socket = resolve_socket_path(env, overrides.socket);

#ifdef __APPLE__
  const stdfs::path data_dir = app_support(env);
  const stdfs::path config_dir = app_support(env);
#else
  const stdfs::path data_dir =
      absolute_env(env, "XDG_DATA_HOME").value_or(home_dir(env) / ".local" / "share") / "tokend";
  const stdfs::path config_dir =
      absolute_env(env, "XDG_CONFIG_HOME").value_or(home_dir(env) / ".config") / "tokend";
#endif

  if (overrides.database) {
    p.database = *overrides.database;
  } else {
    p.database = env_path(env, "TOKEND_DB").value_or(data_dir / "tokens.db");
  }

  if (overrides.key_file) {
    p.key_file = *overrides.key_file;
    p.key_file_explicit = true;
  } else if (auto k = env_path(env, "TOKEND_KEY_FILE")) {
    p.key_file = *k;
    p.key_file_explicit = true;
  } else {
    p.key_file = config_dir / "db.key";
  }

  if (overrides.config) {
    p.config = *overrides.config;
  } else {
    p.config = env_path(env, "TOKEND_CONFIG").value_or(config_dir / "tokend.conf");
  }
  return p;
}

}  // namespace tokend

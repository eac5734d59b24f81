#include "ctl/browser.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <cerrno>

extern char** environ;  // NOLINT: POSIX declares it only for _GNU_SOURCE/_DARWIN_C_SOURCE

namespace tokend::ctl {

std::optional<std::string> url_opener(const EnvLookup& env) {
  if (auto b = env("BROWSER"); b && !b->empty()) return b;
#ifdef __APPLE__
  return std::string("open");
#else
  const auto set = [&](const char* name) {
    auto v = env(name);
    return v && !v->empty();
  };
  if (!set("DISPLAY") && !set("WAYLAND_DISPLAY")) return std::nullopt;
  return std::string("xdg-open");
#endif
}

Result<BackgroundProcess> BackgroundProcess::start(const std::string& program,
                                                   const std::string& arg) {
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  if (posix_spawn_file_actions_init(&actions) != 0)
    return fail(Errc::unavailable, "cannot start a process");
  if (posix_spawnattr_init(&attr) != 0) {
    posix_spawn_file_actions_destroy(&actions);
    return fail(Errc::unavailable, "cannot start a process");
  }
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  // Its own process group, an empty signal mask and default dispositions:
  // the browser must outlive a Ctrl-C that cancels the login.
  sigset_t none;
  sigemptyset(&none);
  sigset_t defaults;
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGINT);
  sigaddset(&defaults, SIGTERM);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(
      &attr,
      static_cast<short>(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF));
  std::string prog = program;
  std::string a = arg;
  char* argv[] = {prog.data(), a.data(), nullptr};
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, prog.c_str(), &actions, &attr, argv, environ);
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0)
    return fail(Errc::unavailable, fmt::format("cannot run {}: {}", program, errno_text(rc)));
  return BackgroundProcess(pid);
}

std::optional<int> BackgroundProcess::reap() noexcept {
  if (m_pid <= 0) return std::nullopt;
  int status = 0;
  pid_t r = 0;
  do {
    r = ::waitpid(m_pid, &status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == 0) return std::nullopt;
  m_pid = -1;
  if (r < 0) return std::nullopt;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace tokend::ctl

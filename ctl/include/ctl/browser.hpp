// Opening a URL in the user's browser (tokenctl login).
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>

#include "core/error.hpp"
#include "core/paths.hpp"

namespace tokend::ctl {

// The program that opens a URL: $BROWSER when set (run as `$BROWSER URL`, no
// shell, so the whole value is one program name), else open on macOS and
// xdg-open elsewhere. nullopt on Linux/BSD with neither $BROWSER, DISPLAY nor
// WAYLAND_DISPLAY (an ssh session): xdg-open would pick a text browser there,
// which cannot work without the terminal.
std::optional<std::string> url_opener(const EnvLookup& env);

// `program ARG` started in the background: in its own process group (Ctrl-C
// in the terminal does not reach the browser), stdin, stdout and stderr on
// /dev/null. tokenctl never waits for it; reap() collects it once it is done,
// and one still running at exit is left to init.
class BackgroundProcess {
 public:
  // Errc::unavailable when the program cannot be started (not found, ...).
  static Result<BackgroundProcess> start(const std::string& program, const std::string& arg);
  BackgroundProcess(BackgroundProcess&& o) noexcept : m_pid(o.m_pid) { o.m_pid = -1; }
  BackgroundProcess& operator=(BackgroundProcess&&) = delete;
  BackgroundProcess(const BackgroundProcess&) = delete;
  BackgroundProcess& operator=(const BackgroundProcess&) = delete;
  ~BackgroundProcess() { reap(); }

  // Non-blocking. The exit status once the program has ended (then only
  // once), else nullopt; -1 when it was killed by a signal.
  std::optional<int> reap() noexcept;

 private:
  explicit BackgroundProcess(pid_t pid) : m_pid(pid) {}
  pid_t m_pid;
};

}  // namespace tokend::ctl

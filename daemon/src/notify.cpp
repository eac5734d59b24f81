#include "notify.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <string_view>
#include <vector>

extern char** environ;

namespace tokend::daemon {

namespace {

constexpr std::size_t k_max_running = 4;

bool passes_to_notify_command(std::string_view name) {
  static constexpr std::string_view k_names[] = {"PATH",
                                                 "HOME",
                                                 "USER",
                                                 "LOGNAME",
                                                 "SHELL",
                                                 "LANG",
                                                 "LANGUAGE",
                                                 "TZ",
                                                 "TMPDIR",
                                                 "DISPLAY",
                                                 "WAYLAND_DISPLAY",
                                                 "DBUS_SESSION_BUS_ADDRESS",
                                                 "XDG_RUNTIME_DIR",
                                                 "XDG_DATA_DIRS",
                                                 "XDG_CURRENT_DESKTOP",
                                                 "XDG_SESSION_TYPE"};
  return name.starts_with("LC_") ||
         std::find(std::begin(k_names), std::end(k_names), name) != std::end(k_names);
}

}  // namespace

Notifier::Notifier(net::Loop& loop, tokens::EventBus& events, std::string command)
    : m_loop(loop), m_command(std::move(command)) {
  m_sub = events.subscribe([this](const tokens::Event& e) {
    // consent_required: an insufficient_scope answer needs a login for more scope.
    if (e.kind == tokens::EventKind::reauth_required ||
        e.kind == tokens::EventKind::consent_required)
      run(e);
  });
}

Notifier::~Notifier() {
  close();
}

void Notifier::close() {
  m_sub.reset();
  for (auto& [_, process] : m_running) (void)process.kill(SIGTERM);
  m_running.clear();  // closes the handles: their exit callbacks no longer run
}

void Notifier::run(const tokens::Event& e) {
  if (m_command.empty()) return;
  if (m_running.size() >= k_max_running) {
    spdlog::warn("notify-command not run for {}: {} still running", e.profile, m_running.size());
    return;
  }
  // Only what a desktop notifier needs passes from tokend's environment: the
  // rest may hold secrets (a TOKEND_KEY, a cloud credential in a service's
  // environment) that the command has no use for.
  std::vector<std::string> env_strings;
  for (char** v = environ; v != nullptr && *v != nullptr; ++v) {
    const std::string_view s(*v);
    if (passes_to_notify_command(s.substr(0, s.find('=')))) env_strings.emplace_back(s);
  }
  const auto reason = e.data.value("reason", std::string());
  env_strings.push_back("TOKEND_PROFILE=" + e.profile);
  env_strings.push_back("TOKEND_REASON=" + reason);
  env_strings.push_back("TOKEND_LOGIN_COMMAND=tokenctl login " + e.profile);
  std::vector<char*> env;
  for (auto& s : env_strings) env.push_back(s.data());
  env.push_back(nullptr);
  std::string sh = "/bin/sh";
  std::string dash_c = "-c";
  std::vector<char*> args = {sh.data(), dash_c.data(), m_command.data(), nullptr};

  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = UV_IGNORE;
  stdio[2].flags = UV_INHERIT_FD;
  stdio[2].data.fd = 2;
  uv_process_options_t options{};
  options.file = sh.c_str();
  options.args = args.data();
  options.env = env.data();
  options.stdio_count = 3;
  options.stdio = stdio;
  const std::uint64_t id = ++m_spawned;
  // The notifier owns the process handle: when it calls back, `this` is alive.
  auto process = net::Process::spawn(m_loop, options, [this, id](std::int64_t status, int signal) {
    if (status != 0 || signal != 0)
      spdlog::warn("notify-command exited with status {} (signal {})", status, signal);
    m_running.erase(id);  // closes the handle from its own callback
  });
  if (!process) {
    spdlog::warn("notify-command could not be started: {}", process.error().message);
    return;
  }
  m_running.emplace(id, std::move(*process));
}

}  // namespace tokend::daemon

// notify_command: when a profile needs a new login, run the
// user's command (e.g. notify-send) with /bin/sh -c. The profile and the
// login command are passed in the environment, never spliced into the
// command text.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "net/loop.hpp"
#include "tokens/events.hpp"

namespace tokend::daemon {

class Notifier {
 public:
  Notifier(net::Loop& loop, tokens::EventBus& events, std::string command);
  ~Notifier();
  Notifier(const Notifier&) = delete;
  Notifier& operator=(const Notifier&) = delete;

  void set_command(std::string command) { m_command = std::move(command); }
  // Stops commands still running (SIGTERM) and releases their handles.
  void close();

 private:
  void run(const tokens::Event& e);

  net::Loop& m_loop;
  std::string m_command;
  tokens::EventBus::Subscription m_sub;
  std::map<std::uint64_t, net::Process> m_running;
  std::uint64_t m_spawned = 0;
};

}  // namespace tokend::daemon

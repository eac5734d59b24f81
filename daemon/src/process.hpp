// The process's life, the same in both modes (daemon.cpp, server.cpp): the
// descriptor limit, the allowed uids, the signals, the socket and the
// readiness notice.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <functional>
#include <set>
#include <string>

#include "core/error.hpp"
#include "daemon/config.hpp"
#include "ipc/server.hpp"
#include "net/loop.hpp"

namespace tokend::daemon {

// Many clients at once need many descriptors: use the hard limit.
void raise_fd_limit();

// The allowed uids that can match in this user namespace; warns about the
// others (systemd PrivateUsers=yes).
std::set<uid_t> usable_allowed_uids(const std::set<uid_t>& wanted);

// SIGTERM and SIGINT drain, once: the first one logs, tells systemd
// STOPPING=1 and calls `drain`, which stops the work and calls `drained`
// when the last connection has gone (the signal handles are closed then);
// later ones are ignored. SIGHUP re-reads the configuration: a bad one is
// logged and changes nothing; a good one goes to `apply`, and systemd is
// told.
class ProcessSignals {
 public:
  using Drain = std::function<void(std::function<void()> drained)>;
  using Reparse = std::function<Result<Config>()>;
  using Apply = std::function<void(const Config& fresh)>;

  explicit ProcessSignals(net::Loop& loop) : m_loop(loop) {}
  ProcessSignals(const ProcessSignals&) = delete;
  ProcessSignals& operator=(const ProcessSignals&) = delete;

  Result<> start(Drain drain, Reparse reparse, Apply apply);
  // Idempotent; for a start refused after start().
  void close() noexcept;

 private:
  void on_stop(int sig);
  void on_reload();

  net::Loop& m_loop;
  net::Signal m_term;
  net::Signal m_int;
  net::Signal m_hup;
  Drain m_drain;
  Reparse m_reparse;
  Apply m_apply;
  bool m_stopping = false;
};

// Listens on the socket systemd passed (LISTEN_FDS) or else on `path`.
// Answers what it listens on, for the readiness log line.
Result<std::string> listen_on_socket(ipc::Server& server, const std::filesystem::path& path);

// The readiness notice: the log line and systemd's READY=1 with `status`.
void announce_ready(const std::string& line, const std::string& status);

}  // namespace tokend::daemon

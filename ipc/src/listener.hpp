// The listening side of a Server: its socket (created at a path, handed over
// by systemd, loopback TCP, or TCP with TLS), accepting with the peer-credential check,
// the set of open connections and its limit, and drain on shutdown. It is
// shared with its connections, so it lives until the last of them has
// closed, even after ~Server.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <set>

#include "connection.hpp"
#include "core/error.hpp"
#include "ipc/router.hpp"
#include "ipc/server.hpp"
#include "ipc/tls.hpp"
#include "net/loop.hpp"

namespace tokend::ipc {

class Listener : public std::enable_shared_from_this<Listener> {
 public:
  Listener(net::Loop& loop, Router& router, ServerLimits limits);

  Result<> listen_path(const std::filesystem::path& path);
  Result<> listen_fd(int fd);
  Result<std::uint16_t> listen_loopback();
  Result<std::uint16_t> listen_tls(const std::string& host, std::uint16_t port,
                                   std::shared_ptr<const TlsContext> tls);
  void set_tls_context(std::shared_ptr<const TlsContext> tls) { m_tls = std::move(tls); }

  void set_allowed_uids(std::set<uid_t> uids) { m_allowed = std::move(uids); }
  void set_limits(const ServerLimits& limits) { m_limits = limits; }
  void on_denied_peer(Server::DeniedPeerHook hook) { m_denied_hook = std::move(hook); }

  void drain(std::chrono::milliseconds grace, std::function<void()> done);
  void close_all();
  // The Server is going away: closes everything, and a drain in progress
  // will not call back.
  void abandon();

  // What its connections use.
  [[nodiscard]] net::Loop& loop() { return m_loop; }
  [[nodiscard]] const Router& router() const { return m_router; }
  [[nodiscard]] const ServerLimits& limits() const { return m_limits; }
  [[nodiscard]] ServerStats& stats() { return m_stats; }
  [[nodiscard]] bool draining() const { return m_draining; }
  [[nodiscard]] ReadBuffer& read_buffer() { return m_read_buffer; }
  // A connection's close callback: the listener lets go of it.
  void remove(Connection* c);

 private:
  Result<> start_listening();
  void on_connection(int status);
  // The connection waiting on the listening socket, and who is on its
  // other end (a TCP peer has no credentials to read).
  Result<std::pair<net::Stream, Peer>> accept_one();
  void admit(const std::shared_ptr<Connection>& conn);
  [[nodiscard]] bool uid_allowed(uid_t uid) const {
    return uid == m_own_uid || m_allowed.contains(uid);
  }
  void close_listener();
  void check_drained();

  net::Loop& m_loop;
  Router& m_router;
  ServerLimits m_limits;
  uid_t m_own_uid;
  std::set<uid_t> m_allowed;
  Server::DeniedPeerHook m_denied_hook;
  net::Stream m_socket;  // a Pipe, or a Tcp for listen_loopback
  bool m_tcp = false;
  std::shared_ptr<const TlsContext> m_tls;  // TLS on every connection (listen_tls)
  std::filesystem::path m_socket_path;
  ino_t m_socket_inode = 0;
  std::map<Connection*, std::shared_ptr<Connection>> m_connections;
  ServerStats m_stats;
  bool m_draining = false;
  std::function<void()> m_drain_done;
  net::Timer m_drain_timer;
  ReadBuffer m_read_buffer;
};

}  // namespace tokend::ipc

// Server is the public face; the work is done in three parts: the listener
// (listener.cpp: sockets, accept, peer credentials, the connection set,
// drain), each connection (connection.cpp: states, timers, order of
// answers, streams, linger) and the codec (codec.cpp: HTTP/1.1 on plain
// buffers).
#include "ipc/server.hpp"

#include "listener.hpp"

namespace tokend::ipc {

Server::Server(net::Loop& loop, Router& router, ServerLimits limits)
    : m_listener(std::make_shared<Listener>(loop, router, limits)) {}

// Connections still closing keep the listener alive until their close
// callbacks have run (on the loop, which must run before it closes), so
// nothing here waits and a Server may be destroyed from a loop callback.
Server::~Server() {
  m_listener->abandon();
}

Result<> Server::listen_path(const std::filesystem::path& path) {
  return m_listener->listen_path(path);
}
Result<> Server::listen_fd(int fd) {
  return m_listener->listen_fd(fd);
}
Result<std::uint16_t> Server::listen_loopback() {
  return m_listener->listen_loopback();
}
Result<std::uint16_t> Server::listen_tls(const std::string& host, std::uint16_t port,
                                         std::shared_ptr<const TlsContext> tls) {
  return m_listener->listen_tls(host, port, std::move(tls));
}
void Server::set_tls_context(std::shared_ptr<const TlsContext> tls) {
  m_listener->set_tls_context(std::move(tls));
}
void Server::set_allowed_uids(std::set<uid_t> uids) {
  m_listener->set_allowed_uids(std::move(uids));
}
void Server::set_limits(const ServerLimits& limits) {
  m_listener->set_limits(limits);
}
void Server::on_denied_peer(DeniedPeerHook hook) {
  m_listener->on_denied_peer(std::move(hook));
}
void Server::drain(std::chrono::milliseconds grace, std::function<void()> done) {
  m_listener->drain(grace, std::move(done));
}
void Server::close() {
  m_listener->close_all();
}
const ServerStats& Server::stats() const {
  return m_listener->stats();
}

}  // namespace tokend::ipc

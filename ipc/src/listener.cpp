#include "listener.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <utility>
#include <vector>

#include "core/fs.hpp"
#include "core/guard.hpp"

namespace tokend::ipc {

namespace {

// A socket file already at `p`: an error if a server answers on it, removed
// if nobody does (left by a tokend that was killed).
Result<> remove_stale_socket(const std::string& p, const sockaddr_un& addr) {
  struct stat st{};
  if (::lstat(p.c_str(), &st) != 0) return {};
  if (!S_ISSOCK(st.st_mode)) {
    return fail(Errc::config, fmt::format("{} exists and is not a socket; move it away or "
                                          "choose another --socket",
                                          p));
  }
  const int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const bool live =
      probe >= 0 && ::connect(probe, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0;
  if (probe >= 0) ::close(probe);
  if (live) {
    return fail(Errc::already_exists,
                fmt::format("another tokend is already running on {}; stop it first "
                            "(systemctl --user stop tokend, or kill it) or use another --socket",
                            p));
  }
  ::unlink(p.c_str());  // stale: nobody answers
  spdlog::info("replaced stale socket {}", p);
  return {};
}

// "192.0.2.1:50000" or "[2001:db8::1]:50000"; empty if unknown.
std::string peer_address(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (fd < 0 || ::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return {};
  std::array<char, INET6_ADDRSTRLEN> text{};
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    if (::inet_ntop(AF_INET, &a->sin_addr, text.data(), text.size()) == nullptr) return {};
    return fmt::format("{}:{}", text.data(), ntohs(a->sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    if (::inet_ntop(AF_INET6, &a->sin6_addr, text.data(), text.size()) == nullptr) return {};
    return fmt::format("[{}]:{}", text.data(), ntohs(a->sin6_port));
  }
  return {};
}

}  // namespace

Listener::Listener(net::Loop& loop, Router& router, ServerLimits limits)
    : m_loop(loop), m_router(router), m_limits(limits), m_own_uid(::geteuid()) {}

Result<> Listener::listen_fd(int fd) {
  auto pipe = net::Pipe::create(m_loop);
  if (!pipe) return std::unexpected(pipe.error().context("initialising the listener"));
  const int rc = pipe->open(fd);
  m_socket = std::move(*pipe);
  if (rc != 0) {
    close_listener();
    return std::unexpected(net::uv_error(rc, "using the listening socket"));
  }
  return start_listening();
}

Result<std::uint16_t> Listener::listen_loopback() {
  auto tcp = net::Tcp::create(m_loop);
  if (!tcp) return std::unexpected(tcp.error().context("initialising the loopback listener"));
  m_tcp = true;
  sockaddr_in addr{};
  (void)uv_ip4_addr("127.0.0.1", 0, &addr);
  if (const int rc = tcp->bind(reinterpret_cast<const sockaddr*>(&addr), 0); rc != 0) {
    return std::unexpected(net::uv_error(rc, "binding 127.0.0.1"));
  }
  auto port = tcp->local_port();
  if (!port) return std::unexpected(port.error().context("the loopback listener"));
  m_socket = std::move(*tcp);
  if (auto r = start_listening(); !r) return std::unexpected(r.error());
  return *port;
}

Result<std::uint16_t> Listener::listen_tls(const std::string& host, std::uint16_t port,
                                           std::shared_ptr<const TlsContext> tls) {
  sockaddr_storage addr{};
  const bool v6 = host.find(':') != std::string::npos;
  const int parsed = v6 ? uv_ip6_addr(host.c_str(), port, reinterpret_cast<sockaddr_in6*>(&addr))
                        : uv_ip4_addr(host.c_str(), port, reinterpret_cast<sockaddr_in*>(&addr));
  if (parsed != 0) {
    return fail(Errc::config, fmt::format("listen {}: not an IPv4 or IPv6 address", host));
  }
  auto tcp = net::Tcp::create(m_loop);
  if (!tcp) return std::unexpected(tcp.error().context("initialising the TLS listener"));
  m_tcp = true;
  m_tls = std::move(tls);
  const std::string where =
      v6 ? fmt::format("[{}]:{}", host, port) : fmt::format("{}:{}", host, port);
  // An IPv6 address serves IPv6 only: list the IPv4 one too for both.
  if (const int rc = tcp->bind(reinterpret_cast<const sockaddr*>(&addr), v6 ? UV_TCP_IPV6ONLY : 0);
      rc != 0) {
    return std::unexpected(net::uv_error(rc, "binding " + where));
  }
  auto bound = tcp->local_port();
  if (!bound) return std::unexpected(bound.error().context(where));
  m_socket = std::move(*tcp);
  if (auto r = start_listening(); !r) return std::unexpected(r.error().context(where));
  return *bound;
}

Result<> Listener::start_listening() {
  // The listening socket is ours: when it calls back, `this` is alive.
  const int rc = m_socket.listen(SOMAXCONN, [this](int status) { on_connection(status); });
  if (rc != 0) {
    close_listener();
    return std::unexpected(net::uv_error(rc, "listening on the socket"));
  }
  return {};
}

Result<> Listener::listen_path(const std::filesystem::path& path) {
  if (auto r = fs::ensure_private_dir(path.parent_path()); !r) {
    return std::unexpected(r.error().context("socket directory"));
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string p = path.string();
  if (p.size() >= sizeof addr.sun_path) {
    return fail(Errc::config, fmt::format("socket path {} is longer than the {} bytes a Unix "
                                          "socket allows; choose a shorter --socket",
                                          p, sizeof addr.sun_path - 1));
  }
  std::memcpy(addr.sun_path, p.c_str(), p.size() + 1);

  if (auto r = remove_stale_socket(p, addr); !r) return r;

  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return fail(Errc::io, "creating a socket: " + errno_text(errno));
  const mode_t old = ::umask(077);
  const int b = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  const int err = errno;
  ::umask(old);
  if (b != 0) {
    ::close(fd);
    return fail(Errc::io, fmt::format("binding {}: {}", p, errno_text(err)));
  }
  ::chmod(p.c_str(), 0600);
  if (::listen(fd, SOMAXCONN) != 0) {
    ::close(fd);
    return fail(Errc::io, fmt::format("listening on {}: {}", p, errno_text(errno)));
  }
  if (struct stat st{}; ::lstat(p.c_str(), &st) == 0) m_socket_inode = st.st_ino;
  m_socket_path = path;
  return listen_fd(fd);
}

void Listener::on_connection(int status) {
  if (status != 0) {
    spdlog::warn("accept failed: {}", uv_strerror(status));
    return;
  }
  auto accepted = accept_one();
  if (!accepted) {
    spdlog::warn("{}", accepted.error().message);
    return;
  }
  std::unique_ptr<TlsSession> tls;
  if (m_tls) {
    auto session = TlsSession::create(m_tls);
    if (!session) {
      spdlog::warn("{}", session.error().message);
      accepted->first.close();
      return;
    }
    tls = std::move(*session);
  }
  auto conn = std::make_shared<Connection>(shared_from_this(), std::move(accepted->first),
                                           accepted->second, std::move(tls));
  m_connections.emplace(conn.get(), conn);
  if (auto r = conn->init(); !r) {
    spdlog::warn("{}", r.error().message);
    conn->close();
    return;
  }
  ++m_stats.connections_accepted;
  conn->start();
  admit(conn);
}

Result<std::pair<net::Stream, Peer>> Listener::accept_one() {
  if (m_tcp) {
    auto io = net::Tcp::create(m_loop);
    if (!io) return std::unexpected(io.error());
    if (const int rc = m_socket.accept(*io); rc != 0) {
      return std::unexpected(net::uv_error(rc, "accepting a connection"));
    }
    // A TCP peer has no credentials to read: the listener's handlers
    // authenticate each request (see Server::listen_loopback).
    (void)io->nodelay(true);
    Peer peer;
    peer.address = peer_address(io->fileno());
    return std::pair<net::Stream, Peer>{std::move(*io), std::move(peer)};
  }
  auto io = net::Pipe::create(m_loop);
  if (!io) return std::unexpected(io.error());
  if (const int rc = m_socket.accept(*io); rc != 0) {
    return std::unexpected(net::uv_error(rc, "accepting a connection"));
  }
  const int fd = io->fileno();
  if (fd < 0) return fail(Errc::io, "connection has no file descriptor");
  auto peer = peer_of(fd);
  if (!peer) return std::unexpected(peer.error());
  return std::pair<net::Stream, Peer>{std::move(*io), *peer};
}

// Over the connection limit, or a Unix socket peer whose uid is not allowed:
// one answer, then the connection closes. Anyone else may send requests.
void Listener::admit(const std::shared_ptr<Connection>& conn) {
  if (m_connections.size() > m_limits.max_connections) {
    ++m_stats.connections_refused;
    if (m_tls) {  // no plaintext answer on a TLS port, and no handshake to spend on it
      conn->close();
      return;
    }
    conn->refuse(503, "too many connections to tokend; try again");
    return;
  }
  const Peer& peer = conn->peer();
  if (!m_tcp && !uid_allowed(peer.uid)) {
    ++m_stats.peers_denied;
    spdlog::warn("refused connection from uid {} pid {}: not allowed to use tokend", peer.uid,
                 peer.pid);
    if (m_denied_hook) guarded("denied-peer hook", [&] { m_denied_hook(peer); });
    conn->refuse(403,
                 "this user is not allowed to use tokend (ask its owner to add your uid "
                 "to allow-uid in tokend.conf)");
    return;
  }
  conn->await_request();
}

void Listener::remove(Connection* c) {
  auto it = m_connections.find(c);
  if (it == m_connections.end()) return;
  if (it->second->counted()) --m_stats.open_connections;
  if (it->second->tls_counted_open()) --m_stats.tls_connections_open;
  m_connections.erase(it);
  check_drained();
}

void Listener::close_listener() {
  if (!m_socket.valid()) return;
  m_socket.close();
  // Remove the socket file if it is still the one we created.
  if (!m_socket_path.empty()) {
    struct stat st{};
    if (::lstat(m_socket_path.c_str(), &st) == 0 && st.st_ino == m_socket_inode) {
      ::unlink(m_socket_path.c_str());
    }
    m_socket_path.clear();
  }
}

void Listener::drain(std::chrono::milliseconds grace, std::function<void()> done) {
  m_draining = true;
  m_drain_done = std::move(done);
  close_listener();
  std::vector<std::shared_ptr<Connection>> conns;
  for (auto& [_, c] : m_connections) conns.push_back(c);
  for (auto& c : conns) c->drain();
  if (m_connections.empty()) {
    check_drained();
    return;
  }
  auto timer = net::Timer::create(m_loop);
  if (!timer) {
    spdlog::error("{}; closing the connections now", timer.error().message);
    close_all();
    return;
  }
  m_drain_timer = std::move(*timer);
  m_drain_timer.start(static_cast<std::uint64_t>(grace.count()), 0, [this] {
    spdlog::warn("{} connection(s) still busy after the drain grace period; closing them",
                 m_connections.size());
    close_all();
  });
}

void Listener::check_drained() {
  if (!m_draining || !m_connections.empty() || !m_drain_done) return;
  m_drain_timer.close();
  auto done = std::move(m_drain_done);
  m_drain_done = nullptr;
  done();
}

void Listener::close_all() {
  close_listener();
  std::vector<std::shared_ptr<Connection>> conns;
  for (auto& [_, c] : m_connections) conns.push_back(c);
  for (auto& c : conns) c->close();
}

void Listener::abandon() {
  m_drain_done = nullptr;
  close_all();
  m_drain_timer.close();
}

Result<Peer> peer_of(int fd) {
  Peer p;
#if defined(SO_PEERCRED)
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return fail(Errc::io, "reading peer credentials: " + errno_text(errno));
  }
  p.uid = cred.uid;
  p.gid = cred.gid;
  p.pid = cred.pid;
#else
  if (::getpeereid(fd, &p.uid, &p.gid) != 0) {
    return fail(Errc::io, "reading peer credentials: " + errno_text(errno));
  }
#if defined(LOCAL_PEERPID)
  socklen_t len = sizeof p.pid;
  ::getsockopt(fd, SOL_LOCAL, LOCAL_PEERPID, &p.pid, &len);
#endif
#endif
  return p;
}

}  // namespace tokend::ipc

// HTTP/1.1 on a Unix socket, on the libuv loop, on a loopback TCP port
// (the stand-in endpoints of tokenctl exec --endpoint), or on TCP with TLS
// (server mode's `listen`).
//
// On a Unix socket peer credentials are read at accept: only allowed uids
// get in; anyone else gets 403 and an audit callback. Requests are parsed with Beast on plain
// buffers, answered in order (pipelining works), and every limit has its
// answer: 431 (header bytes), 413 (body bytes), 503 (connections), 408
// (request not complete in time); idle keep-alive connections are closed.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <set>

#include "core/error.hpp"
#include "ipc/router.hpp"
#include "ipc/tls.hpp"
#include "net/loop.hpp"

namespace tokend::ipc {

class Listener;

struct ServerLimits {
  std::size_t max_header_bytes = 16 * 1024;
  std::size_t max_body_bytes = 1024 * 1024;
  std::size_t max_upload_bytes = 256ULL * 1024 * 1024;  // routes that take large bodies (the proxy)
  std::size_t max_connections = 1024;
  std::chrono::milliseconds idle_timeout{60'000};       // keep-alive with nothing pending
  std::chrono::milliseconds request_timeout{10'000};    // first byte to complete request
  std::size_t max_write_queue_bytes = 4 * 1024 * 1024;  // stop reading a peer that does not read
  // After a closing answer, how long to discard what the peer still sends
  // before closing anyway; the peer's own close ends it sooner.
  std::chrono::milliseconds linger{1000};
};

struct ServerStats {
  std::uint64_t connections_accepted = 0;
  std::uint64_t connections_refused = 0;  // over the limit
  std::uint64_t peers_denied = 0;
  std::uint64_t requests = 0;
  std::uint64_t open_connections = 0;
  std::map<int, std::uint64_t> responses_by_status;
  // A TLS listener's (listen_tls): handshakes done, with a verified client
  // certificate or none; handshakes failed, by why: a client certificate
  // that did not verify, anything else TLS refused (versions, ciphers,
  // ALPN, malformed records, the client's own alert), not finished within
  // request-timeout, the peer gone before finishing; plain HTTP refused;
  // connections whose handshake is done, open now.
  std::uint64_t tls_handshakes_ok = 0;
  std::uint64_t tls_handshakes_ok_client_cert = 0;
  std::uint64_t tls_failed_client_cert = 0;
  std::uint64_t tls_failed_protocol = 0;
  std::uint64_t tls_failed_timeout = 0;
  std::uint64_t tls_failed_closed = 0;
  std::uint64_t tls_plaintext_refused = 0;
  std::uint64_t tls_connections_open = 0;
};

class Server {
 public:
  using DeniedPeerHook = std::function<void(const Peer&)>;

  Server(net::Loop& loop, Router& router, ServerLimits limits);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Creates the socket at `path` (directory 0700, socket 0600). A live server
  // already there is an error; a stale socket file is replaced.
  Result<> listen_path(const std::filesystem::path& path);
  // Serves an already listening socket (systemd socket activation).
  Result<> listen_fd(int fd);
  // Listens on 127.0.0.1 at a port the kernel picks and returns it. A TCP
  // peer has no credentials to check: every local user can connect, so the
  // router's handlers must authenticate each request themselves. One
  // listener per Server.
  Result<std::uint16_t> listen_loopback();
  // Listens on HOST:PORT (an IPv4 or IPv6 address; port 0: the kernel
  // picks) with TLS on every connection, and returns the port. As on the
  // loopback, peers have no credentials: handlers authenticate each request
  // (server mode: identify()). A connection has request_timeout to finish
  // its handshake; a failed handshake closes it; plain HTTP sent to the port
  // is answered 400 in plain text. Over the connection limit, a connection
  // is closed without an answer.
  Result<std::uint16_t> listen_tls(const std::string& host, std::uint16_t port,
                                   std::shared_ptr<const TlsContext> tls);
  // New connections use `tls` (a reloaded certificate); open ones keep theirs.
  void set_tls_context(std::shared_ptr<const TlsContext> tls);

  void set_allowed_uids(std::set<uid_t> uids);  // the daemon's own uid is always allowed
  void set_limits(const ServerLimits& limits);
  void on_denied_peer(DeniedPeerHook hook);

  // Stops accepting, lets requests in flight finish (streams are closed),
  // then calls `done`. Connections still busy after `grace` are closed.
  void drain(std::chrono::milliseconds grace, std::function<void()> done);
  // Closes everything now. The Server may be destroyed from a loop callback:
  // connections still closing hold what they need until their close
  // callbacks have run.
  void close();

  [[nodiscard]] const ServerStats& stats() const;

 private:
  std::shared_ptr<Listener> m_listener;
};

// Peer credentials of a connected Unix socket.
Result<Peer> peer_of(int fd);

}  // namespace tokend::ipc

#include "ipc/server.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <boost/beast/core/buffers_range.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <cstring>
#include <sstream>

#include "core/fs.hpp"
#include "core/guard.hpp"
#include "core/secret.hpp"
#include "net/spool.hpp"

namespace tokend::ipc {

namespace http = boost::beast::http;
namespace asio = boost::asio;

class Connection;

namespace {

constexpr std::size_t k_read_buffer_bytes = 64 * 1024;
// A large body is kept in memory up to this, then in a spool.
constexpr std::size_t k_spool_threshold = 1024 * 1024;
// A framed stream's producer hears "drained" once the queue is below this.
constexpr std::size_t k_stream_low_water = 64 * 1024;
constexpr std::chrono::milliseconds k_linger{1000};

// Which answer a parse error gets.
std::pair<int, std::string_view> status_for_parse_error(const boost::system::error_code& ec) {
  if (ec == http::error::header_limit) return {431, "request header is larger than the limit"};
  if (ec == http::error::body_limit) return {413, "request body is larger than the limit"};
  if (ec == http::error::buffer_overflow) return {431, "request header is larger than the limit"};
  return {400, "malformed HTTP request"};
}

std::string serialize(http::response<http::string_body>& res) {
  std::string out;
  out.reserve(256 + res.body().size());
  http::response_serializer<http::string_body> sr{res};
  boost::system::error_code ec;
  do {
    sr.next(ec, [&](boost::system::error_code&, const auto& buffers) {
      for (const auto b : boost::beast::buffers_range_ref(buffers)) {
        out.append(static_cast<const char*>(b.data()), b.size());
      }
      sr.consume(boost::beast::buffer_bytes(buffers));
    });
  } while (!ec && !sr.is_done());
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------

class Server::Impl : public std::enable_shared_from_this<Server::Impl> {
 public:
  Impl(net::Loop& loop, Router& router, ServerLimits limits)
      : m_loop(loop), m_router(router), m_limits(limits), m_own_uid(::geteuid()) {}

  Result<> listen_fd(int fd);
  Result<> listen_path(const std::filesystem::path& path);
  Result<std::uint16_t> listen_loopback();
  Result<> start_listening();
  void on_connection(int status);
  void remove(Connection* c);
  void drain(std::chrono::milliseconds grace, std::function<void()> done);
  void close_all();
  void close_listener();
  void check_drained();
  [[nodiscard]] bool uid_allowed(uid_t uid) const {
    return uid == m_own_uid || m_allowed.contains(uid);
  }

  net::Loop& m_loop;
  Router& m_router;
  ServerLimits m_limits;
  uid_t m_own_uid;
  std::set<uid_t> m_allowed;
  DeniedPeerHook m_denied_hook;
  net::Stream m_listener;  // a Pipe, or a Tcp for listen_loopback
  bool m_tcp = false;
  std::filesystem::path m_socket_path;
  ino_t m_socket_inode = 0;
  std::map<Connection*, std::shared_ptr<Connection>> m_connections;
  ServerStats m_stats;
  bool m_draining = false;
  std::function<void()> m_drain_done;
  net::Timer m_drain_timer;
  std::unique_ptr<char[]> m_read_buffer{new char[k_read_buffer_bytes]};
  bool m_read_buffer_in_use = false;
};

// ---------------------------------------------------------------------------

class ExchangeImpl;
class StreamImpl;

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  enum class State { idle, reading, busy, streaming, closing, lingering, closed };

  explicit Connection(std::shared_ptr<Server::Impl> server)
      : m_server(*server), m_keep_server(std::move(server)) {}

  Result<> init(net::Stream& listener, bool tcp);
  void start(bool refuse_busy);
  void respond(ExchangeImpl* ex, Response response);
  std::shared_ptr<Stream> start_stream(ExchangeImpl* ex, int status, Headers headers,
                                       StreamFraming framing);
  bool stream_send(std::string_view bytes);
  void stream_finish();
  // Defers a drained check to the loop (never from inside the producer).
  void check_drained_soon() {
    arm_timer(std::chrono::milliseconds{0});
    m_timer_checks_drained = true;
  }
  [[nodiscard]] std::size_t queued() const { return m_io.write_queue_size(); }
  void close();
  void close_after_flush();
  void drain();
  [[nodiscard]] State state() const { return m_state; }
  [[nodiscard]] bool is_closed() const { return m_state == State::closed || m_closing_handles; }
  [[nodiscard]] const Peer& peer() const { return m_peer; }

  Peer m_peer;

 private:
  friend class Server::Impl;
  void on_read(ssize_t nread, const uv_buf_t* buf);
  // After EOF: whether the peer closed both directions (POLLHUP), not just
  // its sending half.
  bool peer_gone();
  void pump();
  void dispatch(Request request);
  void fail_request(int status, std::string_view message);
  void write(std::string data);
  void on_write_done(int status);
  void arm_timer(std::chrono::milliseconds after);
  void on_timer();
  void finish_response(bool close);
  void begin_linger();
  void maybe_pause_reading();
  void resume_reading();
  bool check_body();

  Server::Impl& m_server;
  // The server's state outlives its connections: the last close callback
  // may run after ~Server.
  std::shared_ptr<Server::Impl> m_keep_server;
  // A Unix socket or, on a loopback listener, a TCP connection. The
  // connection's memory is released in its close callback (Server::Impl
  // holds it until then); callbacks of both handles may use `this`, since
  // the connection owns them.
  net::Stream m_io;
  net::Timer m_timer;
  bool m_closing_handles = false;
  State m_state = State::idle;
  std::string m_inbuf;
  std::optional<http::request_parser<http::string_body>> m_parser;
  std::shared_ptr<ExchangeImpl> m_current;
  std::shared_ptr<StreamImpl> m_stream;
  std::size_t m_pending_writes = 0;
  bool m_close_after_write = false;
  bool m_reading = false;
  bool m_counted = false;   // included in open_connections
  bool m_peer_eof = false;  // the peer half-closed while we owed an answer
  bool m_pumping = false;   // pump() is on the stack
  // Large bodies (routes that take them): spilled to a spool as they arrive.
  bool m_body_checked = false;
  bool m_large_body = false;
  std::shared_ptr<net::Spool> m_spool;
  // The stream being sent and how its body is delimited.
  StreamFraming m_framing;
  std::uint64_t m_stream_left = 0;  // StreamFraming::Kind::length
  bool m_stream_keep_alive = false;
  // The timer is armed for a drained check, not a timeout: when it fires it
  // must not close a connection that has meanwhile begun to close (a stream
  // that finished with writes still queued would lose them).
  bool m_timer_checks_drained = false;
  void check_drained();
};

class StreamImpl final : public Stream {
 public:
  explicit StreamImpl(std::weak_ptr<Connection> c) : m_conn(std::move(c)) {}
  bool send(std::string_view bytes) override {
    auto c = m_conn.lock();
    return c && !c->is_closed() && c->stream_send(bytes);
  }
  [[nodiscard]] bool open() const override {
    auto c = m_conn.lock();
    return c && !c->is_closed() && !m_closed_fired;
  }
  [[nodiscard]] std::size_t queued() const override {
    auto c = m_conn.lock();
    return c && !c->is_closed() ? c->queued() : 0;
  }
  void on_drained(std::function<void()> cb) override {
    m_on_drained = std::move(cb);
    if (auto c = m_conn.lock()) c->check_drained_soon();
  }
  void on_close(std::function<void()> cb) override { m_on_close.push_back(std::move(cb)); }
  void finish() override {
    if (auto c = m_conn.lock()) c->stream_finish();
  }
  void close() override {
    if (auto c = m_conn.lock()) c->close_after_flush();
  }
  // The connection's write queue ran low.
  void fire_drained() {
    if (auto cb = std::move(m_on_drained)) {
      m_on_drained = nullptr;
      guarded("stream drained callback", cb);
    }
  }
  [[nodiscard]] bool wants_drained() const { return static_cast<bool>(m_on_drained); }
  void fire_closed() {
    if (m_closed_fired) return;
    m_closed_fired = true;
    auto cbs = std::move(m_on_close);
    for (auto& cb : cbs) guarded("stream close callback", cb);
  }

 private:
  std::weak_ptr<Connection> m_conn;
  std::vector<std::function<void()>> m_on_close;
  std::function<void()> m_on_drained;
  bool m_closed_fired = false;
};

class ExchangeImpl final : public Exchange {
 public:
  ExchangeImpl(std::weak_ptr<Connection> c, Request r, Peer p)
      : m_conn(std::move(c)), m_request(std::move(r)), m_peer(p) {}
  [[nodiscard]] const Request& request() const override { return m_request; }
  [[nodiscard]] const Peer& peer() const override { return m_peer; }
  [[nodiscard]] std::string_view param(std::string_view name) const override {
    auto it = m_params.find(name);
    return it == m_params.end() ? std::string_view{} : std::string_view(it->second);
  }
  void respond(Response response) override {
    if (m_answered) return;
    m_answered = true;
    if (auto c = m_conn.lock()) c->respond(this, std::move(response));
  }
  std::shared_ptr<Stream> start_stream(int status, Headers headers,
                                       StreamFraming framing) override {
    if (m_answered) return nullptr;
    m_answered = true;
    auto c = m_conn.lock();
    if (!c) return nullptr;
    return c->start_stream(this, status, std::move(headers), framing);
  }
  [[nodiscard]] bool pending() const override {
    auto c = m_conn.lock();
    return !m_answered && c && !c->is_closed();
  }
  void on_abandon(std::function<void()> cb) override { m_on_abandon.push_back(std::move(cb)); }
  void abandon() {
    if (m_answered) return;
    m_answered = true;
    auto cbs = std::move(m_on_abandon);
    for (auto& cb : cbs) guarded("abandon callback", cb);
  }

  std::map<std::string, std::string, std::less<>> m_params;

 private:
  std::weak_ptr<Connection> m_conn;
  Request m_request;
  Peer m_peer;
  bool m_answered = false;
  std::vector<std::function<void()>> m_on_abandon;
};

// ---------------------------------------------------------------------------
// Connection

Result<> Connection::init(net::Stream& listener, bool tcp) {
  auto timer = net::Timer::create(m_server.m_loop);
  if (!timer) return std::unexpected(timer.error());
  m_timer = std::move(*timer);
  if (tcp) {
    auto io = net::Tcp::create(m_server.m_loop);
    if (!io) return std::unexpected(io.error());
    const int rc = listener.accept(*io);
    // A TCP peer has no credentials to read: the listener's handlers
    // authenticate each request (see Server::listen_loopback).
    if (rc == 0) (void)io->nodelay(true);
    m_io = std::move(*io);
    if (rc != 0) return std::unexpected(net::uv_error(rc, "accepting a connection"));
    m_peer = Peer{};
    return {};
  }
  auto io = net::Pipe::create(m_server.m_loop);
  if (!io) return std::unexpected(io.error());
  m_io = std::move(*io);
  if (const int rc = listener.accept(m_io); rc != 0) {
    return std::unexpected(net::uv_error(rc, "accepting a connection"));
  }
  const int fd = m_io.fileno();
  if (fd < 0) {
    return fail(Errc::io, "connection has no file descriptor");
  }
  auto peer = peer_of(fd);
  if (!peer) return std::unexpected(peer.error());
  m_peer = *peer;
  return {};
}

void Connection::start(bool refuse_busy) {
  m_counted = true;
  ++m_server.m_stats.open_connections;
  resume_reading();
  if (refuse_busy) {
    ++m_server.m_stats.connections_refused;
    fail_request(503, "too many connections to tokend; try again");
    return;
  }
  if (!m_server.m_tcp && !m_server.uid_allowed(m_peer.uid)) {
    ++m_server.m_stats.peers_denied;
    spdlog::warn("refused connection from uid {} pid {}: not allowed to use tokend", m_peer.uid,
                 m_peer.pid);
    if (m_server.m_denied_hook)
      guarded("denied-peer hook", [&] { m_server.m_denied_hook(m_peer); });
    fail_request(403,
                 "this user is not allowed to use tokend (ask its owner to add your uid "
                 "to allow-uid in tokend.conf)");
    return;
  }
  arm_timer(m_server.m_limits.idle_timeout);
}

void Connection::resume_reading() {
  if (m_reading || is_closed()) return;
  const int rc = m_io.read_start(
      [this](std::size_t, uv_buf_t* buf) {
        // One buffer for all connections: reads are consumed synchronously.
        auto& srv = m_server;
        if (srv.m_read_buffer_in_use) {
          buf->base = nullptr;
          buf->len = 0;
          return;
        }
        srv.m_read_buffer_in_use = true;
        buf->base = srv.m_read_buffer.get();
        buf->len = k_read_buffer_bytes;
      },
      [this](ssize_t nread, const uv_buf_t* buf) {
        if (buf->base == m_server.m_read_buffer.get()) m_server.m_read_buffer_in_use = false;
        auto keep = shared_from_this();
        on_read(nread, buf);
      });
  m_reading = rc == 0;
}

void Connection::maybe_pause_reading() {
  const std::size_t queued = m_io.write_queue_size();
  const bool too_much_input =
      m_inbuf.size() > m_server.m_limits.max_header_bytes + m_server.m_limits.max_body_bytes;
  if (m_reading && (queued > m_server.m_limits.max_write_queue_bytes || too_much_input)) {
    m_io.read_stop();
    m_reading = false;
  }
}

bool Connection::peer_gone() {
  const int fd = m_io.fileno();
  if (fd < 0) return true;
  pollfd pfd{fd, POLLOUT, 0};
  return ::poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLHUP | POLLERR)) != 0;
}

void Connection::on_read(ssize_t nread, const uv_buf_t* buf) {
  if (nread == 0) return;
  if (nread < 0) {
    if (nread == UV_EOF && m_state == State::busy) {
      // Half-closed after sending a request: it still wants the answer. A
      // peer that closed altogether (exited) does not: its exchange is
      // abandoned now, so a request waiting up to an hour for a login does
      // not hold a connection slot for a caller that has gone.
      if (peer_gone()) {
        close();
        return;
      }
      m_peer_eof = true;
      return;
    }
    if (nread == UV_EOF && m_pending_writes > 0 && m_state != State::streaming) {
      close_after_flush();
      return;
    }
    close();
    return;
  }
  if (m_state == State::lingering) return;  // discarding until the peer closes
  if (m_state == State::streaming && m_framing.kind != StreamFraming::Kind::close) {
    // A pipelined request behind a framed stream waits for the stream's end.
    m_inbuf.append(buf->base, static_cast<std::size_t>(nread));
    maybe_pause_reading();
    return;
  }
  if (m_state == State::closing || m_state == State::closed || m_state == State::streaming) return;
  m_inbuf.append(buf->base, static_cast<std::size_t>(nread));
  pump();
  maybe_pause_reading();
}

void Connection::pump() {
  // Answers to pipelined requests call back into pump() (respond ->
  // finish_response); the running loop picks up the next request instead,
  // so the stack does not grow with the number of pipelined requests.
  if (m_pumping) return;
  m_pumping = true;
  struct Reset {
    bool& flag;
    ~Reset() { flag = false; }
  } reset{m_pumping};
  while ((m_state == State::idle || m_state == State::reading) && !m_inbuf.empty()) {
    if (m_state == State::idle) {
      m_state = State::reading;
      arm_timer(m_server.m_limits.request_timeout);
    }
    if (!m_parser) {
      m_parser.emplace();
      m_parser->header_limit(static_cast<std::uint32_t>(m_server.m_limits.max_header_bytes));
      // The route decides the real limit once the header is in (below).
      m_parser->body_limit(std::max<std::uint64_t>(m_server.m_limits.max_body_bytes,
                                                   m_server.m_limits.max_upload_bytes));
      m_parser->eager(true);
      m_body_checked = false;
      m_large_body = false;
      m_spool.reset();
    }
    boost::system::error_code ec;
    const std::size_t used = m_parser->put(asio::buffer(m_inbuf.data(), m_inbuf.size()), ec);
    m_inbuf.erase(0, used);
    if (ec && ec != http::error::need_more) {
      const auto [status, message] = status_for_parse_error(ec);
      fail_request(status, message);
      return;
    }
    if (m_parser->is_header_done() && !check_body()) return;
    if (ec == http::error::need_more) {
      if (m_inbuf.size() > m_server.m_limits.max_header_bytes && !m_parser->is_header_done()) {
        fail_request(431, "request header is larger than the limit");
      }
      break;
    }
    if (!m_parser->is_done()) continue;
    // RFC 7230 §3.3.3: a Transfer-Encoding whose last coding is not chunked
    // leaves the body length unknowable; answer 400 and close rather than
    // read the rest as another request (request smuggling).
    if (m_parser->get().count(http::field::transfer_encoding) != 0 && !m_parser->chunked()) {
      fail_request(400, "Transfer-Encoding must end with chunked");
      return;
    }

    auto msg = m_parser->release();
    m_parser.reset();
    Request req;
    req.method = std::string(msg.method_string());
    req.target = std::string(msg.target());
    req.version = msg.version();
    req.keep_alive = msg.keep_alive();
    for (const auto& field : msg) {
      req.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
    }
    req.body = std::move(msg.body());
    if (m_spool) {
      if (auto r = m_spool->append(req.body); !r) {
        fail_request(500, "the request body could not be kept in a temporary file");
        return;
      }
      secure_wipe(req.body);
      std::string().swap(req.body);
      req.body_spool = std::move(m_spool);
    }
    dispatch(std::move(req));
  }
  if (m_state == State::idle && m_inbuf.empty()) arm_timer(m_server.m_limits.idle_timeout);
}

// With the header in: the body limit of the route, and a large body moved
// to a spool as it arrives. False after answering an error.
bool Connection::check_body() {
  const auto& msg = m_parser->get();
  const std::uint64_t have = (m_spool ? m_spool->size() : 0) + msg.body().size();
  const auto announced = m_parser->content_length();
  const std::uint64_t small = m_server.m_limits.max_body_bytes;
  // Only a body past the ordinary limit needs to know its route (keeps the
  // route lookup off the path of ordinary requests).
  if (!m_body_checked && (have > small || (announced && *announced > small))) {
    m_body_checked = true;
    const std::string_view target(msg.target().data(), msg.target().size());
    const std::string_view method(msg.method_string().data(), msg.method_string().size());
    const auto qpos = target.find('?');
    if (auto path = decode_path(target.substr(0, qpos))) {
      m_large_body = m_server.m_router.match(method, *path).large_body;
    }
  }
  const std::uint64_t limit = m_large_body ? m_server.m_limits.max_upload_bytes : small;
  if (have > limit || (announced && *announced > limit)) {
    fail_request(413, "request body is larger than the limit");
    return false;
  }
  if (m_large_body) {
    // A large upload arrives over many reads: it gets the request timeout
    // per read, not for the whole body.
    arm_timer(m_server.m_limits.request_timeout);
    auto& body = m_parser->get().body();
    if (body.size() >= k_spool_threshold) {
      if (!m_spool) {
        auto spool = net::Spool::create();
        if (!spool) {
          spdlog::error("{}", spool.error().message);
          fail_request(500, "the request body could not be kept in a temporary file");
          return false;
        }
        m_spool = std::move(*spool);
      }
      if (auto r = m_spool->append(body); !r) {
        fail_request(500, "the request body could not be kept in a temporary file");
        return false;
      }
      // Also drop the capacity Beast reserved for the announced length.
      std::string().swap(body);
    }
  }
  return true;
}

void Connection::dispatch(Request req) {
  m_state = State::busy;
  m_timer.stop();
  ++m_server.m_stats.requests;

  // Validate and route first; the exchange is built once, with the final request.
  std::optional<Response> early;
  Router::Match match;
  const auto qpos = req.target.find('?');
  if (m_server.m_draining) {
    early = Response::error(503, "shutting_down", "tokend is shutting down");
    early->close = true;
  } else if (req.target.empty() || req.target.front() != '/') {
    early = Response::error(400, "bad_request", "request target must be an absolute path");
  } else if (auto path = decode_path(std::string_view(req.target).substr(0, qpos)); !path) {
    early = Response::error(400, "bad_request", "request path has a malformed or forbidden escape");
  } else {
    req.path = std::move(*path);
    if (qpos != std::string::npos) {
      auto query = parse_query(std::string_view(req.target).substr(qpos + 1));
      if (query) {
        req.query = std::move(*query);
      } else {
        early = Response::error(400, "bad_request", "query string has a malformed escape");
      }
    }
  }
  if (!early) {
    match = m_server.m_router.match(req.method, req.path);
    if (match.handler == nullptr && !match.allowed.empty()) {
      std::string allow;
      for (const auto& m : match.allowed) allow += (allow.empty() ? "" : ", ") + m;
      static constexpr std::string_view k_methods[] = {"GET",    "HEAD",  "PUT",    "POST",
                                                       "DELETE", "PATCH", "OPTIONS"};
      const bool known =
          std::find(std::begin(k_methods), std::end(k_methods), req.method) != std::end(k_methods);
      early = known ? Response::error(
                          405, "method_not_allowed",
                          fmt::format("{} is not allowed on this path; use {}", req.method, allow))
                    : Response::error(501, "not_implemented", "unknown HTTP method");
      early->headers.emplace_back("Allow", allow);
    } else if (match.handler == nullptr) {
      early = Response::error(404, "not_found", "no such endpoint; see docs/API.md");
    }
  }

  auto ex = std::make_shared<ExchangeImpl>(weak_from_this(), std::move(req), m_peer);
  m_current = ex;
  if (early) {
    ex->respond(std::move(*early));
    return;
  }
  ex->m_params = std::move(match.params);
  try {
    (*match.handler)(ex);
  } catch (const std::exception& e) {
    spdlog::error("handler failed: {}", e.what());
    ex->respond(Response::error(500, "internal", "internal error"));
  }
}

void Connection::respond(ExchangeImpl* ex, Response response) {
  if (m_current.get() != ex || m_state != State::busy) return;
  const auto hold = std::move(m_current);  // keeps `ex` alive to the end of this call
  http::response<http::string_body> res{static_cast<http::status>(response.status),
                                        ex->request().version == 10 ? 10U : 11U};
  res.set(http::field::server, "tokend");
  for (auto& [k, v] : response.headers) res.insert(k, v);
  const bool close = response.close || !ex->request().keep_alive || m_server.m_draining;
  res.keep_alive(!close);
  ++m_server.m_stats.responses_by_status[response.status];
  res.body() = std::move(response.body);
  res.prepare_payload();
  write(serialize(res));
  finish_response(close);
}

void Connection::finish_response(bool close) {
  if (close || m_peer_eof) {
    m_state = State::closing;
    m_close_after_write = true;
    if (m_pending_writes == 0) begin_linger();
    return;
  }
  m_state = State::idle;
  pump();
  resume_reading();
}

std::shared_ptr<Stream> Connection::start_stream(ExchangeImpl* ex, int status, Headers headers,
                                                 StreamFraming framing) {
  if (m_current.get() != ex || m_state != State::busy) return nullptr;
  const auto hold = std::move(m_current);
  const bool http10 = ex->request().version == 10;
  // HTTP/1.0 has no chunked coding: such a peer gets a close-delimited body.
  if (framing.kind == StreamFraming::Kind::chunked && http10)
    framing.kind = StreamFraming::Kind::close;
  http::response<http::empty_body> res{static_cast<http::status>(status), http10 ? 10U : 11U};
  res.set(http::field::server, "tokend");
  for (auto& [k, v] : headers) res.insert(k, v);
  m_framing = framing;
  m_stream_left = framing.length;
  switch (framing.kind) {
    case StreamFraming::Kind::close:
      m_stream_keep_alive = false;
      break;
    case StreamFraming::Kind::chunked:
      res.chunked(true);
      m_stream_keep_alive = ex->request().keep_alive && !m_server.m_draining;
      break;
    case StreamFraming::Kind::length:
      res.content_length(framing.length);
      m_stream_keep_alive = ex->request().keep_alive && !m_server.m_draining;
      break;
  }
  res.keep_alive(m_stream_keep_alive);
  std::ostringstream os;
  os << res.base();
  ++m_server.m_stats.responses_by_status[status];
  write(os.str());
  m_state = State::streaming;
  if (framing.kind == StreamFraming::Kind::close) m_inbuf.clear();
  m_stream = std::make_shared<StreamImpl>(weak_from_this());
  return m_stream;
}

bool Connection::stream_send(std::string_view bytes) {
  if (m_state != State::streaming) return false;
  const std::size_t queued_now = queued();
  if (m_framing.kind == StreamFraming::Kind::close) {
    // A subscriber that does not read gets cut off rather than buffered forever.
    if (queued_now > m_server.m_limits.max_write_queue_bytes) {
      close();
      return false;
    }
    write(std::string(bytes));
    return true;
  }
  // Framed streams are paced by their producer; one that ignores the queue
  // is stopped well past the limit.
  if (queued_now > 4 * m_server.m_limits.max_write_queue_bytes) {
    spdlog::warn("a streamed answer outran its reader by {} bytes; closing the connection",
                 queued_now);
    close();
    return false;
  }
  if (bytes.empty()) return true;
  if (m_framing.kind == StreamFraming::Kind::length) {
    if (bytes.size() > m_stream_left) {
      close();  // more than announced: the framing cannot be kept
      return false;
    }
    m_stream_left -= bytes.size();
    write(std::string(bytes));
    return true;
  }
  std::string chunk = fmt::format("{:x}\r\n", bytes.size());
  chunk.reserve(chunk.size() + bytes.size() + 2);
  chunk.append(bytes);
  chunk.append("\r\n");
  write(std::move(chunk));
  return true;
}

void Connection::stream_finish() {
  if (m_state != State::streaming) return;
  if (m_framing.kind == StreamFraming::Kind::close ||
      (m_framing.kind == StreamFraming::Kind::length && m_stream_left != 0)) {
    close_after_flush();  // close-delimited, or shorter than announced
    return;
  }
  if (m_framing.kind == StreamFraming::Kind::chunked) write("0\r\n\r\n");
  m_stream.reset();
  m_framing = {};
  finish_response(!m_stream_keep_alive || m_server.m_draining);
}

void Connection::check_drained() {
  if (m_state != State::streaming || !m_stream || !m_stream->wants_drained()) return;
  if (queued() <= k_stream_low_water) m_stream->fire_drained();
}

void Connection::close_after_flush() {
  if (is_closed() || m_state == State::closing || m_state == State::lingering) return;
  m_state = State::closing;
  m_close_after_write = true;
  if (m_pending_writes == 0) begin_linger();
}

void Connection::fail_request(int status, std::string_view message) {
  // After a protocol error the byte stream cannot be trusted: answer, close.
  m_parser.reset();
  m_inbuf.clear();
  m_state = State::busy;
  auto ex = std::make_shared<ExchangeImpl>(weak_from_this(), Request{}, m_peer);
  m_current = ex;
  const std::string_view code = status == 431   ? "header_too_large"
                                : status == 413 ? "body_too_large"
                                : status == 408 ? "request_timeout"
                                : status == 403 ? "forbidden"
                                : status == 503 ? "unavailable"
                                                : "bad_request";
  Response r = Response::error(status, code, message);
  r.close = true;
  ex->respond(std::move(r));
}

void Connection::write(std::string data) {
  if (is_closed()) return;
  // Most answers fit the socket buffer: write them directly, with no request
  // object and no POLLOUT watcher to arm and disarm (one epoll_ctl saved per
  // request). Queue only what is left, behind anything already queued.
  if (m_pending_writes == 0) {
    const int n = m_io.try_write(data);
    if (n == static_cast<int>(data.size())) return;
    if (n > 0)
      data.erase(0, static_cast<std::size_t>(n));
    else if (n != UV_EAGAIN) {
      close();
      return;
    }
  }
  ++m_pending_writes;
  // The write keeps a reference: the connection outlives its writes.
  const int rc = m_io.write(
      std::move(data), [self = shared_from_this()](int status) { self->on_write_done(status); });
  if (rc != 0) {
    --m_pending_writes;
    close();
  }
}

void Connection::on_write_done(int status) {
  --m_pending_writes;
  if (status != 0) {
    close();
    return;
  }
  if (m_state == State::streaming) check_drained();
  if (m_close_after_write && m_pending_writes == 0 && m_state == State::closing) {
    begin_linger();
    return;
  }
  if (m_state == State::idle || m_state == State::reading) resume_reading();
}

void Connection::begin_linger() {
  if (is_closed()) return;
  // Half-close and discard what the peer still sends for a moment, so our
  // final answer is not destroyed by a reset from unread input.
  m_state = State::lingering;
  if (m_io.shutdown() != 0) {
    close();
    return;
  }
  resume_reading();
  arm_timer(k_linger);
}

void Connection::arm_timer(std::chrono::milliseconds after) {
  if (is_closed()) return;
  m_timer_checks_drained = false;
  m_timer.start(static_cast<std::uint64_t>(after.count()), 0, [this] {
    auto keep = shared_from_this();
    on_timer();
  });
}

void Connection::on_timer() {
  if (m_timer_checks_drained) {
    m_timer_checks_drained = false;
    check_drained();
    return;
  }
  switch (m_state) {
    case State::reading:
      fail_request(408, "request not received in time");
      break;
    case State::idle:
    case State::lingering:
    case State::closing:
      close();
      break;
    default:  // streams have no timeout
      break;
  }
}

void Connection::drain() {
  switch (m_state) {
    case State::idle:
    case State::reading:
    case State::lingering:
      close();
      break;
    case State::streaming:
      close_after_flush();
      break;
    default:
      break;  // busy: closes after its answer (respond sees m_draining)
  }
}

void Connection::close() {
  if (m_closing_handles) return;
  m_closing_handles = true;
  m_state = State::closed;
  if (auto ex = std::move(m_current)) ex->abandon();
  if (auto st = std::move(m_stream)) st->fire_closed();
  m_timer.close();
  // Once the socket's close callback runs (after its writes' callbacks), the
  // server lets go of the connection. remove() may free the connection, and
  // with it the last reference to the server's state.
  m_io.close([server = m_keep_server, this] { server->remove(this); });
}

// ---------------------------------------------------------------------------
// Server::Impl

Result<> Server::Impl::listen_fd(int fd) {
  auto pipe = net::Pipe::create(m_loop);
  if (!pipe) return std::unexpected(pipe.error().context("initialising the listener"));
  const int rc = pipe->open(fd);
  m_listener = std::move(*pipe);
  if (rc != 0) {
    close_listener();
    return std::unexpected(net::uv_error(rc, "using the listening socket"));
  }
  return start_listening();
}

Result<std::uint16_t> Server::Impl::listen_loopback() {
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
  m_listener = std::move(*tcp);
  if (auto r = start_listening(); !r) return std::unexpected(r.error());
  return *port;
}

Result<> Server::Impl::start_listening() {
  // The server's state owns the listener: when it calls back, `this` is alive.
  const int rc = m_listener.listen(SOMAXCONN, [this](int status) { on_connection(status); });
  if (rc != 0) {
    close_listener();
    return std::unexpected(net::uv_error(rc, "listening on the socket"));
  }
  return {};
}

Result<> Server::Impl::listen_path(const std::filesystem::path& path) {
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

  struct stat st{};
  if (::lstat(p.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return fail(Errc::config, fmt::format("{} exists and is not a socket; move it away or "
                                            "choose another --socket",
                                            p));
    }
    const int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const bool live =
        probe >= 0 && ::connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    if (probe >= 0) ::close(probe);
    if (live) {
      return fail(Errc::already_exists,
                  fmt::format("another tokend is already running on {}; stop it first "
                              "(systemctl --user stop tokend, or kill it) or use another --socket",
                              p));
    }
    ::unlink(p.c_str());  // stale: nobody answers
    spdlog::info("replaced stale socket {}", p);
  }

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
  if (::lstat(p.c_str(), &st) == 0) m_socket_inode = st.st_ino;
  m_socket_path = path;
  return listen_fd(fd);
}

void Server::Impl::on_connection(int status) {
  if (status != 0) {
    spdlog::warn("accept failed: {}", uv_strerror(status));
    return;
  }
  auto conn = std::make_shared<Connection>(shared_from_this());
  auto r = conn->init(m_listener, m_tcp);
  m_connections.emplace(conn.get(), conn);
  if (!r) {
    spdlog::warn("{}", r.error().message);
    conn->close();
    return;
  }
  ++m_stats.connections_accepted;
  const bool over_limit = m_connections.size() > m_limits.max_connections;
  conn->start(over_limit);
}

void Server::Impl::remove(Connection* c) {
  auto it = m_connections.find(c);
  if (it == m_connections.end()) return;
  if (it->second->m_counted) --m_stats.open_connections;
  m_connections.erase(it);
  check_drained();
}

void Server::Impl::close_listener() {
  if (!m_listener.valid()) return;
  m_listener.close();
  // Remove the socket file if it is still the one we created.
  if (!m_socket_path.empty()) {
    struct stat st{};
    if (::lstat(m_socket_path.c_str(), &st) == 0 && st.st_ino == m_socket_inode) {
      ::unlink(m_socket_path.c_str());
    }
    m_socket_path.clear();
  }
}

void Server::Impl::drain(std::chrono::milliseconds grace, std::function<void()> done) {
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

void Server::Impl::check_drained() {
  if (!m_draining || !m_connections.empty() || !m_drain_done) return;
  m_drain_timer.close();
  auto done = std::move(m_drain_done);
  m_drain_done = nullptr;
  done();
}

void Server::Impl::close_all() {
  close_listener();
  std::vector<std::shared_ptr<Connection>> conns;
  for (auto& [_, c] : m_connections) conns.push_back(c);
  for (auto& c : conns) c->close();
}

// ---------------------------------------------------------------------------

Server::Server(net::Loop& loop, Router& router, ServerLimits limits)
    : m_impl(std::make_shared<Impl>(loop, router, limits)) {}

// Connections still closing keep the Impl alive until their close callbacks
// have run (on the loop, which must run before it closes), so nothing here
// waits and a Server may be destroyed from a loop callback.
Server::~Server() {
  m_impl->m_drain_done = nullptr;
  m_impl->close_all();
  m_impl->m_drain_timer.close();
}

Result<> Server::listen_path(const std::filesystem::path& path) {
  return m_impl->listen_path(path);
}
Result<> Server::listen_fd(int fd) {
  return m_impl->listen_fd(fd);
}
Result<std::uint16_t> Server::listen_loopback() {
  return m_impl->listen_loopback();
}
void Server::set_allowed_uids(std::set<uid_t> uids) {
  m_impl->m_allowed = std::move(uids);
}
void Server::set_limits(const ServerLimits& limits) {
  m_impl->m_limits = limits;
}
void Server::on_denied_peer(DeniedPeerHook hook) {
  m_impl->m_denied_hook = std::move(hook);
}
void Server::drain(std::chrono::milliseconds grace, std::function<void()> done) {
  m_impl->drain(grace, std::move(done));
}
void Server::close() {
  m_impl->close_all();
}
const ServerStats& Server::stats() const {
  return m_impl->m_stats;
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

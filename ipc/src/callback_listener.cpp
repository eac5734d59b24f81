#include "ipc/callback_listener.hpp"

#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <new>
#include <optional>
#include <set>
#include <string>

namespace tokend::ipc {

namespace {

namespace http = boost::beast::http;
namespace asio = boost::asio;

constexpr std::size_t k_max_connections = 16;
constexpr std::uint32_t k_max_header_bytes = 8192;
constexpr std::uint64_t k_request_timeout_ms = 10'000;

struct Shared;

// One accepted connection: its TCP handle and timer are freed when both
// close callbacks have run.
struct Conn {
  uv_tcp_t tcp{};
  uv_timer_t timer{};
  int open_handles = 0;
  std::shared_ptr<Shared> shared;
  std::optional<http::request_parser<http::empty_body>> parser;
  std::string inbuf;
  std::string out;
  uv_write_t write_req{};
  bool answered = false;
  bool closing = false;
  // Reset when the connection closes, so a late reply finds nothing.
  std::shared_ptr<Conn*> self = std::make_shared<Conn*>(this);
};

struct Shared {
  std::weak_ptr<Shared> self;
  uv_tcp_t* server = nullptr;  // freed in its close callback
  refresh::CallbackPort::Handler handler;
  std::set<Conn*> conns;
  bool closed = false;
};

void on_handle_closed(uv_handle_t* h) {
  auto* c = static_cast<Conn*>(h->data);
  if (--c->open_handles == 0) delete c;
}

void close_conn(Conn* c) {
  if (c->closing) return;
  c->closing = true;
  *c->self = nullptr;
  c->shared->conns.erase(c);
  uv_timer_stop(&c->timer);
  uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp), on_handle_closed);
  uv_close(reinterpret_cast<uv_handle_t*>(&c->timer), on_handle_closed);
}

void send_reply(Conn* c, const refresh::CallbackReply& reply) {
  if (c->answered || c->closing) return;
  c->answered = true;
  uv_read_stop(reinterpret_cast<uv_stream_t*>(&c->tcp));
  const char* reason = reply.status == 200 ? "OK" : reply.status == 404 ? "Not Found" : reply.status == 409 ? "Conflict"
                                                   : reply.status == 405 ? "Method Not Allowed" : "Bad Request";
  c->out = fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n"
      "Cache-Control: no-store\r\nReferrer-Policy: no-referrer\r\nX-Content-Type-Options: nosniff\r\n"
      "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'\r\n\r\n{}",
      reply.status, reason, reply.html.size(), reply.html);
  uv_buf_t buf = uv_buf_init(c->out.data(), static_cast<unsigned>(c->out.size()));
  c->write_req.data = c;
  const int rc = uv_write(&c->write_req, reinterpret_cast<uv_stream_t*>(&c->tcp), &buf, 1,
                          [](uv_write_t* req, int) { close_conn(static_cast<Conn*>(req->data)); });
  if (rc != 0) close_conn(c);
}

void on_request(Conn* c) {
  auto& msg = c->parser->get();
  const std::string target(msg.target());
  refresh::CallbackRequest req;
  req.method = std::string(msg.method_string());
  const auto q = target.find('?');
  req.path = target.substr(0, q);
  req.query = q == std::string::npos ? std::string() : target.substr(q + 1);
  std::weak_ptr<Conn*> weak = c->self;
  // Copy: the handler may close the listener, which resets shared->handler.
  auto handler = c->shared->handler;
  if (!handler) return send_reply(c, {503, "closed"});
  handler(req, [weak](refresh::CallbackReply reply) {
    auto self = weak.lock();
    if (self && *self != nullptr) send_reply(*self, reply);
  });
}

void on_read(uv_stream_t* stream, ssize_t n, const uv_buf_t* buf) {
  auto* c = static_cast<Conn*>(stream->data);
  std::unique_ptr<char[]> owned(buf->base);
  if (n < 0) {
    close_conn(c);
    return;
  }
  if (n == 0 || c->answered) return;
  // Beast consumes nothing of an incomplete header: keep the bytes and
  // offer them again with the next read.
  c->inbuf.append(buf->base, static_cast<std::size_t>(n));
  boost::system::error_code ec;
  const std::size_t used = c->parser->put(asio::buffer(c->inbuf.data(), c->inbuf.size()), ec);
  c->inbuf.erase(0, used);
  if (ec == http::error::need_more) {
    if (c->inbuf.size() > k_max_header_bytes) send_reply(c, {431, "header too large"});
    return;
  }
  if (ec) {
    send_reply(c, {400, "bad request"});
    return;
  }
  if (c->parser->is_header_done() && !c->parser->is_done()) {
    send_reply(c, {400, "a body is not expected here"});
    return;
  }
  if (c->parser->is_done()) on_request(c);
}

void on_connection(uv_stream_t* server, int status) {
  auto* shared = static_cast<Shared*>(server->data);
  if (status < 0 || shared->closed) return;
  auto* c = new Conn();
  c->tcp.data = c;
  c->timer.data = c;
  uv_tcp_init(server->loop, &c->tcp);
  uv_timer_init(server->loop, &c->timer);
  c->open_handles = 2;
  // The Shared block outlives its connections: find the owning shared_ptr.
  c->shared = shared->self.lock();
  if (uv_accept(server, reinterpret_cast<uv_stream_t*>(&c->tcp)) != 0 || !c->shared) {
    c->shared = nullptr;
    c->closing = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp), on_handle_closed);
    uv_close(reinterpret_cast<uv_handle_t*>(&c->timer), on_handle_closed);
    return;
  }
  if (shared->conns.size() >= k_max_connections) {
    c->closing = false;
    shared->conns.insert(c);
    close_conn(c);
    return;
  }
  shared->conns.insert(c);
  c->parser.emplace();
  c->parser->header_limit(k_max_header_bytes);
  c->parser->body_limit(0);
  c->parser->eager(true);
  uv_timer_start(&c->timer, [](uv_timer_t* t) { close_conn(static_cast<Conn*>(t->data)); }, k_request_timeout_ms, 0);
  const int rc = uv_read_start(
      reinterpret_cast<uv_stream_t*>(&c->tcp),
      [](uv_handle_t*, std::size_t, uv_buf_t* out) {
        out->base = new (std::nothrow) char[4096];
        out->len = out->base != nullptr ? 4096 : 0;
      },
      on_read);
  if (rc != 0) close_conn(c);
}

class Listener final : public refresh::CallbackListener {
 public:
  explicit Listener(std::shared_ptr<Shared> shared) : m_shared(std::move(shared)) {}
  ~Listener() override {
    m_shared->closed = true;
    m_shared->handler = nullptr;
    // Pending browsers get their answer from the handler's reply (if it
    // came) or a closed connection.
    auto conns = m_shared->conns;
    for (Conn* c : conns) {
      if (!c->answered) close_conn(c);
    }
    uv_close(reinterpret_cast<uv_handle_t*>(m_shared->server),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); });
    m_shared->server = nullptr;
  }
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

 private:
  std::shared_ptr<Shared> m_shared;
};

}  // namespace

Result<std::unique_ptr<refresh::CallbackListener>> UvCallbackPort::listen(const std::string& host, std::uint16_t port,
                                                                         Handler handler) {
  sockaddr_storage addr{};
  int rc = 0;
  if (host.find(':') != std::string::npos) {
    rc = uv_ip6_addr(host.c_str(), port, reinterpret_cast<sockaddr_in6*>(&addr));
  } else {
    rc = uv_ip4_addr(host.c_str(), port, reinterpret_cast<sockaddr_in*>(&addr));
  }
  if (rc != 0) return fail(Errc::invalid_argument, fmt::format("the redirect URI's host {} is not an IP address", host));
  auto shared = std::make_shared<Shared>();
  shared->self = shared;
  shared->handler = std::move(handler);
  auto* server = new uv_tcp_t();
  uv_tcp_init(m_loop.get(), server);
  server->data = shared.get();
  shared->server = server;
  auto close_server = [server] { uv_close(reinterpret_cast<uv_handle_t*>(server), [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); }); };
  const std::string where = host.find(':') != std::string::npos ? fmt::format("[{}]:{}", host, port) : fmt::format("{}:{}", host, port);
  // No SO_REUSEADDR games: a port someone else holds must fail loudly.
  rc = uv_tcp_bind(server, reinterpret_cast<const sockaddr*>(&addr), 0);
  if (rc == 0) rc = uv_listen(reinterpret_cast<uv_stream_t*>(server), 16, on_connection);
  if (rc != 0) {
    close_server();
    if (rc == UV_EADDRINUSE) {
      return fail(Errc::conflict, fmt::format("the redirect URI's address {} is in use by another program", where));
    }
    return fail(Errc::io, fmt::format("cannot listen on {} for the login redirect: {}", where, uv_strerror(rc)));
  }
  spdlog::debug("login: listening on {} for the redirect", where);
  return std::unique_ptr<refresh::CallbackListener>(std::make_unique<Listener>(std::move(shared)));
}

}  // namespace tokend::ipc

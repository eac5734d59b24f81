#include "login/callback_listener.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <list>
#include <map>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "net/url.hpp"

namespace tokend::login {

namespace {

namespace http = boost::beast::http;
namespace asio = boost::asio;

constexpr std::size_t k_max_connections = 16;
constexpr std::uint32_t k_max_header_bytes = 8192;
// A browser sends its request as soon as it connects; a connection without
// a whole request after this long is someone else's, or a preconnect the
// browser replaces.
constexpr std::uint64_t k_request_timeout_ms = 3'000;

struct Shared;

// One accepted connection. Its handles' callbacks use it freely: it owns
// them. While open it is held by Shared::conns; once closing, by its
// socket's close callback, which runs after the write's callback.
struct Conn : std::enable_shared_from_this<Conn> {
  net::Tcp tcp;
  net::Timer timer;
  std::shared_ptr<Shared> shared;
  std::optional<http::request_parser<http::empty_body>> parser;
  std::string inbuf;
  bool answered = false;
  bool closing = false;        // a late reply finds nothing to answer
  bool dispatched = false;     // a whole request reached the handler
  std::uint64_t sequence = 0;  // accept order, for evicting the oldest idle one
};

struct Shared {
  explicit Shared(net::Loop& l) : loop(l) {}
  net::Loop& loop;
  std::weak_ptr<Shared> self;
  std::list<net::Tcp> servers;  // the callbacks of each use this block, which owns them
  login::CallbackPort::Handler handler;
  std::map<Conn*, std::shared_ptr<Conn>> conns;  // the open ones
  std::uint64_t accepted = 0;
  std::uint16_t port = 0;
  bool closed = false;
};

// The Host a browser sends for a loopback redirect URI: a loopback literal
// or localhost, with our port. Anything else is a page that made some name
// resolve to 127.0.0.1 (DNS rebinding), or not a browser following our
// redirect at all.
bool loopback_host(std::string_view host, std::uint16_t port) {
  std::string_view name;
  std::string_view port_text;
  if (host.starts_with('[')) {
    const auto close = host.find(']');
    if (close == std::string_view::npos) return false;
    name = host.substr(0, close + 1);  // with its brackets, as is_loopback_host takes it
    const auto rest = host.substr(close + 1);
    if (!rest.empty() && !rest.starts_with(':')) return false;
    port_text = rest.empty() ? rest : rest.substr(1);
  } else {
    const auto colon = host.rfind(':');
    name = host.substr(0, colon);
    port_text = colon == std::string_view::npos ? std::string_view{} : host.substr(colon + 1);
  }
  const bool port_ok = port_text.empty() ? port == 80 : port_text == std::to_string(port);
  return port_ok && net::is_loopback_host(name);
}

void close_conn(Conn* c) {
  if (c->closing) return;
  c->closing = true;
  std::shared_ptr<Conn> keep = c->shared_from_this();
  c->shared->conns.erase(c);
  c->timer.close();
  c->tcp.close([keep] {});
}

void send_reply(Conn* c, const login::CallbackReply& reply) {
  if (c->answered || c->closing) return;
  c->answered = true;
  c->tcp.read_stop();
  const char* reason = reply.status == 200   ? "OK"
                       : reply.status == 404 ? "Not Found"
                       : reply.status == 409 ? "Conflict"
                       : reply.status == 405 ? "Method Not Allowed"
                                             : "Bad Request";
  std::string out = fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: "
      "{}\r\nConnection: close\r\n"
      "Cache-Control: no-store\r\nReferrer-Policy: no-referrer\r\nX-Content-Type-Options: "
      "nosniff\r\n"
      "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'\r\n\r\n{}",
      reply.status, reason, reply.html.size(), reply.html);
  const int rc =
      c->tcp.write(std::move(out), [keep = c->shared_from_this()](int) { close_conn(keep.get()); });
  if (rc != 0) close_conn(c);
}

void on_request(Conn* c) {
  c->dispatched = true;
  auto& msg = c->parser->get();
  const auto host = msg.find(http::field::host);
  if (host == msg.end() ||
      !loopback_host(std::string_view(host->value().data(), host->value().size()),
                     c->shared->port)) {
    return send_reply(c,
                      {400, "The Host of this request is not this computer's loopback address."});
  }
  const std::string target(msg.target());
  login::CallbackRequest req;
  req.method = std::string(msg.method_string());
  const auto q = target.find('?');
  req.path = target.substr(0, q);
  req.query = q == std::string::npos ? std::string() : target.substr(q + 1);
  std::weak_ptr<Conn> weak = c->weak_from_this();
  // Copy: the handler may close the listener, which resets shared->handler.
  auto handler = c->shared->handler;
  if (!handler) return send_reply(c, {503, "closed"});
  handler(req, [weak](const login::CallbackReply& reply) {
    if (auto self = weak.lock()) send_reply(self.get(), reply);
  });
}

void on_read(Conn* c, ssize_t n, const uv_buf_t* buf) {
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

void on_connection(Shared* shared, net::Tcp& server, int status) {
  if (status < 0 || shared->closed) return;
  auto c = std::make_shared<Conn>();
  auto tcp = net::Tcp::create(shared->loop);
  auto timer = net::Timer::create(shared->loop);
  if (!tcp || !timer) return;
  c->tcp = std::move(*tcp);
  c->timer = std::move(*timer);
  // The Shared block outlives its connections: find the owning shared_ptr.
  c->shared = shared->self.lock();
  if (server.accept(c->tcp) != 0 || !c->shared) {
    c->closing = true;
    return;  // its handles close with it
  }
  if (shared->conns.size() >= k_max_connections) {
    // Full: the oldest connection that has not sent a whole request makes
    // room, so idle connections (another user's, or the browser's spare
    // preconnects) cannot keep the browser's redirect out.
    Conn* oldest = nullptr;
    for (const auto& [other, _] : shared->conns) {
      if (!other->dispatched && (oldest == nullptr || other->sequence < oldest->sequence))
        oldest = other;
    }
    if (oldest == nullptr) {
      close_conn(c.get());
      return;
    }
    close_conn(oldest);
  }
  c->sequence = ++shared->accepted;
  shared->conns.emplace(c.get(), c);
  c->parser.emplace();
  c->parser->header_limit(k_max_header_bytes);
  c->parser->body_limit(0);
  c->parser->eager(true);
  Conn* raw = c.get();
  raw->timer.start(k_request_timeout_ms, 0, [raw] { close_conn(raw); });
  const int rc = raw->tcp.read_start(
      [](std::size_t, uv_buf_t* out) {
        out->base = new (std::nothrow) char[4096];
        out->len = out->base != nullptr ? 4096 : 0;
      },
      [raw](ssize_t n, const uv_buf_t* buf) { on_read(raw, n, buf); });
  if (rc != 0) close_conn(raw);
}

class Listener final : public login::CallbackListener {
 public:
  explicit Listener(std::shared_ptr<Shared> shared) : m_shared(std::move(shared)) {}
  ~Listener() override {
    m_shared->closed = true;
    m_shared->handler = nullptr;
    // Pending browsers get their answer from the handler's reply (if it
    // came) or a closed connection.
    std::vector<Conn*> conns;
    for (const auto& [c, _] : m_shared->conns) conns.push_back(c);
    for (Conn* c : conns) {
      if (!c->answered) close_conn(c);
    }
    m_shared->servers.clear();
  }
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

 private:
  std::shared_ptr<Shared> m_shared;
};

}  // namespace

Result<std::unique_ptr<login::CallbackListener>> UvCallbackPort::listen(const std::string& host,
                                                                        std::uint16_t port,
                                                                        Handler handler) {
  // "localhost" is whatever the browser resolves it to, and browsers try
  // ::1 first: both addresses are bound, or the start fails, so that no
  // other program holding one of them receives the code. Only a machine
  // without IPv6 (where nobody can bind ::1) goes without it.
  const bool localhost = host == "localhost";
  const std::vector<std::string> addresses =
      localhost ? std::vector<std::string>{"127.0.0.1", "::1"} : std::vector<std::string>{host};
  auto shared = std::make_shared<Shared>(m_loop);
  shared->self = shared;
  shared->handler = std::move(handler);
  shared->port = port;
  auto fail_all = [&](Error e) -> Result<std::unique_ptr<login::CallbackListener>> {
    shared->servers.clear();
    return std::unexpected(std::move(e));
  };
  for (const auto& address : addresses) {
    const bool v6 = address.find(':') != std::string::npos;
    sockaddr_storage addr{};
    int rc = v6 ? uv_ip6_addr(address.c_str(), port, reinterpret_cast<sockaddr_in6*>(&addr))
                : uv_ip4_addr(address.c_str(), port, reinterpret_cast<sockaddr_in*>(&addr));
    if (rc != 0) {
      return fail_all(
          Error{Errc::invalid_argument,
                fmt::format("the redirect URI's host {} is not an IP address", address)});
    }
    auto tcp = net::Tcp::create(m_loop);
    if (!tcp) return fail_all(tcp.error());
    net::Tcp& server = shared->servers.emplace_back(std::move(*tcp));
    const std::string where =
        v6 ? fmt::format("[{}]:{}", address, port) : fmt::format("{}:{}", address, port);
    // No SO_REUSEADDR games: a port someone else holds must fail loudly.
    // IPV6ONLY: [::1] must not also take the IPv4 side.
    rc = server.bind(reinterpret_cast<const sockaddr*>(&addr), v6 ? UV_TCP_IPV6ONLY : 0);
    // The Shared block owns the listening handle: when it calls back, both are alive.
    if (rc == 0) {
      rc = server.listen(
          16, [s = shared.get(), &server](int status) { on_connection(s, server, status); });
    }
    if (rc != 0) {
      shared->servers.pop_back();
      if (localhost && v6 && (rc == UV_EADDRNOTAVAIL || rc == UV_EAFNOSUPPORT)) {
        spdlog::debug("login: no IPv6 loopback here; localhost redirects reach 127.0.0.1 only");
        continue;
      }
      if (rc == UV_EADDRINUSE) {
        return fail_all(
            Error{Errc::conflict,
                  fmt::format("the redirect URI's address {}{} is in use by another program", where,
                              localhost ? " (localhost)" : "")});
      }
      return fail_all(Error{Errc::io, fmt::format("cannot listen on {} for the login redirect: {}",
                                                  where, uv_strerror(rc))});
    }
    spdlog::debug("login: listening on {} for the redirect", where);
  }
  return std::unique_ptr<login::CallbackListener>(std::make_unique<Listener>(std::move(shared)));
}

}  // namespace tokend::login

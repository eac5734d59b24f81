#include "ipc/client.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <boost/beast/core/buffers_range.hpp>
#include <boost/beast/http/basic_parser.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/message.hpp>
#include <fmt/format.h>

#include "core/secret.hpp"

namespace tokend::ipc {

namespace http = boost::beast::http;
namespace asio = boost::asio;

namespace {

// A response parser that hands body bytes to a callback as they arrive
// (the API's event stream is an endless body).
class StreamingParser final : public http::basic_parser<false> {
 public:
  std::function<void(int)> on_status;
  std::function<bool(std::string_view)> on_data;
  int status = 0;
  Headers headers;
  bool stop = false;

 private:
  void on_request_impl(http::verb, boost::beast::string_view, boost::beast::string_view, int,
                       boost::system::error_code&) override {}
  void on_response_impl(int code, boost::beast::string_view, int, boost::system::error_code&) override {
    status = code;
  }
  void on_field_impl(http::field, boost::beast::string_view name, boost::beast::string_view value,
                     boost::system::error_code&) override {
    headers.emplace_back(std::string(name), std::string(value));
  }
  void on_header_impl(boost::system::error_code&) override {
    if (on_status) on_status(status);
  }
  void on_body_init_impl(const boost::optional<std::uint64_t>&, boost::system::error_code&) override {}
  std::size_t on_body_impl(boost::beast::string_view body, boost::system::error_code&) override {
    if (!stop && on_data && !on_data(std::string_view(body.data(), body.size()))) stop = true;
    return body.size();
  }
  void on_chunk_header_impl(std::uint64_t, boost::beast::string_view, boost::system::error_code&) override {}
  std::size_t on_chunk_body_impl(std::uint64_t, boost::beast::string_view body,
                                 boost::system::error_code& ec) override {
    return on_body_impl(body, ec);
  }
  void on_finish_impl(boost::system::error_code&) override {}
};

std::string serialize_request(std::string_view method, std::string_view target, std::string_view body,
                              const Headers& headers) {
  http::request<http::string_body> req;
  req.method_string(boost::beast::string_view(method.data(), method.size()));
  req.target(boost::beast::string_view(target.data(), target.size()));
  req.version(11);
  req.set(http::field::host, "tokend");
  req.set(http::field::user_agent, "tokenctl");
  for (const auto& [k, v] : headers) req.set(k, v);
  if (!body.empty()) {
    req.body() = std::string(body);
    if (req.find(http::field::content_type) == req.end()) req.set(http::field::content_type, "application/json");
  }
  req.prepare_payload();
  std::string out;
  http::request_serializer<http::string_body> sr{req};
  boost::system::error_code ec;
  do {
    sr.next(ec, [&](boost::system::error_code&, const auto& buffers) {
      for (const auto b : boost::beast::buffers_range_ref(buffers)) out.append(static_cast<const char*>(b.data()), b.size());
      sr.consume(boost::beast::buffer_bytes(buffers));
    });
  } while (!ec && !sr.is_done());
  // The serialised copy of the body may carry a secret (PUT with a token).
  std::fill(req.body().begin(), req.body().end(), '\0');
  return out;
}

}  // namespace

// Feeds received bytes to `parser` until it is done, the peer closes, or the
// callback asked to stop. deadline: none when nullopt.
Result<> Client::receive(http::basic_parser<false>& parser, const bool& stop,
                         std::optional<std::chrono::steady_clock::time_point> deadline) {
  std::string buf;
  char chunk[16 * 1024];
  struct Wipe {
    char* p;
    std::size_t n;
    ~Wipe() { secure_wipe(p, n); }
  } wipe{chunk, sizeof chunk};
  while (!parser.is_done() && !stop) {
    if (deadline) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*deadline - std::chrono::steady_clock::now());
      pollfd pfd{m_fd, POLLIN, 0};
      const int pr = left.count() <= 0 ? 0 : ::poll(&pfd, 1, static_cast<int>(left.count()));
      if (pr == 0) return fail(Errc::timeout, "tokend did not answer in time");
      if (pr < 0 && errno == EINTR) continue;
    }
    const ssize_t n = ::recv(m_fd, chunk, sizeof chunk, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(Errc::unavailable, fmt::format("reading from tokend: {}", errno_text(errno)));
    }
    boost::system::error_code ec;
    if (n == 0) {
      // Beast completes a parser that has seen no byte at all on EOF (as an
      // empty response with status 0); for us that is a connection closed
      // without an answer.
      if (!parser.got_some()) return fail(Errc::protocol, "tokend closed the connection before answering");
      parser.put_eof(ec);
      if (ec || !parser.is_done()) return fail(Errc::protocol, "tokend closed the connection before answering");
      return {};
    }
    buf.append(chunk, static_cast<std::size_t>(n));
    for (;;) {
      const std::size_t used = parser.put(asio::buffer(buf.data(), buf.size()), ec);
      buf.erase(0, used);
      if (ec == http::error::need_more) break;
      if (ec) return fail(Errc::protocol, "malformed answer from tokend: " + ec.message());
      if (parser.is_done() || buf.empty()) break;
    }
  }
  return {};
}

Result<Client> Client::connect(const std::filesystem::path& socket) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string p = socket.string();
  if (p.size() >= sizeof addr.sun_path) {
    return fail(Errc::invalid_argument, fmt::format("socket path {} is too long", p));
  }
  std::memcpy(addr.sun_path, p.c_str(), p.size() + 1);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(Errc::io, "creating a socket: " + errno_text(errno));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    const int err = errno;
    ::close(fd);
    return fail(Errc::unavailable, fmt::format("tokend is not reachable at {} ({})", p, errno_text(err)));
  }
  return Client(fd, socket);
}

Client::~Client() {
  if (m_fd >= 0) ::close(m_fd);
}

Result<> Client::send_all(std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(m_fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(Errc::unavailable, fmt::format("sending to tokend at {}: {}", m_socket.string(), errno_text(errno)));
    }
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return {};
}

Result<ClientResponse> Client::request(std::string_view method, std::string_view target, std::string_view body,
                                       const Headers& headers, std::chrono::milliseconds timeout) {
  if (auto sent = send_request(method, target, body, headers); !sent) return std::unexpected(sent.error());
  return read_response(timeout);
}

Result<> Client::send_request(std::string_view method, std::string_view target, std::string_view body,
                              const Headers& headers) {
  std::string wire = serialize_request(method, target, body, headers);
  auto sent = send_all(wire);
  std::fill(wire.begin(), wire.end(), '\0');
  return sent;
}

Result<ClientResponse> Client::read_response(std::chrono::milliseconds timeout) {
  ClientResponse out;
  StreamingParser parser;
  parser.body_limit(64 * 1024 * 1024);
  parser.on_data = [&](std::string_view d) {
    out.body.append(d);
    return true;
  };
  std::optional<std::chrono::steady_clock::time_point> deadline;
  if (timeout.count() > 0) deadline = std::chrono::steady_clock::now() + timeout;
  if (auto r = receive(parser, parser.stop, deadline); !r) {
    if (r.error().code == Errc::timeout) {
      return fail(Errc::timeout, fmt::format("tokend did not answer within {} s", timeout.count() / 1000));
    }
    return std::unexpected(r.error());
  }
  out.status = parser.status;
  out.headers = std::move(parser.headers);
  return out;
}

Result<> Client::stream(std::string_view target, const std::function<void(int)>& on_status,
                        const std::function<bool(std::string_view)>& on_data) {
  if (auto r = send_all(serialize_request("GET", target, {}, {{"Accept", "text/event-stream"}})); !r) return r;
  StreamingParser parser;
  parser.body_limit(boost::none);
  parser.on_status = on_status;
  parser.on_data = on_data;
  auto r = receive(parser, parser.stop, std::nullopt);
  // An event stream ends when tokend closes it: that is not an error here.
  if (!r && r.error().code != Errc::protocol) return r;
  return {};
}

}  // namespace tokend::ipc

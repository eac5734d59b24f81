#include "client/client.hpp"

#include <fmt/format.h>
#include <poll.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <boost/beast/core/buffers_range.hpp>
#include <boost/beast/http/basic_parser.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/string_body.hpp>
#include <cerrno>
#include <cstring>
#include <limits>

#include "core/fs.hpp"
#include "core/secret.hpp"

namespace tokend::client {

namespace http = boost::beast::http;
namespace asio = boost::asio;

namespace {

// A response parser that hands body bytes to a callback as they arrive
// (the API's event stream is an endless body).
class StreamingParser final : public http::basic_parser<false> {
 public:
  std::function<bool(const ResponseHead&)> on_head;
  std::function<bool(std::string_view)> on_data;
  ResponseHead head;
  bool stop = false;

 private:
  void on_request_impl(http::verb, boost::beast::string_view, boost::beast::string_view, int,
                       boost::system::error_code&) override {}
  void on_response_impl(int code, boost::beast::string_view reason, int,
                        boost::system::error_code&) override {
    head.status = code;
    head.reason.assign(reason.data(), reason.size());
  }
  void on_field_impl(http::field, boost::beast::string_view name, boost::beast::string_view value,
                     boost::system::error_code&) override {
    head.headers.emplace_back(std::string(name), std::string(value));
  }
  void on_header_impl(boost::system::error_code&) override {
    if (on_head && !on_head(head)) stop = true;
  }
  void on_body_init_impl(const boost::optional<std::uint64_t>&,
                         boost::system::error_code&) override {}
  std::size_t on_body_impl(boost::beast::string_view body, boost::system::error_code&) override {
    if (!stop && on_data && !body.empty() && !on_data(std::string_view(body.data(), body.size())))
      stop = true;
    return body.size();
  }
  void on_chunk_header_impl(std::uint64_t, boost::beast::string_view,
                            boost::system::error_code&) override {}
  std::size_t on_chunk_body_impl(std::uint64_t, boost::beast::string_view body,
                                 boost::system::error_code& ec) override {
    return on_body_impl(body, ec);
  }
  void on_finish_impl(boost::system::error_code&) override {}
};

// RFC 9110 §5.6.2 token characters (header names, methods).
bool is_token(std::string_view s) {
  if (s.empty()) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
  });
}

// What would let a caller inject a header or a second request: a method or
// header name that is not a token, a CR, LF or NUL in a value, a target that
// is not an absolute path or has white space or control characters.
Result<> check_request(std::string_view method, std::string_view target, const Headers& headers) {
  if (!is_token(method))
    return fail(Errc::invalid_argument, "the request method is not an HTTP token");
  const bool target_ok =
      target.starts_with('/') && std::none_of(target.begin(), target.end(), [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return u <= 0x20 || u == 0x7f;
      });
  if (!target_ok) {
    return fail(Errc::invalid_argument,
                "the request target must be a path without spaces or control characters");
  }
  for (const auto& [name, value] : headers) {
    if (!is_token(name))
      return fail(Errc::invalid_argument, fmt::format("'{}' is not a valid header name", name));
    if (value.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos) {
      return fail(Errc::invalid_argument,
                  fmt::format("the value of header {} contains a line break or NUL", name));
    }
  }
  return {};
}

bool same_name(std::string_view a, std::string_view b) {
  return a.size() == b.size() && ::strncasecmp(a.data(), b.data(), a.size()) == 0;
}

std::string serialize_request(std::string_view method, std::string_view target,
                              std::string_view body, const Headers& headers) {
  http::request<http::string_body> req;
  req.method_string(boost::beast::string_view(method.data(), method.size()));
  req.target(boost::beast::string_view(target.data(), target.size()));
  req.version(11);
  req.set(http::field::host, "tokend");
  req.set(http::field::user_agent, "tokenctl");
  for (const auto& [k, v] : headers) req.set(k, v);
  if (!body.empty()) {
    req.body() = std::string(body);
    if (req.find(http::field::content_type) == req.end())
      req.set(http::field::content_type, "application/json");
  }
  req.prepare_payload();
  std::string out;
  http::request_serializer<http::string_body> sr{req};
  boost::system::error_code ec;
  do {
    sr.next(ec, [&](boost::system::error_code&, const auto& buffers) {
      for (const auto b : boost::beast::buffers_range_ref(buffers))
        out.append(static_cast<const char*>(b.data()), b.size());
      sr.consume(boost::beast::buffer_bytes(buffers));
    });
  } while (!ec && !sr.is_done());
  // The serialised copy of the body may carry a secret (PUT with a token).
  std::fill(req.body().begin(), req.body().end(), '\0');
  return out;
}

}  // namespace

// Feeds received bytes to `parser` until it is done, the peer closes, or the
// callback asked to stop.
Result<> Client::receive(http::basic_parser<false>& parser, const bool& stop, Wait wait) {
  using clock = std::chrono::steady_clock;
  std::string buf;
  char chunk[16 * 1024];
  struct Wipe {
    char* p;
    std::size_t n;
    ~Wipe() { secure_wipe(p, n); }
  } wipe{chunk, sizeof chunk};
  std::optional<clock::time_point> deadline = wait.deadline;
  if (wait.idle.count() > 0) deadline = clock::now() + wait.idle;
  while (!parser.is_done() && !stop) {
    if (deadline) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(*deadline - clock::now());
      pollfd pfd{m_fd.get(), POLLIN, 0};
      const int pr =
          left.count() <= 0
              ? 0
              : ::poll(&pfd, 1, static_cast<int>(std::min<std::int64_t>(left.count(), 3'600'000)));
      if (pr == 0) {
        if (clock::now() < *deadline) continue;  // a wait longer than poll() takes at once
        return fail(Errc::timeout, "tokend did not answer in time");
      }
      if (pr < 0 && errno == EINTR) continue;
    }
    const ssize_t n = ::recv(m_fd.get(), chunk, sizeof chunk, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(Errc::unavailable, fmt::format("reading from tokend: {}", errno_text(errno)));
    }
    if (wait.idle.count() > 0) deadline = clock::now() + wait.idle;
    boost::system::error_code ec;
    if (n == 0) {
      // Beast completes a parser that has seen no byte at all on EOF (as an
      // empty response with status 0); for us that is a connection closed
      // without an answer.
      if (!parser.got_some())
        return fail(Errc::protocol, "tokend closed the connection before answering");
      parser.put_eof(ec);
      if (ec || !parser.is_done()) {
        return fail(Errc::protocol, parser.is_header_done()
                                        ? "tokend closed the connection in the middle of the answer"
                                        : "tokend closed the connection before answering");
      }
      return {};
    }
    buf.append(chunk, static_cast<std::size_t>(n));
    for (;;) {
      const std::size_t used = parser.put(asio::buffer(buf.data(), buf.size()), ec);
      buf.erase(0, used);
      if (ec == http::error::need_more) break;
      if (ec) return fail(Errc::protocol, "malformed answer from tokend: " + ec.message());
      if (parser.is_done() || buf.empty() || stop) break;
    }
  }
  return {};
}

namespace {

// Whose process is at the other end of a connected Unix socket.
Result<uid_t> peer_uid(int fd) {
#ifdef __linux__
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return fail(Errc::io, "reading the peer credentials of tokend's socket: " + errno_text(errno));
  }
  return cred.uid;
#else
  uid_t uid = 0;
  gid_t gid = 0;
  if (::getpeereid(fd, &uid, &gid) != 0) {
    return fail(Errc::io, "reading the peer credentials of tokend's socket: " + errno_text(errno));
  }
  return uid;
#endif
}

}  // namespace

Result<Client> Client::connect(const std::filesystem::path& socket) {
  // Another user can create the socket's directory first (the /tmp fallback
  // when XDG_RUNTIME_DIR is unset) and listen there: nothing is sent to a
  // socket in a directory that is not ours and private, or to a process
  // that does not run as us.
  const std::filesystem::path dir =
      socket.has_parent_path() ? socket.parent_path() : std::filesystem::path(".");
  if (auto ok = fs::check_private_dir(dir); !ok) {
    if (ok.error().code == Errc::not_found) {
      return fail(Errc::unavailable,
                  fmt::format("tokend is not reachable at {} ({} does not exist)", socket.string(),
                              dir.string()));
    }
    return fail(Errc::permission,
                fmt::format("refusing to talk to the socket {}: {}. Someone else may be "
                            "listening there; tokenctl sends nothing to it",
                            socket.string(), ok.error().message));
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string p = socket.string();
  if (p.size() >= sizeof addr.sun_path) {
    return fail(Errc::invalid_argument, fmt::format("socket path {} is too long", p));
  }
  std::memcpy(addr.sun_path, p.c_str(), p.size() + 1);
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return fail(Errc::io, "creating a socket: " + errno_text(errno));
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    const int err = errno;
    return fail(Errc::unavailable,
                fmt::format("tokend is not reachable at {} ({})", p, errno_text(err)));
  }
  Client client(std::move(fd), socket);
  auto uid = peer_uid(client.fd());
  if (!uid) return std::unexpected(uid.error());
  if (*uid != ::geteuid()) {
    return fail(Errc::permission,
                fmt::format("refusing to talk to the socket {}: the process listening there runs "
                            "as uid {}, not as you (uid {}); tokenctl sends nothing to it",
                            p, *uid, ::geteuid()));
  }
  return client;
}

Result<> Client::send_all(std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(m_fd.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(Errc::unavailable,
                  fmt::format("sending to tokend at {}: {}", m_socket.string(), errno_text(errno)));
    }
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return {};
}

// Non-blocking sends between polls that also watch for the answer: a server
// that answers early and stops reading must not leave us blocked in send().
Result<bool> Client::send_watching(std::string_view bytes, std::chrono::milliseconds idle) {
  while (!bytes.empty()) {
    pollfd pfd{m_fd.get(), POLLIN | POLLOUT, 0};
    const int pr = ::poll(
        &pfd, 1,
        idle.count() > 0 ? static_cast<int>(std::min<std::int64_t>(idle.count(), 3'600'000)) : -1);
    if (pr < 0) {
      if (errno == EINTR) continue;
      return fail(Errc::io, "waiting for tokend: " + errno_text(errno));
    }
    if (pr == 0) return fail(Errc::timeout, "tokend stopped taking the request body");
    if ((pfd.revents & (POLLIN | POLLHUP)) != 0) return false;  // an answer (or a close) came first
    const ssize_t n = ::send(m_fd.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      if (errno == EPIPE || errno == ECONNRESET)
        return false;  // maybe an answer is waiting: read it
      return fail(Errc::unavailable,
                  fmt::format("sending to tokend at {}: {}", m_socket.string(), errno_text(errno)));
    }
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

Result<ClientResponse> Client::request(std::string_view method, std::string_view target,
                                       std::string_view body, const Headers& headers,
                                       std::chrono::milliseconds timeout) {
  if (auto sent = send_request(method, target, body, headers); !sent)
    return std::unexpected(sent.error());
  return read_response(timeout);
}

Result<> Client::send_request(std::string_view method, std::string_view target,
                              std::string_view body, const Headers& headers) {
  if (auto ok = check_request(method, target, headers); !ok) return ok;
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
  Wait wait;
  if (timeout.count() > 0) wait.deadline = std::chrono::steady_clock::now() + timeout;
  if (auto r = receive(parser, parser.stop, wait); !r) {
    if (r.error().code == Errc::timeout) {
      return fail(Errc::timeout,
                  fmt::format("tokend did not answer within {} s", timeout.count() / 1000));
    }
    return std::unexpected(r.error());
  }
  out.status = parser.head.status;
  out.headers = std::move(parser.head.headers);
  return out;
}

BodyReader BodyReader::from_fd(int fd, std::string what) {
  BodyReader r;
  struct stat st{};
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
    const off_t at = ::lseek(fd, 0, SEEK_CUR);
    const off_t start = at < 0 ? 0 : std::min(at, st.st_size);
    r.length = static_cast<std::uint64_t>(st.st_size - start);
  }
  r.read = [fd, what = std::move(what)](std::span<char> buf) -> Result<std::size_t> {
    for (;;) {
      const ssize_t n = ::read(fd, buf.data(), buf.size());
      if (n >= 0) return static_cast<std::size_t>(n);
      if (errno != EINTR)
        return fail(Errc::io, fmt::format("reading {}: {}", what, errno_text(errno)));
    }
  };
  return r;
}

BodyReader BodyReader::from_string(std::string_view bytes) {
  BodyReader r;
  r.length = bytes.size();
  r.read = [bytes](std::span<char> buf) mutable -> Result<std::size_t> {
    const std::size_t n = std::min(buf.size(), bytes.size());
    std::memcpy(buf.data(), bytes.data(), n);
    bytes.remove_prefix(n);
    return n;
  };
  return r;
}

Result<ResponseHead> Client::exchange(std::string_view method, std::string_view target,
                                      const Headers& headers, BodyReader* body,
                                      const std::function<bool(const ResponseHead&)>& on_head,
                                      const std::function<bool(std::string_view)>& on_data,
                                      std::chrono::milliseconds idle_timeout) {
  if (auto ok = check_request(method, target, headers); !ok) return std::unexpected(ok.error());
  for (const auto& h : headers) {
    if (same_name(h.first, "Content-Length") || same_name(h.first, "Transfer-Encoding")) {
      return fail(Errc::invalid_argument,
                  fmt::format("{} is set from the body, not by the caller", h.first));
    }
  }
  // The header block by hand: everything in it was checked above, and the
  // framing (Content-Length or chunked) depends on the body reader.
  std::string head = fmt::format("{} {} HTTP/1.1\r\nHost: tokend\r\n", method, target);
  if (std::none_of(headers.begin(), headers.end(),
                   [](const auto& h) { return same_name(h.first, "User-Agent"); })) {
    head += "User-Agent: tokenctl\r\n";
  }
  for (const auto& [name, value] : headers) {
    if (!same_name(name, "Host")) head += fmt::format("{}: {}\r\n", name, value);
  }
  const bool chunked = body != nullptr && !body->length;
  if (chunked) {
    head += "Transfer-Encoding: chunked\r\n";
  } else if (body != nullptr) {
    head += fmt::format("Content-Length: {}\r\n", *body->length);
  }
  head += "\r\n";

  // A failure to send is a lost connection, whatever errno said.
  const auto lost = [](const Error& e) {
    return e.code == Errc::timeout ? e : Error(Errc::unavailable, e.message);
  };
  auto sent = send_watching(head, idle_timeout);
  secure_wipe(head);
  if (!sent) return std::unexpected(lost(sent.error()));
  bool all_sent = *sent;
  if (all_sent && body != nullptr) {
    constexpr std::size_t k_piece = 64 * 1024;
    std::string wire;  // one piece, in its chunk frame when chunked; wiped
    wire.reserve(k_piece + 32);
    std::string buf(k_piece, '\0');
    struct Wipe {
      std::string& s;
      ~Wipe() { secure_wipe(s); }
    } wipe_wire{wire}, wipe_buf{buf};
    std::uint64_t left = body->length.value_or(0);
    bool done = false;
    while (!done && all_sent) {
      std::size_t want = k_piece;
      if (!chunked) {
        if (left == 0) break;
        want = static_cast<std::size_t>(std::min<std::uint64_t>(left, want));
      }
      auto got = body->read(std::span<char>(buf.data(), want));
      if (!got) return std::unexpected(got.error());
      if (*got == 0 && !chunked) {
        return fail(Errc::io,
                    fmt::format("the request body ended {} bytes short of the {} announced", left,
                                *body->length));
      }
      std::string_view piece(buf.data(), *got);
      if (chunked) {
        // A zero-length chunk is the last one: "0\r\n\r\n" (no trailers).
        wire.clear();
        wire += fmt::format("{:x}\r\n", *got);
        wire.append(piece);
        wire += "\r\n";
        piece = wire;
        done = *got == 0;
      } else {
        left -= *got;
      }
      auto s = send_watching(piece, idle_timeout);
      if (!s) return std::unexpected(lost(s.error()));
      all_sent = *s;
    }
  }

  StreamingParser parser;
  // No limit. Not boost::none: Boost 1.74 compares a Content-Length with an
  // empty optional limit as exceeding it.
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());
  parser.on_head = on_head;
  parser.on_data = on_data;
  if (method == "HEAD") parser.skip(true);
  Wait wait;
  wait.idle = idle_timeout;
  if (auto r = receive(parser, parser.stop, wait); !r) {
    // An answer that never started after the body was cut short: what broke
    // was the connection (tokend closed it mid-request).
    if (!all_sent && !parser.got_some()) {
      return fail(Errc::unavailable,
                  fmt::format("tokend at {} closed the connection while the request body was "
                              "being sent",
                              m_socket.string()));
    }
    return std::unexpected(r.error());
  }
  return std::move(parser.head);
}

Result<> Client::stream(std::string_view target, const std::function<void(int)>& on_status,
                        const std::function<bool(std::string_view)>& on_data) {
  auto r = exchange(
      "GET", target, {{"Accept", "text/event-stream"}}, nullptr,
      [&](const ResponseHead& h) {
        if (on_status) on_status(h.status);
        return true;
      },
      on_data);
  // An event stream ends when tokend closes it: that is not an error here.
  if (!r && r.error().code != Errc::protocol) return std::unexpected(r.error());
  return {};
}

}  // namespace tokend::client

// The client side of the local API: a plain blocking Unix socket with Beast's
// serializer and parser. Links only core: this is what tokenctl uses, and it
// must start fast (no libcurl, no libuv).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/error.hpp"
#include "core/fd.hpp"

namespace boost::beast::http {
template <bool isRequest>
class basic_parser;  // NOLINT(readability-identifier-naming): Beast's name
}

namespace tokend::client {

// Header fields in the order sent or received, names as written.
using Headers = std::vector<std::pair<std::string, std::string>>;

struct ClientResponse {
  int status = 0;
  Headers headers;
  std::string body;
};

// The status line and header fields of an answer, before its body.
struct ResponseHead {
  int status = 0;
  std::string reason;  // as sent ("OK"); may be empty
  Headers headers;     // in the order received, names as sent
};

// A request body produced piece by piece, so that a big one (a 50 MB
// attachment, a pipe) never sits in memory whole.
struct BodyReader {
  // The body's size when it is known up front: sent as Content-Length, and
  // the request fails if read() ends early. nullopt: sent with
  // Transfer-Encoding: chunked until read() returns 0.
  std::optional<std::uint64_t> length;
  // Fills (part of) `buf`; returns the number of bytes, 0 at the end.
  std::function<Result<std::size_t>(std::span<char> buf)> read;

  // Reads `fd` (not closed here) from its current offset. A regular file
  // gets its remaining size from fstat as the length; anything else (a pipe,
  // a terminal) is chunked. `what` names the source in error messages.
  static BodyReader from_fd(int fd, std::string what);
  // `bytes` must outlive the request.
  static BodyReader from_string(std::string_view bytes);
};

class Client {
 public:
  // Errc::unavailable when nothing listens at `socket` (the caller names the
  // command that starts tokend).
  static Result<Client> connect(const std::filesystem::path& socket);
  Client(Client&&) noexcept = default;
  Client& operator=(Client&&) = delete;
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  ~Client() = default;

  // One request/response on the connection (keep-alive). timeout 0: none.
  Result<ClientResponse> request(std::string_view method, std::string_view target,
                                 std::string_view body = {}, const Headers& headers = {},
                                 std::chrono::milliseconds timeout = std::chrono::seconds(30));

  // request() in two halves, for a caller that waits on the answer together
  // with other input (tokenctl login polls stdin, a signal pipe and this
  // connection): send_request() writes the request without reading; fd()
  // turns readable when the answer starts to arrive (or tokend closes);
  // read_response() then reads that one answer. One request outstanding at
  // a time.
  Result<> send_request(std::string_view method, std::string_view target,
                        std::string_view body = {}, const Headers& headers = {});
  Result<ClientResponse> read_response(
      std::chrono::milliseconds timeout = std::chrono::seconds(30));
  [[nodiscard]] int fd() const noexcept { return m_fd.get(); }

  // One request whose bodies stream both ways (tokenctl api):
  //   - `body` (may be null: no body) is read piece by piece and sent with
  //     Content-Length or chunked (see BodyReader); `headers` must not set
  //     Content-Length or Transfer-Encoding. No Content-Type is added.
  //   - While the body is being sent, the connection is watched for an early
  //     answer (RFC 9112 §9.5: an error before the whole body arrived, such
  //     as 413 or 403): sending stops and that answer is read.
  //   - on_head sees the status line and headers once they are complete;
  //     then on_data gets the body in pieces as they arrive (HEAD: none).
  //     Either returning false stops reading.
  //   - idle_timeout: the longest wait for the socket to take or give a byte
  //     (0: no limit); Errc::timeout when it passes.
  // Returns the head once the answer is complete or a callback stopped it.
  // Errors: Errc::invalid_argument for a CR, LF or NUL in the target or a
  // header (nothing is sent); Errc::unavailable when the connection fails
  // before an answer starts; Errc::protocol for a malformed or cut-off
  // answer; the BodyReader's own error. After an error or a stop the
  // connection cannot carry another request.
  Result<ResponseHead> exchange(std::string_view method, std::string_view target,
                                const Headers& headers, BodyReader* body,
                                const std::function<bool(const ResponseHead&)>& on_head,
                                const std::function<bool(std::string_view)>& on_data,
                                std::chrono::milliseconds idle_timeout = std::chrono::seconds(0));

  // Sends a GET and hands body bytes to on_data as they arrive, until the
  // server closes or on_data returns false. on_status sees the status first
  // (and the whole body of an error reply through on_data).
  Result<> stream(std::string_view target, const std::function<void(int status)>& on_status,
                  const std::function<bool(std::string_view)>& on_data);

 private:
  // When receive() gives up waiting.
  struct Wait {
    std::optional<std::chrono::steady_clock::time_point> deadline;  // absolute; nullopt: none
    std::chrono::milliseconds idle{0};  // > 0: the deadline moves on with every byte received
  };
  Client(Fd fd, std::filesystem::path socket) : m_fd(std::move(fd)), m_socket(std::move(socket)) {}
  Result<> send_all(std::string_view bytes);
  // Sends `bytes` unless an answer starts arriving first: false then.
  Result<bool> send_watching(std::string_view bytes, std::chrono::milliseconds idle);
  Result<> receive(boost::beast::http::basic_parser<false>& parser, const bool& stop, Wait wait);
  Fd m_fd;
  std::filesystem::path m_socket;
};

}  // namespace tokend::client

// The client side of the local API: a plain blocking Unix socket with Beast's
// serializer and parser. Links only core — this is what tokenctl uses, and it
// must start fast (no libcurl, no libuv).
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <optional>
#include <string_view>

#include "core/error.hpp"
#include "ipc/http.hpp"

namespace boost::beast::http {
template <bool isRequest>
class basic_parser;
}

namespace tokend::ipc {

struct ClientResponse {
  int status = 0;
  Headers headers;
  std::string body;
};

class Client {
 public:
  // Errc::unavailable when nothing listens at `socket` (the caller names the
  // command that starts tokend).
  static Result<Client> connect(const std::filesystem::path& socket);
  Client(Client&& o) noexcept : m_fd(o.m_fd), m_socket(std::move(o.m_socket)) { o.m_fd = -1; }
  Client& operator=(Client&&) = delete;
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  ~Client();

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
  Result<> send_request(std::string_view method, std::string_view target, std::string_view body = {},
                        const Headers& headers = {});
  Result<ClientResponse> read_response(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  [[nodiscard]] int fd() const noexcept { return m_fd; }

  // Sends a GET and hands body bytes to on_data as they arrive, until the
  // server closes or on_data returns false. on_status sees the status first
  // (and the whole body of an error reply through on_data).
  Result<> stream(std::string_view target, const std::function<void(int status)>& on_status,
                  const std::function<bool(std::string_view)>& on_data);

 private:
  Client(int fd, std::filesystem::path socket) : m_fd(fd), m_socket(std::move(socket)) {}
  Result<> send_all(std::string_view bytes);
  Result<> receive(boost::beast::http::basic_parser<false>& parser, const bool& stop,
                   std::optional<std::chrono::steady_clock::time_point> deadline);
  int m_fd;
  std::filesystem::path m_socket;
};

}  // namespace tokend::ipc

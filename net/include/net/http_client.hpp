// Outbound HTTP for the daemon: libcurl multi driven by the libuv loop.
//
// TLS verification is always on (a CA bundle can be configured); only http
// and https are allowed, redirects are not followed, response bodies are
// capped, the standard proxy variables (https_proxy, no_proxy, ...) are
// honoured by libcurl, connections are reused and HTTP/2 is used where the
// server offers it. Request and response bodies are Secrets: token endpoints
// carry refresh tokens one way and access tokens the other.
//
// Callbacks run on the loop thread, never from inside a libcurl callback.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/error.hpp"
#include "core/secret.hpp"
#include "net/loop.hpp"
#include "net/spool.hpp"

namespace tokend::net {

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

struct HttpRequest {
  std::string method = "GET";
  std::string url;
  HttpHeaders headers;
  Secret body;
  std::chrono::milliseconds timeout{30'000};  // whole transfer
  std::size_t max_response_bytes = 0;         // 0: the client's default
  // Large bodies (the proxy): sent from a spool instead of `body`.
  std::shared_ptr<const Spool> upload;
  // Streamed answers (the proxy). When `on_head` is set it is called once the
  // final status and headers are in, and returns true to take the body as it
  // arrives through `on_data` (the final callback then has an empty body), or
  // false to collect it as usual. `on_data` returns false when its consumer
  // is full: the transfer pauses until HttpTransport::resume(id). Both run on
  // the loop, never inside libcurl, and may cancel the transfer. For a
  // streamed request `timeout` bounds the wait for the head only: a stream
  // lasts as long as both ends keep it.
  std::function<bool(long status, const HttpHeaders& headers)> on_head;
  std::function<bool(std::string_view bytes)> on_data;
};

struct HttpResponse {
  long status = 0;
  HttpHeaders headers;  // names lower-cased
  Secret body;
  [[nodiscard]] std::string_view header(std::string_view lower_name) const;
};

struct HttpClientOptions {
  std::string ca_bundle;  // empty: the system's trust store
  std::string user_agent = "tokend";
  std::chrono::milliseconds connect_timeout{10'000};
  std::size_t max_response_bytes = 1024 * 1024;
  long max_connections_per_host = 16;
};

// What the refresh engine needs from HTTP; tests substitute a fake.
class HttpTransport {
 public:
  using Callback = std::function<void(Result<HttpResponse>)>;
  virtual ~HttpTransport() = default;
  virtual std::uint64_t start(HttpRequest request, Callback done) = 0;
  virtual void cancel(std::uint64_t id) = 0;
  // A streamed transfer whose on_data returned false goes on.
  virtual void resume(std::uint64_t /*id*/) {}
};

class HttpClient final : public HttpTransport {
 public:
  HttpClient(Loop& loop, HttpClientOptions options);
  ~HttpClient() override;
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Starts a transfer; `done` is called exactly once unless cancelled or the
  // client is closed first. Errors: Errc::timeout, Errc::transient (network,
  // TLS, connection dropped), Errc::limit_exceeded (response too large),
  // Errc::invalid_argument (bad URL or scheme).
  std::uint64_t start(HttpRequest request, Callback done) override;
  // Aborts a transfer; its callback is not called.
  void cancel(std::uint64_t id) override;
  void resume(std::uint64_t id) override;
  // Aborts everything and releases libcurl; the loop then closes cleanly.
  void close();
  [[nodiscard]] std::size_t in_flight() const;

  class Impl;

 private:
  std::unique_ptr<Impl> m_impl;
};

}  // namespace tokend::net

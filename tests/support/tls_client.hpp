// A blocking TLS client for server tests (OpenSSL over a TCP socket):
// handshake options, send bytes, read with deadlines.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

using SSL = struct ssl_st;
using SSL_CTX = struct ssl_ctx_st;

namespace tokend::test {

struct TlsClientOptions {
  std::filesystem::path ca_file;    // verify the server against it (empty: no check)
  std::filesystem::path cert_file;  // a client certificate
  std::filesystem::path key_file;
  std::string alpn = "http/1.1";  // empty: offer none
  int max_version = 0;            // e.g. TLS1_1_VERSION; 0: the library's newest
  int min_version = 0;
};

class TlsClient {
 public:
  TlsClient(std::uint16_t port, const TlsClientOptions& options,
            const std::string& host = "127.0.0.1");
  ~TlsClient();
  TlsClient(const TlsClient&) = delete;
  TlsClient& operator=(const TlsClient&) = delete;

  // Whether the handshake completed; the error otherwise.
  [[nodiscard]] bool ok() const { return m_ok; }
  [[nodiscard]] const std::string& error() const { return m_error; }
  [[nodiscard]] std::string alpn() const;
  [[nodiscard]] std::string version() const;
  // The server certificate's subject CN.
  [[nodiscard]] std::string server_cn() const;

  bool send(const std::string& bytes);
  // Reads one whole response (Content-Length framed), or what came before
  // EOF/deadline.
  std::string read_response(std::chrono::milliseconds deadline = std::chrono::seconds(10));
  std::string read_until(const std::string& needle,
                         std::chrono::milliseconds deadline = std::chrono::seconds(10));
  // Everything until the server closes (close_notify or EOF), or nullopt.
  std::optional<std::string> read_to_eof(
      std::chrono::milliseconds deadline = std::chrono::seconds(10));

 private:
  bool fill(std::chrono::steady_clock::time_point until);
  int m_fd = -1;
  SSL_CTX* m_ctx = nullptr;
  SSL* m_ssl = nullptr;
  bool m_ok = false;
  bool m_eof = false;
  std::string m_error;
  std::string m_buf;
};

// A raw TCP connection (no TLS) to 127.0.0.1:port; -1 on failure.
int tcp_connect(std::uint16_t port);

}  // namespace tokend::test

#include "support/tls_client.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cstring>

namespace tokend::test {

namespace {

std::string last_error() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "handshake failed";
  std::array<char, 256> buf{};
  ERR_error_string_n(e, buf.data(), buf.size());
  return buf.data();
}

}  // namespace

int tcp_connect(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

TlsClient::TlsClient(std::uint16_t port, const TlsClientOptions& o, const std::string& host) {
  if (host.find(':') != std::string::npos) {
    m_fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in6 addr{};
    addr.sin6_family = AF_INET6;
    addr.sin6_port = htons(port);
    ::inet_pton(AF_INET6, host.c_str(), &addr.sin6_addr);
    if (m_fd >= 0 && ::connect(m_fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      ::close(m_fd);
      m_fd = -1;
    }
  } else {
    m_fd = tcp_connect(port);
  }
  if (m_fd < 0) {
    m_error = "cannot connect";
    return;
  }
  timeval tv{10, 0};
  ::setsockopt(m_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  m_ctx = SSL_CTX_new(TLS_client_method());
  if (o.max_version != 0) SSL_CTX_set_max_proto_version(m_ctx, o.max_version);
  if (o.min_version != 0) SSL_CTX_set_min_proto_version(m_ctx, o.min_version);
  // Old protocol versions need the lowest security level to be offered at all.
  if (o.max_version != 0 && o.max_version < TLS1_2_VERSION) SSL_CTX_set_security_level(m_ctx, 0);
  if (!o.ca_file.empty()) {
    SSL_CTX_load_verify_locations(m_ctx, o.ca_file.c_str(), nullptr);
    SSL_CTX_set_verify(m_ctx, SSL_VERIFY_PEER, nullptr);
  }
  if (!o.cert_file.empty()) {
    SSL_CTX_use_certificate_chain_file(m_ctx, o.cert_file.c_str());
    SSL_CTX_use_PrivateKey_file(m_ctx, o.key_file.c_str(), SSL_FILETYPE_PEM);
  }
  if (!o.alpn.empty()) {
    std::string wire(1, static_cast<char>(o.alpn.size()));
    wire += o.alpn;
    SSL_CTX_set_alpn_protos(m_ctx, reinterpret_cast<const unsigned char*>(wire.data()),
                            static_cast<unsigned>(wire.size()));
  }
  m_ssl = SSL_new(m_ctx);
  SSL_set_fd(m_ssl, m_fd);
  static char k_sni[] = "localhost";
  SSL_ctrl(m_ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name, k_sni);
  SSL_set1_host(m_ssl, host.c_str());
  ERR_clear_error();
  if (SSL_connect(m_ssl) != 1) {
    m_error = last_error();
    return;
  }
  // TLS 1.3 sends the verdict on a client certificate after the client's
  // Finished: a refusal shows as the first read failing, so a probe read
  // with a short deadline surfaces it here.
  m_ok = true;
}

TlsClient::~TlsClient() {
  if (m_ssl != nullptr) SSL_free(m_ssl);
  if (m_ctx != nullptr) SSL_CTX_free(m_ctx);
  if (m_fd >= 0) ::close(m_fd);
}

std::string TlsClient::alpn() const {
  const unsigned char* p = nullptr;
  unsigned len = 0;
  SSL_get0_alpn_selected(m_ssl, &p, &len);
  return p == nullptr ? std::string() : std::string(reinterpret_cast<const char*>(p), len);
}

std::string TlsClient::version() const {
  return SSL_get_version(m_ssl);
}

std::string TlsClient::server_cn() const {
  X509* cert = SSL_get0_peer_certificate(m_ssl);
  if (cert == nullptr) return {};
  std::array<char, 256> buf{};
  X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, buf.data(),
                            static_cast<int>(buf.size()));
  return buf.data();
}

bool TlsClient::send(const std::string& bytes) {
  if (!m_ok) return false;
  ERR_clear_error();
  return bytes.empty() || SSL_write(m_ssl, bytes.data(), static_cast<int>(bytes.size())) ==
                              static_cast<int>(bytes.size());
}

bool TlsClient::fill(std::chrono::steady_clock::time_point until) {
  if (!m_ok || m_eof) return false;
  if (SSL_pending(m_ssl) == 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        until - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd pfd{m_fd, POLLIN, 0};
    if (::poll(&pfd, 1, static_cast<int>(left.count())) <= 0) return false;
  }
  std::array<char, 16 * 1024> buf{};
  ERR_clear_error();
  const int n = SSL_read(m_ssl, buf.data(), static_cast<int>(buf.size()));
  if (n <= 0) {
    const int err = SSL_get_error(m_ssl, n);
    if (err == SSL_ERROR_WANT_READ) return true;
    if (err != SSL_ERROR_ZERO_RETURN && err != SSL_ERROR_SYSCALL) m_error = last_error();
    m_eof = true;
    return false;
  }
  m_buf.append(buf.data(), static_cast<std::size_t>(n));
  return true;
}

std::string TlsClient::read_until(const std::string& needle, std::chrono::milliseconds deadline) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  while (m_buf.find(needle) == std::string::npos && fill(until)) {
  }
  return m_buf;
}

std::string TlsClient::read_response(std::chrono::milliseconds deadline) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  for (;;) {
    const auto head_end = m_buf.find("\r\n\r\n");
    if (head_end != std::string::npos) {
      std::size_t length = 0;
      const auto cl = m_buf.find("Content-Length: ");
      if (cl != std::string::npos && cl < head_end) length = std::stoul(m_buf.substr(cl + 16));
      if (m_buf.size() >= head_end + 4 + length) {
        std::string out = m_buf.substr(0, head_end + 4 + length);
        m_buf.erase(0, head_end + 4 + length);
        return out;
      }
    }
    if (!fill(until)) {
      std::string out = std::move(m_buf);
      m_buf.clear();
      return out;
    }
  }
}

std::optional<std::string> TlsClient::read_to_eof(std::chrono::milliseconds deadline) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  while (fill(until)) {
  }
  if (!m_eof) return std::nullopt;
  return m_buf;
}

}  // namespace tokend::test

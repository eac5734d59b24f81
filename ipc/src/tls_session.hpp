// One connection's TLS state: an SSL object over two memory BIOs. The
// connection feeds it the bytes it read and writes out what it produces;
// the session never touches a socket, so the loop's handles stay the
// connection's alone.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.hpp"
#include "ipc/tls.hpp"

using SSL = struct ssl_st;
using BIO = struct bio_st;

namespace tokend::ipc {

class TlsSession {
 public:
  static Result<std::unique_ptr<TlsSession>> create(std::shared_ptr<const TlsContext> ctx);
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  enum class Status { ok, closed, failed };

  // Ciphertext from the peer.
  void feed(std::string_view cipher);
  enum class Handshake { done, more, failed };
  // Advances the handshake with what was fed: done once complete (and at
  // every call after), more while it needs more input, failed for good.
  Handshake handshake();
  [[nodiscard]] bool established() const { return m_established; }
  // Decrypts everything fed so far onto `out`: ok (possibly nothing new),
  // closed (the peer's close_notify), failed.
  Status read(std::string& out);
  // Encrypts `plain` (false: the session failed).
  bool write(std::string_view plain);
  // Queues close_notify.
  void shutdown();
  // What is to be sent to the peer, in order; empties the queue.
  std::string take_output();
  [[nodiscard]] bool has_output() const;

  // Why the handshake or a record failed (for the log; holds no secret).
  [[nodiscard]] const std::string& error() const { return m_error; }
  // The failure was the client certificate's: it did not verify.
  [[nodiscard]] bool client_cert_rejected() const { return m_cert_rejected; }
  // Established with a client certificate that verified.
  [[nodiscard]] bool has_verified_client_cert() const;
  // The verified client certificate's subject CN, then its DNS, email and
  // URI subject alternative names; empty without one.
  [[nodiscard]] std::vector<std::string> client_cert_names() const;

 private:
  TlsSession(std::shared_ptr<const TlsContext> ctx, SSL* ssl, BIO* in, BIO* out)
      : m_ctx(std::move(ctx)), m_ssl(ssl), m_in(in), m_out(out) {}
  Status failure(int rc);

  std::shared_ptr<const TlsContext> m_ctx;  // the SSL object refers to it
  SSL* m_ssl;
  BIO* m_in;   // owned by m_ssl
  BIO* m_out;  // owned by m_ssl
  bool m_established = false;
  bool m_cert_rejected = false;
  std::string m_error;
};

}  // namespace tokend::ipc

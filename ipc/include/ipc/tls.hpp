// TLS for the server's TCP listeners (server mode's `listen`): OpenSSL's
// libssl over memory BIOs, so the bytes still move through the loop's own
// TCP handles and the connection keeps its limits, timers and streams.
//
// TLS 1.2 or newer, ALPN http/1.1 only, no renegotiation. With a client CA,
// a client certificate is asked for but optional: one that does not verify
// against the CA ends the handshake; a verified one's names reach the
// handlers in Peer::client_cert_names.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "core/error.hpp"

using SSL_CTX = struct ssl_ctx_st;

namespace tokend::ipc {

struct TlsFiles {
  std::filesystem::path cert_file;       // PEM: the certificate, then its chain
  std::filesystem::path key_file;        // PEM: its private key (0600, ours, not a symlink)
  std::filesystem::path client_ca_file;  // PEM: CAs for client certificates; empty: none asked
};

// An SSL_CTX made from the files. Connections keep the context they started
// with: replacing it (SIGHUP) changes only new connections.
class TlsContext {
 public:
  static Result<std::shared_ptr<const TlsContext>> load(const TlsFiles& files);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  [[nodiscard]] SSL_CTX* get() const { return m_ctx; }
  [[nodiscard]] bool asks_client_cert() const { return m_client_ca; }

 private:
  explicit TlsContext(SSL_CTX* ctx, bool client_ca) : m_ctx(ctx), m_client_ca(client_ca) {}
  SSL_CTX* m_ctx;
  bool m_client_ca;
};

}  // namespace tokend::ipc

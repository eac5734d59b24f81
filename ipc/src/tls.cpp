#include "ipc/tls.hpp"

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <array>
#include <cstring>

#include "core/fs.hpp"

namespace tokend::ipc {

namespace {

// The newest OpenSSL error, for a message (never key material).
std::string openssl_error() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "unknown OpenSSL error";
  std::array<char, 256> buf{};
  ERR_error_string_n(e, buf.data(), buf.size());
  return buf.data();
}

// ALPN: http/1.1 or nothing. A client that offers ALPN without it gets
// no_application_protocol; one that offers none is served HTTP/1.1.
int select_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                unsigned int inlen, void*) {
  static constexpr unsigned char k_http11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, outlen, k_http11, sizeof k_http11, in, inlen) !=
      OPENSSL_NPN_NEGOTIATED) {
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  *out = selected;
  return SSL_TLSEXT_ERR_OK;
}

}  // namespace

TlsContext::~TlsContext() {
  SSL_CTX_free(m_ctx);
}

Result<std::shared_ptr<const TlsContext>> TlsContext::load(const TlsFiles& files) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) return fail(Errc::internal, "creating a TLS context: " + openssl_error());
  // Owned from here: freed on every failure below.
  std::shared_ptr<const TlsContext> owner(new TlsContext(ctx, !files.client_ca_file.empty()));

  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(
      ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_alpn_select_cb(ctx, select_alpn, nullptr);

  if (SSL_CTX_use_certificate_chain_file(ctx, files.cert_file.c_str()) != 1) {
    return fail(Errc::config,
                fmt::format("tls-cert-file {}: {}", files.cert_file.string(), openssl_error()));
  }
  // The key is a secret file: private, ours, not a symlink; read once and
  // wiped.
  auto key_pem = fs::read_private_file(files.key_file, 1024 * 1024);
  if (!key_pem) return std::unexpected(key_pem.error().context("tls-key-file"));
  BIO* bio = BIO_new_mem_buf(key_pem->reveal().data(), static_cast<int>(key_pem->size()));
  if (bio == nullptr) return fail(Errc::internal, "reading tls-key-file: " + openssl_error());
  EVP_PKEY* key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (key == nullptr) {
    ERR_clear_error();
    return fail(Errc::config, fmt::format("tls-key-file {} holds no PEM private key (an "
                                          "encrypted key is not supported)",
                                          files.key_file.string()));
  }
  const int used = SSL_CTX_use_PrivateKey(ctx, key);
  EVP_PKEY_free(key);
  if (used != 1 || SSL_CTX_check_private_key(ctx) != 1) {
    ERR_clear_error();
    return fail(Errc::config, fmt::format("tls-key-file {} is not the key of tls-cert-file {}",
                                          files.key_file.string(), files.cert_file.string()));
  }

  if (!files.client_ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(ctx, files.client_ca_file.c_str(), nullptr) != 1) {
      return fail(Errc::config, fmt::format("tls-client-ca-file {}: {}",
                                            files.client_ca_file.string(), openssl_error()));
    }
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(files.client_ca_file.c_str());
    if (names == nullptr) {
      return fail(Errc::config, fmt::format("tls-client-ca-file {} holds no certificate",
                                            files.client_ca_file.string()));
    }
    SSL_CTX_set_client_CA_list(ctx, names);
    // Asked for, not required: people sign in without one. A certificate
    // that does not verify ends the handshake.
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    SSL_CTX_set_verify_depth(ctx, 4);
    // Sessions are not resumed across contexts with other client CAs.
    static constexpr unsigned char k_sid[] = "tokend-mtls";
    SSL_CTX_set_session_id_context(ctx, k_sid, sizeof k_sid - 1);
  }
  return owner;
}

}  // namespace tokend::ipc

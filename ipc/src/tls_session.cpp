#include "tls_session.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <array>
#include <climits>

namespace tokend::ipc {

namespace {

// A name from a certificate, kept only when it is printable text.
void add_name(std::vector<std::string>& out, const unsigned char* data, int len) {
  if (data == nullptr || len <= 0) return;
  std::string name(reinterpret_cast<const char*>(data), static_cast<std::size_t>(len));
  for (const char c : name) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return;
  }
  out.push_back(std::move(name));
}

}  // namespace

Result<std::unique_ptr<TlsSession>> TlsSession::create(std::shared_ptr<const TlsContext> ctx) {
  SSL* ssl = SSL_new(ctx->get());
  if (ssl == nullptr) return fail(Errc::internal, "creating a TLS session");
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  if (in == nullptr || out == nullptr) {
    BIO_free(in);
    BIO_free(out);
    SSL_free(ssl);
    return fail(Errc::internal, "creating a TLS session's buffers");
  }
  // An empty input BIO means "more to come", not end of file.
  BIO_set_mem_eof_return(in, -1);
  BIO_set_mem_eof_return(out, -1);
  SSL_set_bio(ssl, in, out);
  SSL_set_accept_state(ssl);
  return std::unique_ptr<TlsSession>(new TlsSession(std::move(ctx), ssl, in, out));
}

TlsSession::~TlsSession() {
  SSL_free(m_ssl);
}

void TlsSession::feed(std::string_view cipher) {
  while (!cipher.empty()) {
    const int n = static_cast<int>(std::min<std::size_t>(cipher.size(), INT_MAX));
    const int w = BIO_write(m_in, cipher.data(), n);
    if (w <= 0) return;  // a memory BIO only fails to allocate; the next read fails
    cipher.remove_prefix(static_cast<std::size_t>(w));
  }
}

TlsSession::Status TlsSession::failure(int rc) {
  const int err = SSL_get_error(m_ssl, rc);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
    ERR_clear_error();
    return Status::ok;
  }
  if (err == SSL_ERROR_ZERO_RETURN) {
    ERR_clear_error();
    return Status::closed;
  }
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e != 0) {
    std::array<char, 256> buf{};
    ERR_error_string_n(e, buf.data(), buf.size());
    m_error = buf.data();
  } else {
    m_error = "TLS error";
  }
  if (const long v = SSL_get_verify_result(m_ssl); v != X509_V_OK) {
    m_cert_rejected = true;
    m_error += std::string(" (client certificate: ") + X509_verify_cert_error_string(v) + ")";
  }
  return Status::failed;
}

TlsSession::Handshake TlsSession::handshake() {
  if (m_established) return Handshake::done;
  ERR_clear_error();
  const int rc = SSL_do_handshake(m_ssl);
  if (rc == 1) {
    m_established = true;
    return Handshake::done;
  }
  return failure(rc) == Status::ok ? Handshake::more : Handshake::failed;
}

TlsSession::Status TlsSession::read(std::string& out) {
  std::array<char, 16 * 1024> buf{};
  for (;;) {
    ERR_clear_error();
    const int n = SSL_read(m_ssl, buf.data(), static_cast<int>(buf.size()));
    if (n > 0) {
      out.append(buf.data(), static_cast<std::size_t>(n));
      continue;
    }
    return failure(n);
  }
}

bool TlsSession::write(std::string_view plain) {
  while (!plain.empty()) {
    ERR_clear_error();
    const int n = static_cast<int>(std::min<std::size_t>(plain.size(), INT_MAX));
    const int w = SSL_write(m_ssl, plain.data(), n);
    if (w <= 0) {
      (void)failure(w);
      return false;
    }
    plain.remove_prefix(static_cast<std::size_t>(w));
  }
  return true;
}

void TlsSession::shutdown() {
  if (!m_established) return;
  ERR_clear_error();
  (void)SSL_shutdown(m_ssl);  // sends close_notify; the peer's is not waited for
  ERR_clear_error();
}

bool TlsSession::has_output() const {
  return BIO_ctrl_pending(m_out) > 0;
}

std::string TlsSession::take_output() {
  std::string out;
  const std::size_t pending = BIO_ctrl_pending(m_out);
  if (pending == 0) return out;
  out.resize(pending);
  const int n =
      BIO_read(m_out, out.data(), static_cast<int>(std::min<std::size_t>(pending, INT_MAX)));
  out.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  return out;
}

bool TlsSession::has_verified_client_cert() const {
  return m_established && SSL_get0_peer_certificate(m_ssl) != nullptr &&
         SSL_get_verify_result(m_ssl) == X509_V_OK;
}

std::vector<std::string> TlsSession::client_cert_names() const {
  std::vector<std::string> names;
  if (!m_established) return names;
  X509* cert = SSL_get0_peer_certificate(m_ssl);
  if (cert == nullptr || SSL_get_verify_result(m_ssl) != X509_V_OK) return names;
  if (X509_NAME* subject = X509_get_subject_name(cert)) {
    const int i = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
    if (i >= 0) {
      unsigned char* utf8 = nullptr;
      const int len =
          ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, i)));
      if (len > 0) add_name(names, utf8, len);
      OPENSSL_free(utf8);
    }
  }
  auto* sans =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (sans != nullptr) {
    for (int i = 0; i < sk_GENERAL_NAME_num(sans); ++i) {
      const GENERAL_NAME* gn = sk_GENERAL_NAME_value(sans, i);
      const ASN1_IA5STRING* s = nullptr;
      if (gn->type == GEN_DNS) s = gn->d.dNSName;
      if (gn->type == GEN_EMAIL) s = gn->d.rfc822Name;
      if (gn->type == GEN_URI) s = gn->d.uniformResourceIdentifier;
      if (s != nullptr) add_name(names, ASN1_STRING_get0_data(s), ASN1_STRING_length(s));
    }
    GENERAL_NAMES_free(sans);
  }
  return names;
}

}  // namespace tokend::ipc

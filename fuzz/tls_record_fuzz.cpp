// The TLS listener's record layer (ipc/src/tls_session.cpp): whatever a TCP
// peer sends, fed to a server session over memory BIOs in pieces, before the
// handshake (a ClientHello and anything else) or, with the first byte odd,
// after a real handshake with an in-process client (records under the
// session's keys: garbage, truncated, close_notify). Nothing may crash, and a
// session that failed stays failed.
#include <openssl/ssl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "fuzz_input.hpp"
#include "ipc/tls.hpp"
#include "tls_session.hpp"

using namespace tokend;

namespace {

// A throw-away self-signed pair made for this target only.
constexpr const char* k_key = R"(-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQglIoCQ87GoSgRx7xZ
6Mw0pHeazSvAFyPiKpfjjFegR+ChRANCAATGiF0zJuXA9xHJfJjzm2RNgxhj8qVF
bhN6bLekmakJT9x05CKXrqA2ry7aDJdtjWoIsFKCeOhV9FDZzP0jXTFb
-----END PRIVATE KEY-----)";
constexpr const char* k_cert = R"(-----BEGIN CERTIFICATE-----
MIIBdDCCARugAwIBAgIUUzneU5n86dxT2qV6L5JfNpZdyb4wCgYIKoZIzj0EAwIw
DzENMAsGA1UEAwwEZnV6ejAgFw0yNjExMzAxNDU0MjVaGA8yMTI2MTEwNjE0NTQy
NVowDzENMAsGA1UEAwwEZnV6ejBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABMaI
XTMm5cD3Ecl8mPObZE2DGGPypUVuE3pst6SZqQlP3HTkIpeuoDavLtoMl22Nagiw
UoJ46FX0UNnM/SNdMVujUzBRMB0GA1UdDgQWBBSdDaK2grAM9H1/QCxqff4O01cL
ajAfBgNVHSMEGDAWgBSdDaK2grAM9H1/QCxqff4O01cLajAPBgNVHRMBAf8EBTAD
AQH/MAoGCCqGSM49BAMCA0cAMEQCIBsPAQSc7GV7MwwFBWpn5GHZOZO56Y31m6m9
icZ5XV4RAiAs39NcxTVzP1+xvxOPAzotxyWL9ADHaYP8NYbafIcMDA==
-----END CERTIFICATE-----)";

std::shared_ptr<const ipc::TlsContext> context() {
  static const std::shared_ptr<const ipc::TlsContext> ctx = [] {
    char tmpl[] = "/tmp/tokend-fuzz-tls-XXXXXX";
    const char* dir = ::mkdtemp(tmpl);
    if (dir == nullptr) std::abort();
    const std::filesystem::path d(dir);
    {
      std::ofstream(d / "cert.pem") << k_cert << "\n";
      const mode_t old = ::umask(077);
      std::ofstream(d / "key.pem") << k_key << "\n";
      ::umask(old);
    }
    auto loaded = ipc::TlsContext::load({d / "cert.pem", d / "key.pem", d / "cert.pem"});
    std::filesystem::remove_all(d);
    if (!loaded) std::abort();
    return *loaded;
  }();
  return ctx;
}

// Moves what `from` has to send into `to`.
void pump_to_client(ipc::TlsSession& server, BIO* client_in) {
  const std::string out = server.take_output();
  if (!out.empty()) BIO_write(client_in, out.data(), static_cast<int>(out.size()));
}

// A client session handshaken with `server` through memory.
bool handshake(ipc::TlsSession& server) {
  static SSL_CTX* const client_ctx = [] {
    SSL_CTX* c = SSL_CTX_new(TLS_client_method());
    static constexpr unsigned char k_alpn[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    SSL_CTX_set_alpn_protos(c, k_alpn, sizeof k_alpn);
    return c;
  }();
  SSL* client = SSL_new(client_ctx);
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  BIO_set_mem_eof_return(in, -1);
  SSL_set_bio(client, in, out);
  SSL_set_connect_state(client);
  bool done = false;
  for (int round = 0; round < 8 && !done; ++round) {
    (void)SSL_do_handshake(client);
    char buf[16384];
    for (int n = 0; (n = BIO_read(out, buf, sizeof buf)) > 0;) {
      server.feed({buf, static_cast<std::size_t>(n)});
    }
    const auto step = server.handshake();
    pump_to_client(server, in);
    done = step == ipc::TlsSession::Handshake::done;
    if (step == ipc::TlsSession::Handshake::failed) break;
  }
  SSL_free(client);
  return done;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  const std::uint8_t mode = in.byte();
  const std::size_t piece = 1 + in.byte();
  auto session = ipc::TlsSession::create(context());
  if (!session) return 0;
  auto& s = **session;
  // The handshake does not depend on the input: one that fails is this
  // target's bug (and the replay test's failure), not a finding.
  if ((mode & 1) != 0 && !handshake(s)) std::abort();
  std::string_view rest = in.rest();
  bool failed = false;
  while (!rest.empty()) {
    const auto n = std::min(piece, rest.size());
    s.feed(rest.substr(0, n));
    rest.remove_prefix(n);
    if (!s.established()) {
      if (s.handshake() == ipc::TlsSession::Handshake::failed) failed = true;
      (void)s.take_output();
      if (failed || !s.established()) continue;
    }
    std::string plain;
    const auto status = s.read(plain);
    (void)s.take_output();
    if (status == ipc::TlsSession::Status::failed) failed = true;
    if (status != ipc::TlsSession::Status::ok) break;
    if (!plain.empty()) (void)s.write("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  }
  (void)s.client_cert_names();
  if (failed && s.established()) {
    // A failed session writes nothing readable.
    (void)s.write("x");
  }
  s.shutdown();
  (void)s.take_output();
  return 0;
}

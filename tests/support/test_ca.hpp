// A throw-away CA made at test time with the openssl command line (as
// tests/fake_upstream/make_ca.py does for Python tests): a server
// certificate for 127.0.0.1, ::1 and localhost, client certificates signed
// by it, and a second CA nobody trusts. EC P-256 keys, so it takes
// milliseconds.
#pragma once

#include <filesystem>
#include <string>

namespace tokend::test {

struct TestCa {
  std::filesystem::path dir;
  std::filesystem::path ca_file;
  std::filesystem::path server_cert;
  std::filesystem::path server_key;  // 0600
  std::filesystem::path other_ca_file;

  // A client certificate with subject CN `cn` and the given
  // subjectAltName (e.g. "URI:spiffe://example/mcp", or empty), signed by
  // this CA or, with `rogue`, by the other CA. Writes NAME.pem and NAME.key.
  struct Pair {
    std::filesystem::path cert;
    std::filesystem::path key;
  };
  Pair client(const std::string& name, const std::string& cn, const std::string& san = "",
              bool rogue = false) const;
  // Another server pair (for a reload) with subject CN `cn`.
  Pair server(const std::string& name, const std::string& cn) const;
};

// Makes the CA in `dir`; throws std::runtime_error naming the failed step.
TestCa make_test_ca(const std::filesystem::path& dir);

}  // namespace tokend::test

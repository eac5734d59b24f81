#include "support/test_ca.hpp"

#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <stdexcept>

namespace tokend::test {

namespace {

void run(const std::string& cmd) {
  const std::string full = "cd / && " + cmd + " >/dev/null 2>&1 </dev/null";
  if (std::system(full.c_str()) != 0) throw std::runtime_error("test CA: failed: " + cmd);
}

std::string q(const std::filesystem::path& p) {
  return "'" + p.string() + "'";
}

// A leaf certificate signed by `ca`/`ca_key`, with the given extensions.
TestCa::Pair leaf(const std::filesystem::path& dir, const std::string& name, const std::string& cn,
                  const std::string& ext, const std::filesystem::path& ca,
                  const std::filesystem::path& ca_key) {
  TestCa::Pair p{dir / (name + ".pem"), dir / (name + ".key")};
  const auto csr = dir / (name + ".csr");
  const auto extfile = dir / (name + ".ext");
  std::ofstream(extfile) << "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n" << ext;
  run("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj '/CN=" + cn +
      "' -keyout " + q(p.key) + " -out " + q(csr));
  run("openssl x509 -req -in " + q(csr) + " -CA " + q(ca) + " -CAkey " + q(ca_key) +
      " -CAcreateserial -days 2 -sha256 -extfile " + q(extfile) + " -out " + q(p.cert));
  ::chmod(p.key.c_str(), 0600);
  return p;
}

void make_ca(const std::filesystem::path& cert, const std::filesystem::path& key,
             const std::string& cn) {
  run("openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
      "-sha256 -subj '/CN=" +
      cn +
      "' -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign -keyout " +
      q(key) + " -out " + q(cert));
}

}  // namespace

TestCa make_test_ca(const std::filesystem::path& dir) {
  TestCa ca;
  ca.dir = dir;
  std::filesystem::create_directories(dir);
  ca.ca_file = dir / "ca.pem";
  ca.other_ca_file = dir / "other-ca.pem";
  make_ca(ca.ca_file, dir / "ca.key", "tokend test CA");
  make_ca(ca.other_ca_file, dir / "other-ca.key", "tokend rogue CA");
  auto s = ca.server("server", "localhost");
  ca.server_cert = s.cert;
  ca.server_key = s.key;
  return ca;
}

TestCa::Pair TestCa::client(const std::string& name, const std::string& cn, const std::string& san,
                            bool rogue) const {
  std::string ext = "extendedKeyUsage=clientAuth\n";
  if (!san.empty()) ext += "subjectAltName=" + san + "\n";
  return leaf(dir, name, cn, ext, rogue ? other_ca_file : ca_file,
              dir / (rogue ? "other-ca.key" : "ca.key"));
}

TestCa::Pair TestCa::server(const std::string& name, const std::string& cn) const {
  return leaf(dir, name, cn,
              "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n",
              ca_file, dir / "ca.key");
}

}  // namespace tokend::test

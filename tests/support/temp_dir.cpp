#include "support/temp_dir.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>
#include <stdexcept>

namespace tokend::test {

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "tokend-test-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  m_path = tmpl;
  ::chmod(m_path.c_str(), 0700);
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(m_path, ec);
}

std::string read_file_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file_bytes(const std::filesystem::path& p, const std::string& data, unsigned mode) {
  const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC, static_cast<mode_t>(mode));
  if (fd < 0) throw std::runtime_error("cannot write " + p.string());
  ::fchmod(fd, static_cast<mode_t>(mode));
  if (::write(fd, data.data(), data.size()) != static_cast<ssize_t>(data.size())) {
    ::close(fd);
    throw std::runtime_error("short write " + p.string());
  }
  ::close(fd);
}

std::string file_digest(const std::filesystem::path& p) {
  const std::string bytes = read_file_bytes(p);
  // FNV-1a 64 plus the size: enough to detect any change in a test.
  std::uint64_t h = 1469598103934665603ULL;
  for (const char c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ULL;
  }
  return std::to_string(bytes.size()) + ":" + std::to_string(h);
}

}  // namespace tokend::test

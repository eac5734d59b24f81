// A fresh private directory per test, removed afterwards.
#pragma once

#include <filesystem>
#include <string>

namespace tokend::test {

class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  [[nodiscard]] const std::filesystem::path& path() const { return m_path; }
  std::filesystem::path operator/(const std::string& name) const { return m_path / name; }

 private:
  std::filesystem::path m_path;
};

std::string read_file_bytes(const std::filesystem::path& p);
void write_file_bytes(const std::filesystem::path& p, const std::string& data,
                      unsigned mode = 0600);
// Hash of a file's bytes (for "unchanged" assertions).
std::string file_digest(const std::filesystem::path& p);

}  // namespace tokend::test

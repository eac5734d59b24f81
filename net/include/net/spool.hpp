// A large HTTP body kept in an anonymous temporary file instead of memory:
// proxied uploads and downloads (attachments) pass through tokend with
// bounded memory. The file is unlinked from the start (O_TMPFILE, else
// mkstemp + unlink), 0600, in tokend's private data directory, and is gone
// when the last owner closes it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string_view>

#include "core/error.hpp"
#include "core/fd.hpp"

namespace tokend::net {

class Spool {
 public:
  // Where spools are created (the daemon sets its data directory; default
  // the system's temporary directory).
  static void set_directory(std::filesystem::path dir);
  static Result<std::shared_ptr<Spool>> create();

  Result<> append(std::string_view bytes);
  // Up to `size` bytes from `offset`; 0 at the end.
  Result<std::size_t> read_at(std::uint64_t offset, char* out, std::size_t size) const;
  [[nodiscard]] std::uint64_t size() const { return m_size; }

 private:
  explicit Spool(int fd) : m_fd(fd) {}
  Fd m_fd;  // move-only, so Spool is too
  std::uint64_t m_size = 0;
};

}  // namespace tokend::net

#include "net/spool.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <string>

namespace tokend::net {

namespace {

std::filesystem::path& directory() {
  static std::filesystem::path dir;
  return dir;
}

}  // namespace

void Spool::set_directory(std::filesystem::path dir) {
  directory() = std::move(dir);
}

Result<std::shared_ptr<Spool>> Spool::create() {
  std::error_code ec;
  std::filesystem::path dir = directory();
  if (dir.empty()) dir = std::filesystem::temp_directory_path(ec);
  int fd = -1;
#ifdef O_TMPFILE
  fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
#endif
  if (fd < 0) {
    std::string templ = (dir / "tokend-spool-XXXXXX").string();
    fd = ::mkostemp(templ.data(), O_CLOEXEC);
    if (fd >= 0) ::unlink(templ.c_str());
  }
  if (fd < 0) {
    return fail(Errc::io, fmt::format("cannot create a temporary file in {} for a large body: {}",
                                      dir.string(), errno_text(errno)));
  }
  return std::shared_ptr<Spool>(new Spool(fd));
}

Result<> Spool::append(std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::pwrite(m_fd.get(), bytes.data(), bytes.size(), static_cast<off_t>(m_size));
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(Errc::io,
                  fmt::format("writing a large body to a temporary file: {}", errno_text(errno)));
    }
    m_size += static_cast<std::uint64_t>(n);
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return {};
}

Result<std::size_t> Spool::read_at(std::uint64_t offset, char* out, std::size_t size) const {
  for (;;) {
    const ssize_t n = ::pread(m_fd.get(), out, size, static_cast<off_t>(offset));
    if (n >= 0) return static_cast<std::size_t>(n);
    if (errno != EINTR)
      return fail(Errc::io, fmt::format("reading a large body back: {}", errno_text(errno)));
  }
}

}  // namespace tokend::net

#include "core/random.hpp"

#include <sys/random.h>

#include <cerrno>
#include <string>

namespace tokend {

Result<> fill_random(void* data, std::size_t size) {
  auto* p = static_cast<unsigned char*>(data);
  while (size > 0) {
    const ssize_t n = getrandom(p, size, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(Errc::io, "reading random bytes from the kernel failed: " + errno_text(errno));
    }
    p += n;
    size -= static_cast<std::size_t>(n);
  }
  return {};
}

Result<Secret> random_secret(std::size_t size) {
  std::string buf(size, '\0');
  if (auto r = fill_random(buf.data(), buf.size()); !r) {
    secure_wipe(buf);
    return std::unexpected(r.error());
  }
  return Secret::adopt(std::move(buf));
}

}  // namespace tokend

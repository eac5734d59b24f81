// The one owner of a POSIX file descriptor: closes it exactly once, when the
// owner goes out of scope or is reset. Move-only.
#pragma once

#include <unistd.h>

#include <utility>

namespace tokend {

class Fd {
 public:
  // Takes `fd` (a negative value: owns nothing).
  explicit Fd(int fd = -1) noexcept : m_fd(fd) {}
  Fd(Fd&& o) noexcept : m_fd(o.release()) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }

  [[nodiscard]] int get() const noexcept { return m_fd; }
  [[nodiscard]] bool valid() const noexcept { return m_fd >= 0; }

  // Closes what is owned and takes `fd` instead. close() errors are ignored:
  // on Linux the descriptor is gone either way, and retrying could close one
  // another thread has just been given.
  void reset(int fd = -1) noexcept {
    if (m_fd >= 0) ::close(m_fd);
    m_fd = fd;
  }

  // Gives up ownership without closing; the caller closes it.
  [[nodiscard]] int release() noexcept { return std::exchange(m_fd, -1); }

 private:
  int m_fd;
};

}  // namespace tokend

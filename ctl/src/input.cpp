#include "ctl/input.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>

#include "core/fd.hpp"

namespace tokend::ctl {

namespace {

constexpr std::size_t k_max_secret_bytes = 64 * 1024;

Result<Secret> read_fd(int fd, std::string_view what, std::string_view from) {
  std::string buf;
  char chunk[4096];
  for (;;) {
    const ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      secure_wipe(buf);
      return fail(Errc::io,
                  fmt::format("reading the {} from {}: {}", what, from, errno_text(errno)));
    }
    if (n == 0) break;
    buf.append(chunk, static_cast<std::size_t>(n));
    if (buf.size() > k_max_secret_bytes) {
      secure_wipe(buf);
      secure_wipe(chunk, sizeof chunk);
      return fail(Errc::invalid_argument,
                  fmt::format("the {} from {} is larger than 64 KiB", what, from));
    }
  }
  secure_wipe(chunk, sizeof chunk);
  while (!buf.empty() && (buf.back() == '\n' || buf.back() == '\r')) buf.pop_back();
  if (buf.empty())
    return fail(Errc::invalid_argument, fmt::format("the {} from {} is empty", what, from));
  if (buf.find('\n') != std::string::npos) {
    secure_wipe(buf);
    return fail(Errc::invalid_argument,
                fmt::format("the {} from {} has more than one line", what, from));
  }
  return Secret::adopt(std::move(buf));
}

}  // namespace

Result<Secret> read_secret(const std::string& source, std::string_view what, std::FILE* in) {
  if (source == "-") return read_fd(::fileno(in), what, "standard input");
  const Fd fd(::open(source.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid())
    return fail(Errc::invalid_argument,
                fmt::format("cannot open {} ({}) for the {}", source, errno_text(errno), what));
  return read_fd(fd.get(), what, source);
}

Result<Secret> prompt_secret(std::string_view prompt) {
  Fd tty(::open("/dev/tty", O_RDWR | O_CLOEXEC));
  if (!tty.valid()) return fail(Errc::unavailable, "no terminal to prompt on");
  const int fd = tty.get();
  termios old{};
  if (::tcgetattr(fd, &old) != 0) return fail(Errc::unavailable, "no terminal to prompt on");
  termios quiet = old;
  quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
  quiet.c_lflag |= ICANON;
  if (::write(fd, prompt.data(), prompt.size()) < 0)
    return fail(Errc::unavailable, "cannot write to the terminal");
  ::tcsetattr(fd, TCSAFLUSH, &quiet);
  // One line, not until EOF.
  std::string line;
  char c = 0;
  while (line.size() <= k_max_secret_bytes) {
    const ssize_t n = ::read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || c == '\n') break;
    line += c;
  }
  c = 0;
  ::tcsetattr(fd, TCSAFLUSH, &old);
  if (::write(fd, "\n", 1) < 0) {
    // The prompt line stays unterminated; nothing else to do.
  }
  while (!line.empty() && line.back() == '\r') line.pop_back();
  if (line.empty()) return fail(Errc::invalid_argument, "nothing was entered");
  return Secret::adopt(std::move(line));
}

}  // namespace tokend::ctl

// Drives one connection against a server on the caller's libuv loop: writes
// the input, half-closes, and turns the loop until the server has closed its
// side or a deadline passes. Non-blocking throughout, one thread.
#pragma once

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <cerrno>
#include <chrono>
#include <functional>
#include <string>
#include <string_view>

#include "net/loop.hpp"

namespace tokend::fuzz {

// `fd` is a connecting or connected non-blocking socket; it is closed here.
// `released`, when given, says whether the server has let go of the
// connection: the loop turns until it has, so that every allocation an input
// caused is freed before the next input. Otherwise libFuzzer sees more
// mallocs than frees and runs a leak check after most inputs (40% slower).
inline std::string exchange(net::Loop& loop, int fd, std::string_view bytes,
                            const std::function<bool()>& released = {},
                            std::chrono::milliseconds deadline = std::chrono::milliseconds{3000}) {
  std::string answer;
  const auto until = std::chrono::steady_clock::now() + deadline;
  bool half_closed = false;
  char buf[16384];
  while (std::chrono::steady_clock::now() < until) {
    uv_run(loop.get(), UV_RUN_NOWAIT);
    if (!bytes.empty()) {
      const auto n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n > 0)
        bytes.remove_prefix(static_cast<std::size_t>(n));
      else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOTCONN &&
               errno != EINPROGRESS)
        bytes = {};  // the server closed on us: read what it said
    }
    if (bytes.empty() && !half_closed)
      half_closed = ::shutdown(fd, SHUT_WR) == 0 || errno != ENOTCONN;
    const auto n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      answer.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    if (n == 0 && half_closed) break;  // the server closed its side
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOTCONN) break;
    // Nothing yet: let the loop wait a little for timers and I/O.
    uv_run(loop.get(), UV_RUN_ONCE);
  }
  ::close(fd);
  // Let the server see the close and free the connection before the next input.
  for (int i = 0; i < 8; ++i) uv_run(loop.get(), UV_RUN_NOWAIT);
  if (released) {
    while (!released() && std::chrono::steady_clock::now() < until) uv_run(loop.get(), UV_RUN_ONCE);
    // Close callbacks, which free the connection, run one turn after.
    for (int i = 0; i < 2; ++i) uv_run(loop.get(), UV_RUN_NOWAIT);
  }
  return answer;
}

inline void set_nonblocking(int fd) {
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
}

}  // namespace tokend::fuzz

#include "ctl/interrupt.hpp"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>

namespace tokend::ctl {

namespace {

volatile std::sig_atomic_t g_interrupted = 0;
int g_pipe[2] = {-1, -1};
struct sigaction g_old_int{};
struct sigaction g_old_term{};

extern "C" void on_interrupt(int) {
  g_interrupted = 1;
  if (g_pipe[1] >= 0) {
    const int saved = errno;
    const char byte = 1;
    // Non-blocking: a full pipe already wakes the reader.
    [[maybe_unused]] const auto n = ::write(g_pipe[1], &byte, 1);
    errno = saved;
  }
}

}  // namespace

InterruptWatch::InterruptWatch() {
  g_interrupted = 0;
  if (::pipe(g_pipe) == 0) {
    for (const int fd : g_pipe) {
      ::fcntl(fd, F_SETFD, FD_CLOEXEC);
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    }
  } else {
    g_pipe[0] = g_pipe[1] = -1;
  }
  struct sigaction sa{};
  sa.sa_handler = on_interrupt;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: blocking calls return EINTR
  ::sigaction(SIGINT, &sa, &g_old_int);
  ::sigaction(SIGTERM, &sa, &g_old_term);
}

InterruptWatch::~InterruptWatch() {
  ::sigaction(SIGINT, &g_old_int, nullptr);
  ::sigaction(SIGTERM, &g_old_term, nullptr);
  for (int& fd : g_pipe) {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
}

bool InterruptWatch::interrupted() const noexcept {
  return g_interrupted != 0;
}

int InterruptWatch::fd() const noexcept {
  return g_pipe[0];
}

}  // namespace tokend::ctl

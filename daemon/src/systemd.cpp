#include "daemon/systemd.hpp"

#include <string>

#ifdef TOKEND_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace tokend::daemon {

void notify(std::string_view state) {
#ifdef TOKEND_HAVE_SYSTEMD
  const std::string s(state);
  (void)sd_notify(0, s.c_str());
#else
  (void)state;
#endif
}

int activated_socket() {
#ifdef TOKEND_HAVE_SYSTEMD
  // unset_environment=1: children must not inherit LISTEN_FDS.
  const int n = sd_listen_fds(1);
  if (n >= 1 && sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_STREAM, 1, nullptr, 0) > 0) {
    return SD_LISTEN_FDS_START;
  }
#endif
  return -1;
}

}  // namespace tokend::daemon

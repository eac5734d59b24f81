// systemd integration: sd_notify and socket activation. Without libsystemd
// (macOS) both are no-ops.
#pragma once

#include <string_view>

namespace tokend::daemon {

void notify(std::string_view state);  // "READY=1", "STATUS=...", "STOPPING=1"
// The first socket passed by systemd (LISTEN_FDS), or -1.
int activated_socket();

}  // namespace tokend::daemon

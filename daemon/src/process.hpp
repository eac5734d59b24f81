// Start-up steps both modes share (daemon.cpp has them).
#pragma once

#include <sys/types.h>

#include <set>

namespace tokend::daemon {

// Many clients at once need many descriptors: use the hard limit.
void raise_fd_limit();

// The allowed uids that can match in this user namespace; warns about the
// others (systemd PrivateUsers=yes).
std::set<uid_t> usable_allowed_uids(const std::set<uid_t>& wanted);

}  // namespace tokend::daemon

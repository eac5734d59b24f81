// Start-up steps shared by tokend's main and tests.
#pragma once

#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/paths.hpp"
#include "store/sqlcipher_store.hpp"

namespace tokend::daemon {

// Process hardening: no core dumps, no ptrace attach by other processes of
// the same user, umask 077.
void harden_process();

// Checks/creates the data directory, resolves the key (generating it on first
// start) and opens the store.
Result<store::SqlcipherStore> open_store(const Paths& paths, const EnvLookup& env,
                                         const Clock& clock);

}  // namespace tokend::daemon

#include "daemon/startup.hpp"

#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "core/fs.hpp"
#include "store/key.hpp"

namespace tokend::daemon {

void harden_process() {
  ::umask(077);
  const rlimit no_core{0, 0};
  ::setrlimit(RLIMIT_CORE, &no_core);
#ifdef __linux__
  // Not dumpable: no core file, and /proc/PID/mem and ptrace are closed to
  // other processes of the same uid.
  ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
#endif
}

Result<store::SqlcipherStore> open_store(const Paths& paths, const EnvLookup& env,
                                         const Clock& clock) {
  if (auto r = fs::ensure_private_dir(paths.database.parent_path()); !r) {
    return std::unexpected(r.error().context("data directory"));
  }
  auto key = store::resolve_key(
      store::KeyOptions{paths.key_file, paths.key_file_explicit, paths.database}, env);
  if (!key) return std::unexpected(key.error());
  return store::SqlcipherStore::open(paths.database, *key, clock);
}

}  // namespace tokend::daemon

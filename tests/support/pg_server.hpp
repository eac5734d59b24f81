// A throwaway PostgreSQL server for tests: initdb into a temporary
// directory, postgres listening only on a Unix socket in it, a fresh database
// per test, stopped and removed at the end.
//
// The binaries are Debian's postgresql-15 (/usr/lib/postgresql/15/bin, or
// the directory in TOKEND_PG_BINDIR). When they are missing the test fails
// with a message naming the package: the PostgreSQL tests are never skipped
// silently.
//
// initdb and postgres refuse to run as root. Run as root (CI's Debian root,
// a container), the fixture runs them as the 'postgres' system user, which
// Debian's postgresql-common package (a dependency of postgresql-15)
// creates, or as 'nobody' when there is no such user; the temporary
// directory is then under /tmp (which that user can reach) and owned by it.
// The test itself (root) connects over the socket with trust
// authentication, as the cluster's superuser 'tokend_test'.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>

#include "core/secret.hpp"

namespace tokend::test {

class PgServer {
 public:
  // The process's server: started on first use (throws std::runtime_error,
  // which fails the test, when it cannot be started) and stopped when the
  // process exits. If the test process dies, the server goes with it (a
  // parent-death signal).
  static PgServer& shared();

  PgServer();
  ~PgServer();
  PgServer(const PgServer&) = delete;
  PgServer& operator=(const PgServer&) = delete;

  // A connection string for `database` as the superuser.
  [[nodiscard]] Secret conninfo(const std::string& database) const;
  // Runs SQL (no parameters; for set-up only) as the superuser; throws on error.
  void admin_exec(const std::string& database, const std::string& sql) const;
  // pg_dump of `database` in plain SQL, as text.
  [[nodiscard]] std::string dump(const std::string& database) const;
  // Everything the server has logged so far (every statement is logged,
  // with its parameters: log_statement = all).
  [[nodiscard]] std::string log() const;

 private:
  std::filesystem::path m_bin;
  std::filesystem::path m_dir;  // data/, the socket, the logs
  pid_t m_pid = -1;
  int m_pidfd = -1;
};

// A new, empty database on the shared server, dropped at the end.
class PgTestDatabase {
 public:
  PgTestDatabase();
  ~PgTestDatabase();
  PgTestDatabase(const PgTestDatabase&) = delete;
  PgTestDatabase& operator=(const PgTestDatabase&) = delete;

  [[nodiscard]] const std::string& name() const { return m_name; }
  [[nodiscard]] Secret conninfo() const { return PgServer::shared().conninfo(m_name); }
  void exec(const std::string& sql) const { PgServer::shared().admin_exec(m_name, sql); }
  [[nodiscard]] std::string dump() const { return PgServer::shared().dump(m_name); }

 private:
  std::string m_name;
};

}  // namespace tokend::test

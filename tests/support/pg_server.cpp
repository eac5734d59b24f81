#include "support/pg_server.hpp"

#include <fcntl.h>
#include <grp.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <vector>

#include "support/temp_dir.hpp"

namespace tokend::test {

namespace {

namespace stdfs = std::filesystem;
using std::chrono::steady_clock;

constexpr const char* k_superuser = "tokend_test";
constexpr const char* k_port = "5432";  // only names the socket file: no TCP listener
constexpr std::chrono::seconds k_start_deadline{60};
constexpr std::chrono::seconds k_stop_deadline{30};

stdfs::path bin_dir() {
  const char* env = std::getenv("TOKEND_PG_BINDIR");
  stdfs::path dir = env != nullptr && *env != '\0' ? env : "/usr/lib/postgresql/15/bin";
  for (const char* tool : {"initdb", "postgres", "pg_dump"}) {
    if (::access((dir / tool).c_str(), X_OK) != 0) {
      throw std::runtime_error(
          "PostgreSQL server binaries not found: no executable " + (dir / tool).string() +
          ". The PostgreSQL store tests need a real server: install the Debian package "
          "postgresql-15 (apt-get install postgresql-15; scripts/setup.sh installs it), or set "
          "TOKEND_PG_BINDIR to the bin directory of another PostgreSQL");
    }
  }
  return dir;
}

// Who runs initdb and postgres: ourselves, or, when we are root (which both
// refuse), the 'postgres' system user or 'nobody'.
struct Identity {
  bool switch_user = false;
  uid_t uid = 0;
  gid_t gid = 0;
};

Identity server_identity() {
  if (::geteuid() != 0) return {};
  for (const char* name : {"postgres", "nobody"}) {
    if (const passwd* pw = ::getpwnam(name); pw != nullptr) {
      return Identity{true, pw->pw_uid, pw->pw_gid};
    }
  }
  throw std::runtime_error(
      "running as root, and neither a 'postgres' nor a 'nobody' user exists to run the "
      "PostgreSQL test server as (initdb and postgres refuse to run as root)");
}

struct Child {
  pid_t pid = -1;
  int pidfd = -1;  // readable once the process has exited
};

// Starts argv[0] (a full path) with stdout and stderr appended to `log`,
// as `who`. With die_with_parent the child is sent SIGQUIT (PostgreSQL's
// immediate shutdown) if this process dies first.
Child spawn(const std::vector<std::string>& argv, const stdfs::path& log, const Identity& who,
            bool die_with_parent) {
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (log_fd < 0) throw std::runtime_error("cannot open " + log.string());
  if (who.switch_user && ::fchown(log_fd, who.uid, who.gid) != 0) {
    ::close(log_fd);
    throw std::runtime_error("cannot hand " + log.string() + " to the server's user");
  }
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(log_fd);
    throw std::runtime_error("fork failed");
  }
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec.
    if (::dup2(log_fd, STDOUT_FILENO) < 0 || ::dup2(log_fd, STDERR_FILENO) < 0) ::_exit(126);
    const int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd >= 0) ::dup2(null_fd, STDIN_FILENO);
    if (who.switch_user &&
        (::setgroups(0, nullptr) != 0 || ::setgid(who.gid) != 0 || ::setuid(who.uid) != 0)) {
      ::_exit(126);
    }
    // Set after setuid, which clears it; kept across exec.
    if (die_with_parent && (::prctl(PR_SET_PDEATHSIG, SIGQUIT) != 0 || ::getppid() != parent)) {
      ::_exit(126);
    }
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(log_fd);
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    throw std::runtime_error("pidfd_open failed (Linux 5.3 or newer is needed)");
  }
  return Child{pid, pidfd};
}

// Waits until the child exits or the deadline passes; true and reaped if it
// exited, with its wait status in *status.
bool wait_exit(Child& c, steady_clock::time_point deadline, int* status) {
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady_clock::now());
    pollfd p{c.pidfd, POLLIN, 0};
    const int n = ::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(0, left.count())));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    int st = 0;
    while (::waitpid(c.pid, &st, 0) < 0 && errno == EINTR) {
    }
    ::close(c.pidfd);
    c.pidfd = -1;
    if (status != nullptr) *status = st;
    return true;
  }
}

std::string tail(const stdfs::path& file) {
  const std::string text = read_file_bytes(file);
  return text.size() > 2000 ? text.substr(text.size() - 2000) : text;
}

// Runs a tool to completion within the deadline; throws with its log if it
// fails.
void run_tool(const std::vector<std::string>& argv, const stdfs::path& log, const Identity& who) {
  Child c = spawn(argv, log, who, /*die_with_parent=*/true);
  int status = 0;
  if (!wait_exit(c, steady_clock::now() + k_start_deadline, &status)) {
    ::kill(c.pid, SIGKILL);
    wait_exit(c, steady_clock::now() + k_stop_deadline, nullptr);
    throw std::runtime_error(argv[0] + " did not finish in time:\n" + tail(log));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw std::runtime_error(argv[0] + " failed:\n" + tail(log));
  }
}

struct PqFinish {
  void operator()(PGconn* c) const noexcept { PQfinish(c); }
};
struct PqClear {
  void operator()(PGresult* r) const noexcept { PQclear(r); }
};

}  // namespace

PgServer& PgServer::shared() {
  static PgServer server;
  return server;
}

PgServer::PgServer() : m_bin(bin_dir()) {
  const Identity who = server_identity();
  // As root the server's user must reach the directory: /tmp, not a
  // TMPDIR that may sit under root's 0700 home.
  const stdfs::path parent = who.switch_user ? stdfs::path("/tmp") : stdfs::temp_directory_path();
  std::string tmpl = (parent / "tokend-pg-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed in " + tmpl);
  m_dir = tmpl;
  if (who.switch_user && ::chown(m_dir.c_str(), who.uid, who.gid) != 0) {
    stdfs::remove_all(m_dir);
    throw std::runtime_error("cannot hand " + m_dir.string() + " to the server's user");
  }
  try {
    // No fsync anywhere: the tests check the store's behaviour, and a
    // throwaway cluster need not survive a power cut.
    run_tool({(m_bin / "initdb").string(), "--pgdata=" + (m_dir / "data").string(),
              "--username=" + std::string(k_superuser), "--auth=trust", "--encoding=UTF8",
              "--locale=C", "--no-sync", "--no-instructions"},
             m_dir / "initdb.log", who);
    Child c = spawn({(m_bin / "postgres").string(),
                     "-D",
                     (m_dir / "data").string(),
                     "-k",
                     m_dir.string(),
                     "-p",
                     k_port,
                     "-c",
                     "listen_addresses=",
                     "-c",
                     "fsync=off",
                     "-c",
                     "full_page_writes=off",
                     "-c",
                     "shared_buffers=16MB",
                     "-c",
                     "max_connections=30",
                     "-c",
                     "log_statement=all",
                     "-c",
                     "log_line_prefix=%m [%p] "},
                    m_dir / "postgres.log", who, /*die_with_parent=*/true);
    m_pid = c.pid;
    m_pidfd = c.pidfd;
    // Ready when it answers a ping; the wait between pings is a poll on the
    // server's exit, so a server that fails to start is reported at once.
    const auto deadline = steady_clock::now() + k_start_deadline;
    const std::string ping = conninfo("postgres").reveal().data();
    for (;;) {
      if (PQping(ping.c_str()) == PQPING_OK) break;
      if (steady_clock::now() > deadline) {
        throw std::runtime_error("PostgreSQL did not accept connections within 60 s:\n" +
                                 tail(m_dir / "postgres.log"));
      }
      pollfd p{m_pidfd, POLLIN, 0};
      if (::poll(&p, 1, 20) > 0) {
        int status = 0;
        ::waitpid(m_pid, &status, 0);
        m_pid = -1;
        throw std::runtime_error("PostgreSQL exited while starting:\n" +
                                 tail(m_dir / "postgres.log"));
      }
    }
  } catch (...) {
    if (m_pid > 0) {
      ::kill(m_pid, SIGQUIT);
      Child c{m_pid, m_pidfd};
      wait_exit(c, steady_clock::now() + k_stop_deadline, nullptr);
    }
    std::error_code ec;
    stdfs::remove_all(m_dir, ec);
    throw;
  }
}

PgServer::~PgServer() {
  if (m_pid > 0) {
    // Fast shutdown (SIGINT): connections are closed and the server exits.
    ::kill(m_pid, SIGINT);
    Child c{m_pid, m_pidfd};
    if (!wait_exit(c, steady_clock::now() + k_stop_deadline, nullptr)) {
      ::kill(m_pid, SIGKILL);
      wait_exit(c, steady_clock::now() + k_stop_deadline, nullptr);
    }
  }
  std::error_code ec;
  stdfs::remove_all(m_dir, ec);
}

Secret PgServer::conninfo(const std::string& database) const {
  return Secret("host=" + m_dir.string() + " port=" + k_port + " user=" + k_superuser +
                " dbname=" + database);
}

void PgServer::admin_exec(const std::string& database, const std::string& sql) const {
  const std::unique_ptr<PGconn, PqFinish> conn(PQconnectdb(conninfo(database).reveal().data()));
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    throw std::runtime_error(std::string("connecting to the test server: ") +
                             PQerrorMessage(conn.get()));
  }
  const std::unique_ptr<PGresult, PqClear> res(PQexec(conn.get(), sql.c_str()));
  const ExecStatusType st = PQresultStatus(res.get());
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    throw std::runtime_error(sql + ": " + PQerrorMessage(conn.get()));
  }
}

std::string PgServer::dump(const std::string& database) const {
  TempDir out;
  run_tool({(m_bin / "pg_dump").string(), "--no-owner", "--format=plain",
            "--file=" + (out / "dump.sql").string(),
            "--dbname=" + std::string(conninfo(database).reveal())},
           out / "pg_dump.log", Identity{});
  return read_file_bytes(out / "dump.sql");
}

std::string PgServer::log() const {
  return read_file_bytes(m_dir / "postgres.log");
}

PgTestDatabase::PgTestDatabase() {
  static int counter = 0;
  m_name = "tokend_test_" + std::to_string(++counter);
  PgServer::shared().admin_exec("postgres", "CREATE DATABASE " + m_name);
}

PgTestDatabase::~PgTestDatabase() {
  try {
    PgServer::shared().admin_exec("postgres", "DROP DATABASE " + m_name + " WITH (FORCE)");
  } catch (...) {  // NOLINT(bugprone-empty-catch): the server is removed at exit anyway
  }
}

}  // namespace tokend::test

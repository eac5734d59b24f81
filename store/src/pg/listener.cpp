// PgListener: LISTEN on a connection of its own. The owner polls socket()
// on the loop; read() only consumes what has arrived (PQconsumeInput never
// blocks on a readable socket) and hands out the notifications.
#include <fmt/format.h>
#include <libpq-fe.h>
#include <spdlog/spdlog.h>

#include <array>
#include <memory>

#include "store/detail/pg.hpp"
#include "store/pg_store.hpp"

namespace tokend::store {

namespace detail::pg {

// Not in the anonymous namespace: PgListener::State holds one.
struct ListenFinish {
  void operator()(pg_conn* c) const noexcept { PQfinish(c); }
};
using ListenConn = std::unique_ptr<pg_conn, ListenFinish>;

}  // namespace detail::pg

namespace {

using ConnPtr = detail::pg::ListenConn;

std::string trimmed(const char* message) {
  std::string s = message != nullptr ? message : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

struct Clear {
  void operator()(pg_result* r) const noexcept { PQclear(r); }
};

Result<ConnPtr> connect_and_listen(const Secret& conninfo, const std::string& channel) {
  const Secret info(conninfo.reveal());
  const std::array<const char*, 6> keywords{
      "application_name", "options", "connect_timeout", "dbname", "client_encoding", nullptr};
  const std::array<const char*, 6> values{"tokend-listen",
                                          detail::pg::k_session_options,
                                          detail::pg::k_connect_timeout_s,
                                          info.reveal().data(),
                                          "UTF8",
                                          nullptr};
  ConnPtr conn(PQconnectdbParams(keywords.data(), values.data(), /*expand_dbname=*/1));
  if (!conn) return fail(Errc::internal, "PostgreSQL: out of memory while connecting");
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    return fail(Errc::unavailable, "cannot connect to PostgreSQL to listen for other replicas: " +
                                       trimmed(PQerrorMessage(conn.get())));
  }
  // The channel is an identifier of ours, never user input; quoted anyway.
  char* quoted = PQescapeIdentifier(conn.get(), channel.data(), channel.size());
  if (quoted == nullptr) return fail(Errc::internal, "PostgreSQL: cannot quote the channel");
  const std::string sql = std::string("LISTEN ") + quoted;
  PQfreemem(quoted);
  std::unique_ptr<pg_result, Clear> res(PQexec(conn.get(), sql.c_str()));
  if (!res || PQresultStatus(res.get()) != PGRES_COMMAND_OK) {
    return fail(Errc::unavailable,
                "PostgreSQL: LISTEN failed: " + trimmed(PQerrorMessage(conn.get())));
  }
  if (PQsetnonblocking(conn.get(), 1) != 0) {
    return fail(Errc::internal, "PostgreSQL: cannot make the listening connection non-blocking");
  }
  return conn;
}

}  // namespace

struct PgListener::State {
  Secret conninfo;
  std::string channel;
  detail::pg::ListenConn conn;
};

PgListener::PgListener(std::unique_ptr<State> state) : m_state(std::move(state)) {}
PgListener::PgListener(PgListener&&) noexcept = default;
PgListener& PgListener::operator=(PgListener&&) noexcept = default;
PgListener::~PgListener() = default;

Result<PgListener> PgListener::open(const Secret& conninfo, std::string channel) {
  auto conn = connect_and_listen(conninfo, channel);
  if (!conn) return std::unexpected(conn.error());
  return PgListener(std::make_unique<State>(
      State{Secret(conninfo.reveal()), std::move(channel), std::move(*conn)}));
}

int PgListener::socket() const {
  if (!m_state->conn || PQstatus(m_state->conn.get()) != CONNECTION_OK) return -1;
  return PQsocket(m_state->conn.get());
}

Result<std::vector<Notification>> PgListener::read() {
  pg_conn* conn = m_state->conn.get();
  if (conn == nullptr) return fail(Errc::unavailable, "not connected to PostgreSQL");
  if (PQconsumeInput(conn) == 0 || PQstatus(conn) != CONNECTION_OK) {
    // The connection (and its socket, which the owner still polls) stays
    // until reconnect(): the owner stops polling first.
    const std::string why = trimmed(PQerrorMessage(conn));
    return fail(Errc::unavailable, "the listening connection to PostgreSQL was lost: " + why);
  }
  std::vector<Notification> out;
  while (PGnotify* n = PQnotifies(conn)) {
    out.push_back(
        Notification{n->relname != nullptr ? n->relname : "", n->extra != nullptr ? n->extra : ""});
    PQfreemem(n);
  }
  return out;
}

Result<> PgListener::reconnect() {
  m_state->conn.reset();
  auto conn = connect_and_listen(m_state->conninfo, m_state->channel);
  if (!conn) return std::unexpected(conn.error());
  m_state->conn = std::move(*conn);
  return {};
}

}  // namespace tokend::store

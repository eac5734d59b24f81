#include <fmt/format.h>
#include <libpq-fe.h>
#include <spdlog/spdlog.h>

#include <array>
#include <cstring>

#include "store/detail/pg.hpp"

namespace tokend::store::detail::pg {

namespace {

// Type OIDs from the server's pg_type catalogue (stable since PostgreSQL 7).
constexpr unsigned k_oid_bytea = 17;
constexpr unsigned k_oid_int8 = 20;
constexpr unsigned k_oid_text = 25;
constexpr int k_binary = 1;

std::string to_big_endian(std::int64_t value) {
  auto bits = static_cast<std::uint64_t>(value);
  std::string out(8, '\0');
  for (int i = 7; i >= 0; --i) {
    out[static_cast<std::size_t>(i)] = static_cast<char>(bits & 0xffU);
    bits >>= 8U;
  }
  return out;
}

std::int64_t from_big_endian(std::string_view bytes) {
  std::uint64_t bits = 0;
  for (const char c : bytes) bits = (bits << 8U) | static_cast<unsigned char>(c);
  // Sign-extend 2- and 4-byte integers.
  const std::size_t width = bytes.size() * 8;
  if (width > 0 && width < 64 && (bits >> (width - 1)) != 0) bits |= ~0ULL << width;
  return static_cast<std::int64_t>(bits);
}

std::string trimmed(const char* message) {
  std::string s = message != nullptr ? message : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// What a failure means for the caller: a lost or refused connection can
// work again later, a serialization failure or deadlock is worth a retry,
// anything else is a database error.
Errc errc_for_sqlstate(std::string_view state) {
  if (state.starts_with("08") || state == "57P01" || state == "57P02" || state == "57P03") {
    return Errc::unavailable;
  }
  if (state == "40001" || state == "40P01") return Errc::transient;
  return Errc::database;
}

// Only the primary message and the SQLSTATE: the DETAIL of a constraint
// violation shows the row's values.
Error result_error(const PGresult* res, pg_conn* conn) {
  const char* state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
  const char* primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
  if (state == nullptr) {
    // No server answer: libpq's own message (the connection was lost).
    return Error{Errc::unavailable, "PostgreSQL: " + trimmed(PQerrorMessage(conn))};
  }
  return Error{errc_for_sqlstate(state),
               fmt::format("PostgreSQL: {} (SQLSTATE {})", trimmed(primary), state)};
}

// Notices (e.g. "relation already exists, skipping") go to the debug log
// instead of libpq's default, stderr.
void on_notice(void* /*arg*/, const PGresult* res) noexcept {
  try {
    spdlog::debug("PostgreSQL notice: {}",
                  trimmed(PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)));
  } catch (...) {  // NOLINT(bugprone-empty-catch): a notice that cannot be logged is dropped
  }
}

}  // namespace

Params& Params::text(std::string_view value) {
  m_values.push_back(Value{k_oid_text, value, false, -1});
  return *this;
}

Params& Params::bytes(std::string_view value) {
  m_values.push_back(Value{k_oid_bytea, value, false, -1});
  return *this;
}

Params& Params::bytes_or_null(std::string_view value) {
  m_values.push_back(Value{k_oid_bytea, value, value.empty(), -1});
  return *this;
}

Params& Params::int8(std::int64_t value) {
  m_ints.push_back(to_big_endian(value));
  m_values.push_back(Value{k_oid_int8, {}, false, static_cast<int>(m_ints.size() - 1)});
  return *this;
}

Params& Params::int8(std::optional<std::int64_t> value) {
  if (value) return int8(*value);
  m_values.push_back(Value{k_oid_int8, {}, true, -1});
  return *this;
}

Params& Params::null_text() {
  m_values.push_back(Value{k_oid_text, {}, true, -1});
  return *this;
}

void Rows::Clear::operator()(pg_result* r) const noexcept {
  PQclear(r);
}

Rows::Rows(pg_result* result) : m_result(result) {}

int Rows::size() const {
  return m_result ? PQntuples(m_result.get()) : 0;
}

std::int64_t Rows::affected() const {
  if (!m_result) return 0;
  const char* n = PQcmdTuples(m_result.get());
  std::int64_t out = 0;
  for (; n != nullptr && *n >= '0' && *n <= '9'; ++n) out = out * 10 + (*n - '0');
  return out;
}

std::string_view Rows::command() const {
  if (!m_result) return {};
  const char* tag = PQcmdStatus(m_result.get());
  return tag != nullptr ? tag : "";
}

bool Rows::is_null(int row, int col) const {
  return PQgetisnull(m_result.get(), row, col) != 0;
}

std::string_view Rows::bytes(int row, int col) const {
  if (is_null(row, col)) return {};
  return {PQgetvalue(m_result.get(), row, col),
          static_cast<std::size_t>(PQgetlength(m_result.get(), row, col))};
}

std::string Rows::text(int row, int col) const {
  return std::string(bytes(row, col));
}

std::int64_t Rows::int8(int row, int col) const {
  return from_big_endian(bytes(row, col));
}

std::optional<std::int64_t> Rows::opt_int8(int row, int col) const {
  if (is_null(row, col)) return std::nullopt;
  return int8(row, col);
}

void Connection::Finish::operator()(pg_conn* c) const noexcept {
  PQfinish(c);
}

Connection::Connection(pg_conn* conn) : m_conn(conn) {}

Result<Connection> Connection::open(const Secret& conninfo) {
  // The caller's string is expanded as "dbname" (libpq's rule for a
  // connection string or URI in that place): application_name before it is a
  // default the string may override, client_encoding after it is ours.
  // libpq wants a NUL-terminated string: the copy is one, and is wiped.
  const Secret info(conninfo.reveal());
  // statement_timeout and connect_timeout are defaults too.
  const std::array<const char*, 6> keywords{
      "application_name", "options", "connect_timeout", "dbname", "client_encoding", nullptr};
  const std::array<const char*, 6> values{
      "tokend", k_session_options, k_connect_timeout_s, info.reveal().data(), "UTF8", nullptr};
  Connection c(PQconnectdbParams(keywords.data(), values.data(), /*expand_dbname=*/1));
  if (!c.m_conn) return fail(Errc::internal, "PostgreSQL: out of memory while connecting");
  if (PQstatus(c.m_conn.get()) != CONNECTION_OK) {
    return fail(Errc::unavailable,
                "cannot connect to PostgreSQL: " + trimmed(PQerrorMessage(c.m_conn.get())));
  }
  PQsetNoticeReceiver(c.m_conn.get(), on_notice, nullptr);
  return c;
}

Result<Rows> Connection::exec(const char* sql, const Params& params) {
  pg_conn* conn = m_conn.get();
  if (PQstatus(conn) != CONNECTION_OK) {
    if (m_in_transaction) {
      return fail(Errc::unavailable,
                  "the connection to PostgreSQL was lost during a transaction, which the server "
                  "has rolled back: " +
                      trimmed(PQerrorMessage(conn)));
    }
    PQreset(conn);
    if (PQstatus(conn) != CONNECTION_OK) {
      return fail(Errc::unavailable,
                  "the connection to PostgreSQL was lost and could not be re-established: " +
                      trimmed(PQerrorMessage(conn)));
    }
    ++m_resets;
    spdlog::info("the connection to PostgreSQL was lost and has been re-established");
  }
  const std::size_t n = params.m_values.size();
  std::vector<unsigned> types(n);
  std::vector<const char*> values(n);
  std::vector<int> lengths(n);
  const std::vector<int> formats(n, k_binary);
  for (std::size_t i = 0; i < n; ++i) {
    const auto& v = params.m_values[i];
    types[i] = v.type;
    if (v.null) continue;
    const std::string_view bytes =
        v.owned >= 0 ? std::string_view(params.m_ints[static_cast<std::size_t>(v.owned)]) : v.view;
    // A zero-length binary value still needs a non-null pointer (NULL means
    // SQL NULL to libpq).
    values[i] = bytes.data() != nullptr ? bytes.data() : "";
    lengths[i] = static_cast<int>(bytes.size());
  }
  Rows rows(PQexecParams(conn, sql, static_cast<int>(n), types.data(), values.data(),
                         lengths.data(), formats.data(), k_binary));
  const PGresult* res = rows.m_result.get();
  if (res == nullptr) {
    return fail(Errc::unavailable, "PostgreSQL: " + trimmed(PQerrorMessage(conn)));
  }
  const ExecStatusType status = PQresultStatus(res);
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
    return std::unexpected(result_error(res, conn));
  }
  return rows;
}

Result<Transaction> Transaction::begin(Connection& conn) {
  if (auto r = conn.exec("BEGIN"); !r) return std::unexpected(r.error());
  conn.m_in_transaction = true;
  return Transaction(conn);
}

Transaction::Transaction(Transaction&& other) noexcept
    : m_conn(other.m_conn), m_open(other.m_open) {
  other.m_open = false;
}

Transaction::~Transaction() {
  if (!m_open) return;
  // A lost connection has rolled back on the server already; the next
  // statement outside the transaction resets it.
  if (auto r = m_conn->exec("ROLLBACK"); !r) {
    spdlog::warn("rolling back a PostgreSQL transaction failed: {}", r.error().message);
  }
  m_conn->m_in_transaction = false;
}

Result<> Transaction::commit() {
  m_open = false;
  auto r = m_conn->exec("COMMIT");
  m_conn->m_in_transaction = false;
  if (!r) return std::unexpected(r.error());
  // COMMIT of a transaction in which a statement failed answers ROLLBACK,
  // not an error.
  if (r->command() == "ROLLBACK") {
    return fail(Errc::database, "PostgreSQL rolled the transaction back instead of committing it");
  }
  return {};
}

}  // namespace tokend::store::detail::pg

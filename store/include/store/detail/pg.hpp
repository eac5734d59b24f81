// RAII over libpq. Internal to store/ and its tests.
//
// Every statement goes through PQexecParams: values travel as parameters in
// binary format, never inside the SQL text, so nothing a caller stores lands
// in pg_stat_statements or the server's statement log. Results come back in
// binary format too (bytea without hex decoding, integers without parsing).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.hpp"
#include "core/secret.hpp"

struct pg_conn;
struct pg_result;

namespace tokend::store::detail::pg {

// The parameters of one statement, $1 first. Text and bytea values are not
// copied: they must outlive the exec() call that uses them.
class Params {
 public:
  Params& text(std::string_view value);
  Params& bytes(std::string_view value);
  Params& int8(std::int64_t value);
  Params& int8(std::optional<std::int64_t> value);
  // A bytea that is NULL when `value` is empty.
  Params& bytes_or_null(std::string_view value);
  Params& null_text();

 private:
  friend class Connection;
  struct Value {
    unsigned type = 0;  // the type's OID
    std::string_view view;
    bool null = false;
    int owned = -1;  // index into m_ints for integers
  };
  std::vector<Value> m_values;
  std::vector<std::string> m_ints;  // big-endian bytes of int8 values
};

// A statement's result rows. Column getters take the row and the 0-based
// column; the column types are what the statement's SQL says.
class Rows {
 public:
  Rows() = default;
  explicit Rows(pg_result* result);
  Rows(Rows&&) noexcept = default;
  Rows& operator=(Rows&&) noexcept = default;
  Rows(const Rows&) = delete;
  Rows& operator=(const Rows&) = delete;
  ~Rows() = default;

  [[nodiscard]] int size() const;
  [[nodiscard]] bool empty() const { return size() == 0; }
  // Rows changed by an INSERT, UPDATE or DELETE.
  [[nodiscard]] std::int64_t affected() const;
  // The command tag ("INSERT 0 1", "COMMIT", "ROLLBACK").
  [[nodiscard]] std::string_view command() const;

  [[nodiscard]] bool is_null(int row, int col) const;
  [[nodiscard]] std::string text(int row, int col) const;
  // text and bytea columns; a view into the result (empty for NULL).
  [[nodiscard]] std::string_view bytes(int row, int col) const;
  // int2, int4 and int8 columns (0 for NULL).
  [[nodiscard]] std::int64_t int8(int row, int col) const;
  [[nodiscard]] std::optional<std::int64_t> opt_int8(int row, int col) const;

 private:
  friend class Connection;
  struct Clear {
    void operator()(pg_result* r) const noexcept;
  };
  std::unique_ptr<pg_result, Clear> m_result;
};

class Connection {
 public:
  // Connects with a libpq connection string or URI ("host=/run/postgresql
  // dbname=tokend", "postgresql://..."). The string may hold a password, so
  // it is a Secret and never part of a message.
  static Result<Connection> open(const Secret& conninfo);

  Connection(Connection&&) noexcept = default;
  Connection& operator=(Connection&&) noexcept = default;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection() = default;

  // One statement. A connection that was lost is reset before the statement
  // is sent (once; the statement fails with Errc::unavailable if that does
  // not bring it back). Errors carry the server's primary message and
  // SQLSTATE, never the statement's parameters.
  Result<Rows> exec(const char* sql, const Params& params = {});

  // How often the connection was re-established: a session's advisory
  // locks die with it, so a claim taken before a reset is gone.
  [[nodiscard]] std::uint64_t resets() const { return m_resets; }

 private:
  struct Finish {
    void operator()(pg_conn* c) const noexcept;
  };
  friend class Transaction;
  explicit Connection(pg_conn* conn);
  std::unique_ptr<pg_conn, Finish> m_conn;
  // Inside a transaction a lost connection is not reset: the statements
  // after it would run outside the transaction.
  bool m_in_transaction = false;
  std::uint64_t m_resets = 0;
};

// Options every connection of tokend's gets unless the connection string
// sets "options" itself: a statement that runs longer than this is
// cancelled (libpq is called on the loop thread), and a connect that does
// not finish in time fails.
inline constexpr const char* k_session_options = "-c statement_timeout=15000";
inline constexpr const char* k_connect_timeout_s = "10";

// BEGIN ... COMMIT; rolled back when destroyed without a successful commit().
class Transaction {
 public:
  static Result<Transaction> begin(Connection& conn);
  Transaction(Transaction&& other) noexcept;
  Transaction& operator=(Transaction&&) = delete;
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  ~Transaction();

  Result<> commit();

 private:
  explicit Transaction(Connection& conn) : m_conn(&conn) {}
  Connection* m_conn;
  bool m_open = true;
};

// The schema: versions in the schema_version table, forward migrations in
// one transaction each (store/src/pg/migrations.cpp). Safe to run from
// several processes at once: each migration takes an advisory lock and
// re-reads the version under it.
int latest_schema_version();
Result<> migrate(Connection& conn, std::optional<int> target = {});
// 0 for a database without the schema_version table.
Result<int> schema_version(Connection& conn);

}  // namespace tokend::store::detail::pg

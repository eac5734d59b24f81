// RAII over the SQLCipher C API. Internal to store/ and its tests.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "core/error.hpp"
#include "core/secret.hpp"

struct sqlite3;
struct sqlite3_stmt;

namespace tokend::store::detail {

class Stmt {
 public:
  Stmt() = default;
  Stmt(sqlite3* db, sqlite3_stmt* stmt) : m_db(db), m_stmt(stmt) {}
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  Stmt(Stmt&& o) noexcept : m_db(o.m_db), m_stmt(o.m_stmt) { o.m_stmt = nullptr; }
  Stmt& operator=(Stmt&& o) noexcept;
  ~Stmt();

  // Parameters are 1-based. Text and blobs are bound without a copy: the
  // argument must outlive step().
  Stmt& bind(int idx, std::string_view text);
  Stmt& bind(int idx, const Secret& secret);
  Stmt& bind(int idx, std::int64_t value);
  Stmt& bind(int idx, std::optional<std::int64_t> value);
  Stmt& bind_null(int idx);

  // true: a row is available; false: done.
  Result<bool> step();
  // Runs to completion (for statements without rows).
  Result<> run();
  void reset();

  [[nodiscard]] bool is_null(int col) const;
  [[nodiscard]] std::int64_t get_int(int col) const;
  [[nodiscard]] std::optional<std::int64_t> get_opt_int(int col) const;
  [[nodiscard]] std::string get_text(int col) const;
  [[nodiscard]] Secret get_secret(int col) const;

 private:
  sqlite3* m_db = nullptr;
  sqlite3_stmt* m_stmt = nullptr;
};

class Db {
 public:
  // Opens (creating if needed) without touching the key.
  static Result<std::unique_ptr<Db>> open(const std::filesystem::path& path);
  ~Db();
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;

  // sqlite3_key with the given key bytes ("x'..'" for raw keys).
  Result<> key(std::string_view key_bytes);
  Result<> exec(std::string_view sql);
  Result<Stmt> prepare(std::string_view sql);
  // A cached prepared statement, reset and with bindings cleared. Valid until
  // the next call with the same SQL.
  Result<Stmt*> cached(const std::string& sql);
  Result<std::int64_t> query_int(std::string_view sql);
  [[nodiscard]] std::int64_t changes() const;
  [[nodiscard]] std::int64_t last_insert_rowid() const;
  [[nodiscard]] std::string last_error() const;
  [[nodiscard]] int last_error_code() const;

 private:
  explicit Db(sqlite3* db) : m_db(db) {}
  sqlite3* m_db;
  std::map<std::string, Stmt, std::less<>> m_cache;
};

// BEGIN IMMEDIATE on construction; rolls back unless commit() succeeded.
class Transaction {
 public:
  static Result<Transaction> begin(Db& db);
  Transaction(Transaction&& o) noexcept : m_db(o.m_db) { o.m_db = nullptr; }
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  Transaction& operator=(Transaction&&) = delete;
  ~Transaction();
  Result<> commit();

 private:
  explicit Transaction(Db* db) : m_db(db) {}
  Db* m_db;
};

// Schema migrations (migrations.cpp).
int latest_schema_version();
// Brings the schema to `target` (default: latest); each step in its own
// transaction together with its user_version bump.
Result<> migrate(Db& db, std::optional<int> target = std::nullopt);

}  // namespace tokend::store::detail

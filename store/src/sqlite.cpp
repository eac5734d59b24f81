#include <fmt/format.h>
#include <sqlite3.h>

#include "store/detail/db.hpp"

namespace tokend::store::detail {

namespace {

Error db_error(sqlite3* db, std::string_view what) {
  const int code = sqlite3_extended_errcode(db);
  const int primary = code & 0xff;
  const Errc errc = primary == SQLITE_NOTADB                             ? Errc::wrong_key
                    : primary == SQLITE_CORRUPT                          ? Errc::corrupt
                    : primary == SQLITE_CONSTRAINT                       ? Errc::conflict
                    : primary == SQLITE_BUSY || primary == SQLITE_LOCKED ? Errc::unavailable
                                                                         : Errc::database;
  return Error{errc, fmt::format("{}: {}", what, sqlite3_errmsg(db))};
}

}  // namespace

Stmt& Stmt::operator=(Stmt&& o) noexcept {
  if (this != &o) {
    sqlite3_finalize(m_stmt);
    m_db = o.m_db;
    m_stmt = o.m_stmt;
    o.m_stmt = nullptr;
  }
  return *this;
}

Stmt::~Stmt() {
  sqlite3_finalize(m_stmt);
}

Stmt& Stmt::bind(int idx, std::string_view text) {
  sqlite3_bind_text(m_stmt, idx, text.data(), static_cast<int>(text.size()), SQLITE_STATIC);
  return *this;
}

Stmt& Stmt::bind(int idx, const Secret& secret) {
  // No SQLITE_TRANSIENT: a copy would be freed unwiped inside SQLite.
  return bind(idx, secret.reveal());
}

Stmt& Stmt::bind(int idx, std::int64_t value) {
  sqlite3_bind_int64(m_stmt, idx, value);
  return *this;
}

Stmt& Stmt::bind(int idx, std::optional<std::int64_t> value) {
  return value ? bind(idx, *value) : bind_null(idx);
}

Stmt& Stmt::bind_null(int idx) {
  sqlite3_bind_null(m_stmt, idx);
  return *this;
}

Result<bool> Stmt::step() {
  const int rc = sqlite3_step(m_stmt);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return std::unexpected(db_error(m_db, "database step failed"));
}

Result<> Stmt::run() {
  for (;;) {
    auto r = step();
    if (!r) return std::unexpected(r.error());
    if (!*r) return {};
  }
}

void Stmt::reset() {
  sqlite3_reset(m_stmt);
  sqlite3_clear_bindings(m_stmt);
}

bool Stmt::is_null(int col) const {
  return sqlite3_column_type(m_stmt, col) == SQLITE_NULL;
}

std::int64_t Stmt::get_int(int col) const {
  return sqlite3_column_int64(m_stmt, col);
}

std::optional<std::int64_t> Stmt::get_opt_int(int col) const {
  if (is_null(col)) return std::nullopt;
  return get_int(col);
}

std::string Stmt::get_text(int col) const {
  const auto* p = sqlite3_column_text(m_stmt, col);
  if (p == nullptr) return {};
  return std::string(reinterpret_cast<const char*>(p),
                     static_cast<std::size_t>(sqlite3_column_bytes(m_stmt, col)));
}

Secret Stmt::get_secret(int col) const {
  const auto* p = sqlite3_column_text(m_stmt, col);
  if (p == nullptr) return {};
  return Secret(std::string_view(reinterpret_cast<const char*>(p),
                                 static_cast<std::size_t>(sqlite3_column_bytes(m_stmt, col))));
}

Result<std::unique_ptr<Db>> Db::open(const std::filesystem::path& path) {
  sqlite3* raw = nullptr;
  const int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX |
                    SQLITE_OPEN_NOFOLLOW | SQLITE_OPEN_EXRESCODE;
  const int rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = raw != nullptr ? sqlite3_errmsg(raw) : sqlite3_errstr(rc);
    sqlite3_close_v2(raw);
    return fail(Errc::database, fmt::format("opening database {}: {}", path.string(), msg));
  }
  sqlite3_extended_result_codes(raw, 1);
  return std::unique_ptr<Db>(new Db(raw));
}

Db::~Db() {
  m_cache.clear();  // finalize before close
  sqlite3_close_v2(m_db);
}

Result<> Db::key(std::string_view key_bytes) {
  if (sqlite3_key(m_db, key_bytes.data(), static_cast<int>(key_bytes.size())) != SQLITE_OK) {
    return std::unexpected(db_error(m_db, "applying the database key"));
  }
  return {};
}

Result<> Db::exec(std::string_view sql) {
  const std::string s(sql);
  char* err = nullptr;
  if (sqlite3_exec(m_db, s.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    sqlite3_free(err);
    return std::unexpected(db_error(m_db, "database statement failed"));
  }
  return {};
}

Result<Stmt> Db::prepare(std::string_view sql) {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(m_db, sql.data(), static_cast<int>(sql.size()), &stmt, nullptr) !=
      SQLITE_OK) {
    return std::unexpected(db_error(m_db, "preparing a database statement"));
  }
  return Stmt(m_db, stmt);
}

Result<Stmt*> Db::cached(const std::string& sql) {
  auto it = m_cache.find(sql);
  if (it == m_cache.end()) {
    auto s = prepare(sql);
    if (!s) return std::unexpected(s.error());
    it = m_cache.emplace(sql, std::move(*s)).first;
  }
  it->second.reset();
  return &it->second;
}

Result<std::int64_t> Db::query_int(std::string_view sql) {
  auto s = prepare(sql);
  if (!s) return std::unexpected(s.error());
  auto row = s->step();
  if (!row) return std::unexpected(row.error());
  if (!*row) return fail(Errc::database, "query returned no row");
  return s->get_int(0);
}

std::int64_t Db::changes() const {
  return sqlite3_changes64(m_db);
}
std::int64_t Db::last_insert_rowid() const {
  return sqlite3_last_insert_rowid(m_db);
}
std::string Db::last_error() const {
  return sqlite3_errmsg(m_db);
}
int Db::last_error_code() const {
  return sqlite3_extended_errcode(m_db);
}

Result<Transaction> Transaction::begin(Db& db) {
  if (auto r = db.exec("BEGIN IMMEDIATE"); !r) return std::unexpected(r.error());
  return Transaction(&db);
}

Transaction::~Transaction() {
  if (m_db != nullptr) (void)m_db->exec("ROLLBACK");
}

Result<> Transaction::commit() {
  auto r = m_db->exec("COMMIT");
  if (r) m_db = nullptr;
  return r;
}

}  // namespace tokend::store::detail

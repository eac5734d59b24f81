// The implementations of store::Store that the behaviour tests run against
// (TEMPLATE_TEST_CASE over these types). Each owns what its store lives in;
// open() opens it (again: the same file or database, the same key), as the
// store of one user.
#pragma once

#include <memory>

#include "core/clock.hpp"
#include "core/random.hpp"
#include "store/kek.hpp"
#include "store/pg_store.hpp"
#include "store/sqlcipher_store.hpp"
#include "store/store_support.hpp"
#include "support/pg_server.hpp"
#include "support/temp_dir.hpp"

namespace tokend::test {

inline store::Kek random_kek(std::string source = "test KEK") {
  auto material = *random_secret(32);
  std::string id = store::derived_kek_id(material);
  return store::Kek{std::move(material), std::move(id), std::move(source)};
}

class SqlcipherBackend {
 public:
  explicit SqlcipherBackend(const Clock& clock) : m_clock(&clock) {}
  std::unique_ptr<store::Store> open() {
    auto s = store::SqlcipherStore::open(m_dir / "t.db", m_key, *m_clock);
    if (!s) return nullptr;
    return std::make_unique<store::SqlcipherStore>(std::move(*s));
  }

 private:
  const Clock* m_clock;
  TempDir m_dir;
  store::DbKey m_key = random_raw_key();
};

class PgBackend {
 public:
  explicit PgBackend(const Clock& clock) : m_clock(&clock) {}
  std::unique_ptr<store::Store> open() {
    auto db = store::PgDatabase::open(m_db.conninfo(), m_kek, *m_clock);
    if (!db) return nullptr;
    auto s = db->store_for("alice@example.com");
    if (!s) return nullptr;
    return std::make_unique<store::PgStore>(std::move(*s));
  }

 private:
  const Clock* m_clock;
  PgTestDatabase m_db;
  store::Kek m_kek = random_kek();
};

}  // namespace tokend::test

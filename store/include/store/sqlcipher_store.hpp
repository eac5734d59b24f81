// The SQLCipher store: the embedded default behind store::Store.
//
// One SqlcipherStore owns one database connection (WAL, synchronous=FULL).
// Every write runs in a transaction, so a call that returned success survives
// kill -9 and power loss and a call that failed changed nothing.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "store/key.hpp"
#include "store/store.hpp"
#include "store/types.hpp"

namespace tokend::store {

namespace detail {
class Db;
}

class SqlcipherStore final : public Store {
 public:
  // Opens or creates the database at `path`. A wrong key, a file that is not
  // a database, or a damaged one yields one error naming the file and the key
  // source, with the file left untouched. New files are created 0600.
  static Result<SqlcipherStore> open(const std::filesystem::path& path, const DbKey& key,
                                     const Clock& clock);

  SqlcipherStore(SqlcipherStore&&) noexcept;
  SqlcipherStore& operator=(SqlcipherStore&&) noexcept;
  ~SqlcipherStore() override;

  [[nodiscard]] int schema_version() const;
  [[nodiscard]] const std::filesystem::path& path() const { return m_path; }

  Result<> put_profile(const Profile& profile) override;
  Result<Profile> get_profile(std::string_view name) override;
  Result<std::vector<Profile>> list_profiles() override;
  Result<> delete_profile(std::string_view name) override;

  Result<Credential> get_credential(std::string_view name) override;
  Result<std::vector<Credential>> list_credentials() override;

  Result<std::int64_t> store_token_set(
      std::string_view name, const TokenSet& tokens,
      std::optional<std::int64_t> expected_generation = {},
      std::optional<std::int64_t> keep_previous_until_ms = {}) override;
  // One process per database file: every claim is granted (the token
  // service's single flight is the only leadership needed).
  Result<RefreshClaim> claim_refresh(std::string_view name) override;
  void release_refresh(std::string_view /*name*/) override {}
  Result<> mark_refresh_inflight(std::string_view name, std::int64_t at_ms) override;
  Result<> set_state(std::string_view name, CredState state,
                     std::string_view last_error = {}) override;
  Result<> clear_credential(std::string_view name) override;

  void set_audit_retention(const AuditRetention& retention) override { m_retention = retention; }
  Result<> prune_audit() override;
  Result<std::int64_t> append_audit(const AuditEvent& event) override;
  Result<> append_audit_batch(const std::vector<AuditEvent>& events) override;
  Result<std::vector<AuditEvent>> recent_audit(std::size_t limit) override;

  // Test and tooling hook: the connection, for the detail API.
  detail::Db& db_for_tests() { return *m_db; }

 private:
  SqlcipherStore(std::unique_ptr<detail::Db> db, std::filesystem::path path, const Clock& clock);
  friend Result<SqlcipherStore> open_unencrypted_for_tests(const std::filesystem::path&,
                                                           const Clock&);
  Result<> ensure_profile_exists(std::string_view name);
  Result<std::int64_t> insert_audit(const AuditEvent& event);
  Result<> prune_audit_in_transaction();

  std::unique_ptr<detail::Db> m_db;
  std::filesystem::path m_path;
  const Clock* m_clock;
  AuditRetention m_retention;
};

// Opens without a key: a plain SQLite database through the same code. Only
// for the encryption-at-rest control in tests; never used by tokend.
Result<SqlcipherStore> open_unencrypted_for_tests(const std::filesystem::path& path,
                                                  const Clock& clock);

}  // namespace tokend::store

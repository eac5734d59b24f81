// The SQLCipher token store (DESIGN §4).
//
// One Store owns one database connection; it is not thread-safe (the daemon
// uses it from its loop thread). Every write runs in a transaction, so a call
// that returned success survives kill -9 and power loss (WAL,
// synchronous=FULL) and a call that failed changed nothing.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "store/key.hpp"
#include "store/types.hpp"

namespace tokend::store {

namespace detail {
class Db;
}

class Store {
 public:
  // Opens or creates the database at `path`. A wrong key, a file that is not
  // a database, or a damaged one yields one error naming the file and the key
  // source, with the file left untouched. New files are created 0600.
  static Result<Store> open(const std::filesystem::path& path, const DbKey& key,
                            const Clock& clock);

  Store(Store&&) noexcept;
  Store& operator=(Store&&) noexcept;
  ~Store();

  [[nodiscard]] int schema_version() const;
  [[nodiscard]] const std::filesystem::path& path() const { return m_path; }

  // Profiles. put_profile creates or replaces (keeping created_at and the
  // credential); a new profile gets an empty credential row.
  Result<> put_profile(const Profile& profile);
  Result<Profile> get_profile(std::string_view name);
  Result<std::vector<Profile>> list_profiles();
  Result<> delete_profile(std::string_view name);

  // Credentials.
  Result<Credential> get_credential(std::string_view name);
  Result<std::vector<Credential>> list_credentials();

  // Stores a new token set in one transaction: the old refresh token becomes
  // the previous one (kept until keep_previous_until_ms) when the refresh
  // token rotates, generation is bumped, state becomes valid, last_error and
  // the in-flight marker are cleared. With expected_generation set, fails
  // with Errc::conflict if another update came first. Returns the new
  // generation.
  Result<std::int64_t> store_token_set(std::string_view name, const TokenSet& tokens,
                                       std::optional<std::int64_t> expected_generation = {},
                                       std::optional<std::int64_t> keep_previous_until_ms = {});

  // Commits the marker that a refresh is about to be sent.
  Result<> mark_refresh_inflight(std::string_view name, std::int64_t at_ms);
  // Sets state and last error, clearing the in-flight marker.
  Result<> set_state(std::string_view name, CredState state, std::string_view last_error = {});
  // Forgets tokens (logout): state empty, generation bumped.
  Result<> clear_credential(std::string_view name);

  // Audit log, bounded by the retention (default AuditRetention{}): every
  // append prunes the events past it in the same transaction, so the bound
  // holds after each call; prune_audit() applies it on its own (at start, or
  // after the retention changed, since an idle log ages without appends).
  void set_audit_retention(const AuditRetention& retention) { m_retention = retention; }
  Result<> prune_audit();
  Result<std::int64_t> append_audit(const AuditEvent& event);
  // Many events in one transaction (one fsync): for high-rate events such as
  // proxied calls, which are batched by their writer.
  Result<> append_audit_batch(const std::vector<AuditEvent>& events);
  Result<std::vector<AuditEvent>> recent_audit(std::size_t limit);

  // Test and tooling hook: the connection, for the detail API.
  detail::Db& db_for_tests() { return *m_db; }

 private:
  Store(std::unique_ptr<detail::Db> db, std::filesystem::path path, const Clock& clock);
  friend Result<Store> open_unencrypted_for_tests(const std::filesystem::path&, const Clock&);
  Result<> ensure_profile_exists(std::string_view name);
  Result<std::int64_t> insert_audit(const AuditEvent& event);
  Result<> prune_audit_in_transaction();

  std::unique_ptr<detail::Db> m_db;
  std::filesystem::path m_path;
  const Clock* m_clock;
  AuditRetention m_retention;
};

// Opens without a key: a plain SQLite database through the same code. Only
// for the encryption-at-rest control in tests — never used by tokend.
Result<Store> open_unencrypted_for_tests(const std::filesystem::path& path, const Clock& clock);

}  // namespace tokend::store

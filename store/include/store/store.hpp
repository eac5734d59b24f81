// What the token service, the login manager, the proxy and the API need from
// storage: profiles, credentials, the refresh markers and the audit log.
//
// Every write is atomic: a call that returned success is durable (survives
// kill -9 and power loss), and a call that failed changed nothing. Stores
// are not thread-safe; the daemon uses its store from its loop thread.
// SqlcipherStore (store/sqlcipher_store.hpp) is the embedded implementation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "core/error.hpp"
#include "store/types.hpp"

namespace tokend::store {

class Store {
 public:
  virtual ~Store() = default;

  // Profiles. put_profile creates or replaces (keeping created_at and the
  // credential); a new profile gets an empty credential row.
  virtual Result<> put_profile(const Profile& profile) = 0;
  virtual Result<Profile> get_profile(std::string_view name) = 0;
  virtual Result<std::vector<Profile>> list_profiles() = 0;
  virtual Result<> delete_profile(std::string_view name) = 0;

  // Credentials.
  virtual Result<Credential> get_credential(std::string_view name) = 0;
  virtual Result<std::vector<Credential>> list_credentials() = 0;

  // Stores a new token set in one transaction: the old refresh token becomes
  // the previous one (kept until keep_previous_until_ms) when the refresh
  // token rotates, generation is bumped, state becomes valid, last_error and
  // the in-flight marker are cleared. With expected_generation set, fails
  // with Errc::conflict if another update came first. Returns the new
  // generation.
  virtual Result<std::int64_t> store_token_set(
      std::string_view name, const TokenSet& tokens,
      std::optional<std::int64_t> expected_generation = {},
      std::optional<std::int64_t> keep_previous_until_ms = {}) = 0;

  // Refresh leadership among the processes that share this store (server
  // mode's replicas on one PostgreSQL database). At most one process holds
  // the claim of a credential at a time, and a process's claims end with it
  // (kill -9 included). claim_refresh takes the claim when it is free (again
  // when this store holds it already) and then reads the credential, so a
  // refresh always starts from the refresh token as stored, never from a
  // copy another process has rotated since. `ours` false: another process
  // is refreshing; do not send a refresh. release_refresh gives the claim up
  // once the refresh's outcome is committed; it is idempotent. A store used
  // by one process (SQLCipher) grants every claim.
  virtual Result<RefreshClaim> claim_refresh(std::string_view name) = 0;
  virtual void release_refresh(std::string_view name) = 0;

  // Commits the marker that a refresh is about to be sent.
  virtual Result<> mark_refresh_inflight(std::string_view name, std::int64_t at_ms) = 0;
  // Sets state and last error, clearing the in-flight marker.
  virtual Result<> set_state(std::string_view name, CredState state,
                             std::string_view last_error = {}) = 0;
  // Forgets tokens (logout): state empty, generation bumped.
  virtual Result<> clear_credential(std::string_view name) = 0;

  // Audit log, bounded by the retention (default AuditRetention{}): every
  // append prunes the events past it in the same transaction, so the bound
  // holds after each call; prune_audit() applies it on its own (at start, or
  // after the retention changed, since an idle log ages without appends).
  virtual void set_audit_retention(const AuditRetention& retention) = 0;
  virtual Result<> prune_audit() = 0;
  virtual Result<std::int64_t> append_audit(const AuditEvent& event) = 0;
  // Many events in one transaction (one fsync): for high-rate events such as
  // proxied calls, which are batched by their writer.
  virtual Result<> append_audit_batch(const std::vector<AuditEvent>& events) = 0;
  virtual Result<std::vector<AuditEvent>> recent_audit(std::size_t limit) = 0;

 protected:
  Store() = default;
  Store(const Store&) = default;
  Store& operator=(const Store&) = default;
  Store(Store&&) = default;
  Store& operator=(Store&&) = default;
};

}  // namespace tokend::store

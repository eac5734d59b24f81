// The PostgreSQL store, for server mode: many users in one database.
//
// PgDatabase owns the connection, the key-encryption key (store/kek.hpp)
// and the schema (migrated when it opens). store_for(user) hands out a
// PgStore: the store::Store of that one user. Every statement a PgStore runs
// names its user in the key, so nothing it does reads or changes another
// user's rows.
//
// Secrets (access, refresh and previous refresh token, client secret) are
// encrypted per row with AES-256-GCM under a random data key, which is
// wrapped by the KEK; the row keeps the KEK's id. The additional data binds
// each encrypted value to its user, profile and column, so a value copied
// into another row does not decrypt. Values travel as bound parameters only,
// and no plaintext secret ever reaches the server. docs/server-mode.md has
// the schema and the envelope.
//
// Not thread-safe: a PgDatabase and the stores it handed out share one
// connection and are used from one thread. A store keeps the database's
// state alive, so the two may be destroyed in any order.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/secret.hpp"
#include "store/change_feed.hpp"
#include "store/kek.hpp"
#include "store/login_flows.hpp"
#include "store/store.hpp"
#include "store/types.hpp"

namespace tokend::store {

namespace detail {
struct PgShared;
}

class PgStore;

// A user id: 1-256 bytes of UTF-8 without control characters; otherwise
// Errc::invalid_argument saying so (never echoing the id).
Result<> check_user_id(std::string_view user_id);

class PgDatabase {
 public:
  // Connects (a libpq connection string or URI; it may hold a password and
  // never appears in a message), migrates the schema and checks the KEK: a
  // key that is not the one the rows were written with fails here with
  // Errc::wrong_key, naming its source and id, and nothing is changed.
  static Result<PgDatabase> open(const Secret& conninfo, Kek kek, const Clock& clock);

  PgDatabase(PgDatabase&&) noexcept;
  PgDatabase& operator=(PgDatabase&&) noexcept;
  PgDatabase(const PgDatabase&) = delete;
  PgDatabase& operator=(const PgDatabase&) = delete;
  ~PgDatabase();

  // The store of one user: 1-256 bytes of UTF-8 without control characters.
  Result<PgStore> store_for(std::string_view user_id);

  // The users that have at least one profile, sorted (server mode loads
  // them at start so their refreshes run).
  Result<std::vector<std::string>> users();

  // Re-wraps every row's data key (all users) with `new_kek`, in one
  // transaction that also replaces the key check; the encrypted values
  // themselves do not change. Afterwards only `new_kek` opens the database,
  // and this PgDatabase and its stores use it. A key with the current id is
  // refused.
  Result<> rotate_key(Kek new_kek);
  // Switches this PgDatabase and its stores to `kek` once it opens the
  // database's key check (after another process's rotate_key); nothing is
  // made or changed in the database. true: switched; false: `kek` is the
  // key in use. A key that does not open the database: Errc::wrong_key
  // naming its source and id and the ids the database has, and the key in
  // use stays.
  Result<bool> use_key(Kek kek);

  [[nodiscard]] const std::string& key_id() const;
  Result<int> schema_version();

  // NOTIFY on `channel` (an identifier of ours, not user input) with
  // `payload` (at most 7999 bytes, never a secret: every listener and the
  // server's statement log may see it). Sent at once, outside any
  // transaction.
  Result<> notify(const char* channel, std::string_view payload);

  // Server mode's sign-in (OIDC, docs/server-mode.md): state every replica
  // shares. Keys are SHA-256 digests of what the browser holds (the state,
  // the session id), never the values themselves; expired rows are removed
  // as new ones are written.
  struct PendingSignin {
    std::string browser_hash;  // SHA-256 of the sign-in cookie
    std::string nonce;
    std::string return_to;
    std::int64_t expires_at_ms = 0;
  };
  Result<> put_signin(std::string_view state_hash, const PendingSignin& signin);
  // Removes it (one use) and returns it; nullopt when unknown or expired.
  Result<std::optional<PendingSignin>> take_signin(std::string_view state_hash);
  Result<> put_session(std::string_view id_hash, std::string_view user_id,
                       std::int64_t expires_at_ms);
  // The user of a session that has not expired; nullopt otherwise.
  Result<std::optional<std::string>> session_user(std::string_view id_hash);
  Result<> delete_session(std::string_view id_hash);
  // HMAC-SHA256(key-encryption key, label): a key every replica with the
  // same KEK derives alike (it changes when the KEK is rotated).
  [[nodiscard]] Secret derive_key(std::string_view label) const;

 private:
  explicit PgDatabase(std::shared_ptr<detail::PgShared> shared);
  std::shared_ptr<detail::PgShared> m_shared;
};

// A connection of its own that LISTENs on one channel (server mode's
// replicas tell each other what changed). Not thread-safe.
class PgListener final : public ChangeFeed {
 public:
  // Connects and listens; `channel` is an identifier of ours.
  static Result<PgListener> open(const Secret& conninfo, std::string channel);
  PgListener(PgListener&&) noexcept;
  PgListener& operator=(PgListener&&) noexcept;
  PgListener(const PgListener&) = delete;
  PgListener& operator=(const PgListener&) = delete;
  ~PgListener() override;

  [[nodiscard]] int socket() const override;
  Result<std::vector<Notification>> read() override;
  Result<> reconnect() override;

 private:
  struct State;
  explicit PgListener(std::unique_ptr<State> state);
  std::unique_ptr<State> m_state;
};

class PgStore final : public Store, public LoginFlowStore {
 public:
  PgStore(PgStore&&) noexcept;
  PgStore& operator=(PgStore&&) noexcept;
  PgStore(const PgStore&) = delete;
  PgStore& operator=(const PgStore&) = delete;
  ~PgStore() override;

  [[nodiscard]] const std::string& user_id() const { return m_user; }

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
  // A session-level advisory lock per credential, keyed by a 64-bit hash of
  // the user and the profile, held by this store's connection: it ends with
  // the connection (a replica killed with SIGKILL loses it at once).
  Result<RefreshClaim> claim_refresh(std::string_view name) override;
  void release_refresh(std::string_view name) override;
  Result<> mark_refresh_inflight(std::string_view name, std::int64_t at_ms) override;
  Result<> set_state(std::string_view name, CredState state,
                     std::string_view last_error = {}) override;
  Result<> clear_credential(std::string_view name) override;

  void set_audit_retention(const AuditRetention& retention) override { m_retention = retention; }
  Result<> prune_audit() override;
  Result<std::int64_t> append_audit(const AuditEvent& event) override;
  Result<> append_audit_batch(const std::vector<AuditEvent>& events) override;
  Result<std::vector<AuditEvent>> recent_audit(std::size_t limit) override;

  // Login flows across replicas (store/login_flows.hpp): the table
  // login_flows, the verifier sealed like the tokens.
  Result<> put_login_flow(const Secret& state, const PendingLogin& flow) override;
  Result<std::optional<PendingLogin>> take_login_flow(std::optional<std::string_view> profile,
                                                      const Secret* state) override;
  Result<bool> has_login_flow(std::string_view profile, const Secret& state) override;
  Result<> drop_login_flow(std::string_view profile, const Secret& state) override;

 private:
  friend class PgDatabase;
  PgStore(std::shared_ptr<detail::PgShared> shared, std::string user);
  Result<Credential> read_credential_row(std::string_view name, bool for_update);
  Result<std::int64_t> insert_audit_events(const std::vector<const AuditEvent*>& events);
  Result<> prune_audit_in_transaction();

  std::shared_ptr<detail::PgShared> m_shared;
  std::string m_user;
  AuditRetention m_retention;
  // The claims this store holds, with the connection's reset count when
  // each was taken (a reset ended the session, and its locks).
  std::map<std::string, std::uint64_t, std::less<>> m_claims;
};

}  // namespace tokend::store

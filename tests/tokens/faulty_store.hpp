// A store::Store that forwards to a real store and refuses chosen writes,
// for the paths where the store says no (disk full, a locked database).
#pragma once

#include "store/store.hpp"

namespace tokend::test {

class FaultyStore final : public store::Store {
 public:
  explicit FaultyStore(store::Store& real) : m_real(real) {}

  bool fail_set_state = false;
  bool fail_reads = false;
  // Another process (a replica) holds every refresh claim.
  bool claims_held_elsewhere = false;
  int claims = 0;
  int releases = 0;

  Result<> put_profile(const store::Profile& p) override { return m_real.put_profile(p); }
  Result<store::Profile> get_profile(std::string_view n) override { return m_real.get_profile(n); }
  Result<std::vector<store::Profile>> list_profiles() override { return m_real.list_profiles(); }
  Result<> delete_profile(std::string_view n) override { return m_real.delete_profile(n); }
  Result<store::Credential> get_credential(std::string_view n) override {
    if (fail_reads) return refused();
    return m_real.get_credential(n);
  }
  Result<std::vector<store::Credential>> list_credentials() override {
    return m_real.list_credentials();
  }
  Result<std::int64_t> store_token_set(std::string_view n, const store::TokenSet& t,
                                       std::optional<std::int64_t> g,
                                       std::optional<std::int64_t> keep) override {
    return m_real.store_token_set(n, t, g, keep);
  }
  Result<store::RefreshClaim> claim_refresh(std::string_view n) override {
    if (fail_reads) return refused();
    auto claim = m_real.claim_refresh(n);
    if (claim && claims_held_elsewhere) claim->ours = false;
    if (claim && claim->ours) ++claims;
    return claim;
  }
  void release_refresh(std::string_view n) override {
    ++releases;
    m_real.release_refresh(n);
  }
  Result<> mark_refresh_inflight(std::string_view n, std::int64_t at) override {
    return m_real.mark_refresh_inflight(n, at);
  }
  Result<> set_state(std::string_view n, store::CredState s, std::string_view why) override {
    if (fail_set_state) return refused();
    return m_real.set_state(n, s, why);
  }
  Result<> clear_credential(std::string_view n) override { return m_real.clear_credential(n); }
  void set_audit_retention(const store::AuditRetention& r) override {
    m_real.set_audit_retention(r);
  }
  Result<> prune_audit() override { return m_real.prune_audit(); }
  Result<std::int64_t> append_audit(const store::AuditEvent& e) override {
    return m_real.append_audit(e);
  }
  Result<> append_audit_batch(const std::vector<store::AuditEvent>& e) override {
    return m_real.append_audit_batch(e);
  }
  Result<std::vector<store::AuditEvent>> recent_audit(std::size_t limit) override {
    return m_real.recent_audit(limit);
  }

 private:
  static std::unexpected<Error> refused() {
    return std::unexpected(Error{Errc::database, "database is locked (injected by the test)"});
  }
  store::Store& m_real;
};

}  // namespace tokend::test

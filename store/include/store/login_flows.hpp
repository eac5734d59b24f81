// Login flows kept where every replica of a server can find them (server
// mode, docs/server-mode.md "Login flows across replicas").
//
// A pending authorization code flow is started on one replica; the
// provider's redirect (or a pasted one) may reach another. The replica that
// starts a flow keeps what is needed to redeem its code here; the one that
// gets the redirect claims it, once, and redeems the code. The key is the
// SHA-256 of the flow's `state`, computed by the store: the state itself is
// never kept. The PKCE verifier is a secret (sealed like a token).
//
// Scoped like the Store that implements it: one user's flows only. The
// SQLCipher store does not implement it: the single-user daemon's flows
// live in the one process that serves them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.hpp"
#include "core/secret.hpp"

namespace tokend::store {

struct PendingLogin {
  std::string profile;
  Secret code_verifier;  // PKCE; empty when the profile sets pkce: off
  std::string redirect_uri;
  std::string issuer;               // the iss the redirect must carry (RFC 9207); "" when unknown
  bool issuer_required = false;     // the server says it always sends iss
  std::string resource;             // RFC 8707
  std::vector<std::string> scopes;  // asked for
  std::int64_t started_at_ms = 0;
  std::int64_t expires_at_ms = 0;
  std::string replica;       // the replica that started it
  std::int64_t flow_id = 0;  // that replica's id of the flow
};

class LoginFlowStore {
 public:
  virtual ~LoginFlowStore() = default;

  // Keeps the profile's pending flow under the digest of `state`, replacing
  // the profile's previous one (one flow per profile), and deletes expired
  // flows (a bounded batch).
  virtual Result<> put_login_flow(const Secret& state, const PendingLogin& flow) = 0;
  // Claims a flow of this user that has not expired: removes it and returns
  // it, in one statement, so of two claims of one flow exactly one gets it.
  // By the digest of `state`, restricted to `profile` when given; by
  // `profile` alone without a state. nullopt when there is none.
  virtual Result<std::optional<PendingLogin>> take_login_flow(
      std::optional<std::string_view> profile, const Secret* state) = 0;
  // Whether the profile's flow with this state is still kept (not claimed,
  // replaced, or expired).
  virtual Result<bool> has_login_flow(std::string_view profile, const Secret& state) = 0;
  // Removes the profile's flow with this state, if it is still kept.
  virtual Result<> drop_login_flow(std::string_view profile, const Secret& state) = 0;

 protected:
  LoginFlowStore() = default;
  LoginFlowStore(const LoginFlowStore&) = default;
  LoginFlowStore& operator=(const LoginFlowStore&) = default;
  LoginFlowStore(LoginFlowStore&&) = default;
  LoginFlowStore& operator=(LoginFlowStore&&) = default;
};

}  // namespace tokend::store

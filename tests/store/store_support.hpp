#pragma once

#include "core/clock.hpp"
#include "core/random.hpp"
#include "store/store.hpp"

namespace tokend::test {

inline store::DbKey random_raw_key() {
  return store::DbKey{*random_secret(store::k_raw_key_bytes), store::KeyKind::raw, "test key"};
}

inline store::Profile make_profile(std::string name, store::CredentialKind kind = store::CredentialKind::oauth2) {
  store::Profile p;
  p.name = std::move(name);
  p.kind = kind;
  p.provider = kind == store::CredentialKind::oauth2 ? "generic" : "";
  p.config = {{"token_url", "https://auth.example/token"}, {"scopes", {"read", "write"}}};
  return p;
}

inline store::TokenSet make_tokens(std::string access, std::string refresh, std::int64_t expires_at) {
  store::TokenSet t;
  t.access_token = Secret(access);
  t.refresh_token = Secret(refresh);
  t.scope = "read write";
  t.expires_at_ms = expires_at;
  t.obtained_at_ms = expires_at - 3600000;
  return t;
}

}  // namespace tokend::test

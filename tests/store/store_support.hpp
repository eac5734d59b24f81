#pragma once

#include <filesystem>
#include <memory>

#include "core/clock.hpp"
#include "core/random.hpp"
#include "store/sqlcipher_store.hpp"

namespace tokend::test {

// A store behind the store::Store contract, for the behaviour tests: they
// use only the interface, so every implementation can run them.
inline std::unique_ptr<store::Store> open_store(const std::filesystem::path& dir,
                                                const Clock& clock);

inline store::DbKey random_raw_key() {
  return store::DbKey{*random_secret(store::k_raw_key_bytes), store::KeyKind::raw, "test key"};
}

inline std::unique_ptr<store::Store> open_store(const std::filesystem::path& dir,
                                                const Clock& clock) {
  auto s = store::SqlcipherStore::open(dir / "t.db", random_raw_key(), clock);
  if (!s) return nullptr;
  return std::make_unique<store::SqlcipherStore>(std::move(*s));
}

inline store::Profile make_profile(std::string name,
                                   store::CredentialKind kind = store::CredentialKind::oauth2) {
  store::Profile p;
  p.name = std::move(name);
  p.kind = kind;
  p.provider = kind == store::CredentialKind::oauth2 ? "generic" : "";
  p.config.token_url = "https://auth.example/token";
  p.config.scopes = std::vector<std::string>{"read", "write"};
  return p;
}

inline store::TokenSet make_tokens(std::string access, std::string refresh,
                                   std::int64_t expires_at) {
  store::TokenSet t;
  t.access_token = Secret(access);
  t.refresh_token = Secret(refresh);
  t.scope = "read write";
  t.expires_at_ms = expires_at;
  t.obtained_at_ms = expires_at - 3600000;
  return t;
}

}  // namespace tokend::test

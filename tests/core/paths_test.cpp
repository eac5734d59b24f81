#include "core/paths.hpp"

#include <unistd.h>

#include <catch2/catch_test_macros.hpp>
#include <map>

#include "support/env.hpp"

using tokend::test::env_of;

TEST_CASE("XDG defaults", "[core][paths]") {
  const auto p = tokend::resolve_paths(env_of({{"HOME", "/home/u"},
                                               {"XDG_RUNTIME_DIR", "/run/user/1000"},
                                               {"XDG_DATA_HOME", "/d"},
                                               {"XDG_CONFIG_HOME", "/c"}}));
  CHECK(p.socket == "/run/user/1000/tokend/tokend.sock");
  CHECK(p.database == "/d/tokend/tokens.db");
  CHECK(p.key_file == "/c/tokend/db.key");
  CHECK(p.config == "/c/tokend/tokend.conf");
  CHECK_FALSE(p.key_file_explicit);
}

TEST_CASE("Fallbacks without XDG variables; relative XDG values are ignored", "[core][paths]") {
  const auto p = tokend::resolve_paths(env_of({{"HOME", "/home/u"}, {"XDG_DATA_HOME", "rel/dir"}}));
  CHECK(p.socket == "/tmp/tokend-" + std::to_string(::getuid()) + "/tokend.sock");
  CHECK(p.database == "/home/u/.local/share/tokend/tokens.db");
  CHECK(p.key_file == "/home/u/.config/tokend/db.key");
}

TEST_CASE("Environment overrides defaults and flags override environment", "[core][paths]") {
  const auto env = env_of({{"HOME", "/home/u"},
                           {"TOKEND_SOCKET", "/e/s.sock"},
                           {"TOKEND_DB", "/e/t.db"},
                           {"TOKEND_KEY_FILE", "/e/k"},
                           {"TOKEND_CONFIG", "/e/c.conf"}});
  const auto p = tokend::resolve_paths(env);
  CHECK(p.socket == "/e/s.sock");
  CHECK(p.database == "/e/t.db");
  CHECK(p.key_file == "/e/k");
  CHECK(p.key_file_explicit);
  CHECK(p.config == "/e/c.conf");
  tokend::PathOverrides flags;
  flags.socket = "/f/s.sock";
  flags.key_file = "/f/k";
  const auto q = tokend::resolve_paths(env, flags);
  CHECK(q.socket == "/f/s.sock");
  CHECK(q.key_file == "/f/k");
  CHECK(q.database == "/e/t.db");
}

#include "store/kek.hpp"

#include <sys/stat.h>

#include <catch2/catch_test_macros.hpp>
#include <cstdlib>

#include "core/encoding.hpp"
#include "support/env.hpp"
#include "support/temp_dir.hpp"

using namespace tokend;
using namespace tokend::store;
using test::env_of;
using test::TempDir;

namespace {

const std::string k_hex_a(64, 'a');
const std::string k_hex_b(64, 'b');

void no_key_in(const std::string& message) {
  for (const std::string& key : {k_hex_a, k_hex_b, std::string(32, 'F')}) {
    CHECK(message.find(key) == std::string::npos);
  }
}

}  // namespace

TEST_CASE("KEK sources in order: file, systemd credential, TOKEND_KEK", "[store][kek]") {
  TempDir t;
  test::write_file_bytes(t / "kek", std::string(32, 'F'));
  ::mkdir((t / "creds").c_str(), 0700);
  test::write_file_bytes(t / "creds/tokend.kek", k_hex_a + "\n", 0400);
  const auto all = env_of({{"TOKEND_KEK_FILE", (t / "kek").string()},
                           {"CREDENTIALS_DIRECTORY", (t / "creds").string()},
                           {"TOKEND_KEK", k_hex_b}});

  auto k = resolve_kek({}, all);
  REQUIRE(k);
  CHECK(k->source == "KEK file " + (t / "kek").string());
  CHECK(k->material.reveal() == std::string(32, 'F'));

  // The flag wins over the variable.
  test::write_file_bytes(t / "flag.kek", k_hex_b);
  k = resolve_kek({t / "flag.kek", ""}, all);
  REQUIRE(k);
  CHECK(k->source == "KEK file " + (t / "flag.kek").string());
  CHECK(k->material.reveal() == std::string(32, '\xbb'));

  k = resolve_kek(
      {}, env_of({{"CREDENTIALS_DIRECTORY", (t / "creds").string()}, {"TOKEND_KEK", k_hex_b}}));
  REQUIRE(k);
  CHECK(k->source == "systemd credential " + (t / "creds/tokend.kek").string());
  CHECK(k->material.reveal() == std::string(32, '\xaa'));

  k = resolve_kek(
      {}, env_of({{"CREDENTIALS_DIRECTORY", (t / "empty").string()}, {"TOKEND_KEK", k_hex_b}}));
  REQUIRE(k);
  CHECK(k->source == "TOKEND_KEK");
  CHECK(k->material.reveal() == std::string(32, '\xbb'));
}

TEST_CASE("KEK errors name the source and never the key", "[store][kek]") {
  TempDir t;
  auto r = resolve_kek({}, env_of({}));
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::unavailable);
  CHECK(r.error().message.find("TOKEND_KEK_FILE") != std::string::npos);
  CHECK(r.error().message.find("$CREDENTIALS_DIRECTORY/tokend.kek") != std::string::npos);

  r = resolve_kek({t / "missing.kek", ""}, env_of({}));
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find((t / "missing.kek").string()) != std::string::npos);

  // A passphrase is not a key-encryption key.
  test::write_file_bytes(t / "pass.kek", "correct horse battery staple\n");
  r = resolve_kek({t / "pass.kek", ""}, env_of({}));
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::config);
  CHECK(r.error().message.find("must be 32 bytes") != std::string::npos);
  CHECK(r.error().message.find("correct horse") == std::string::npos);

  // A loose file is refused, like the database key.
  test::write_file_bytes(t / "loose.kek", k_hex_a, 0644);
  r = resolve_kek({t / "loose.kek", ""}, env_of({}));
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::permission);
  no_key_in(r.error().message);

  for (const std::string& bad : {k_hex_a.substr(2), k_hex_a.substr(0, 62) + "zz", k_hex_a + "a"}) {
    r = resolve_kek({}, env_of({{"TOKEND_KEK", bad}}));
    REQUIRE_FALSE(r);
    CHECK(r.error().message.find("TOKEND_KEK must be 64 hexadecimal") != std::string::npos);
    CHECK(r.error().message.find(bad) == std::string::npos);
  }
}

TEST_CASE("a KEK's id: derived from the key unless one is given", "[store][kek]") {
  auto a = resolve_kek({}, env_of({{"TOKEND_KEK", k_hex_a}}));
  auto a_again = kek_from_contents(Secret(k_hex_a), "elsewhere");
  auto b = resolve_kek({}, env_of({{"TOKEND_KEK", k_hex_b}}));
  REQUIRE(a);
  REQUIRE(a_again);
  REQUIRE(b);
  CHECK(a->id.starts_with("kek-"));
  CHECK(a->id.size() == 4 + 16);
  CHECK(a->id == a_again->id);
  CHECK(a->id != b->id);
  CHECK(a->id.find(k_hex_a.substr(0, 8)) == std::string::npos);

  auto named = resolve_kek({{}, "2025-q3"}, env_of({{"TOKEND_KEK", k_hex_a}}));
  REQUIRE(named);
  CHECK(named->id == "2025-q3");
  named = resolve_kek({}, env_of({{"TOKEND_KEK", k_hex_a}, {"TOKEND_KEK_ID", "from-env"}}));
  REQUIRE(named);
  CHECK(named->id == "from-env");
  for (const std::string& bad : {std::string(65, 'x'), std::string("a b"), std::string("ü")}) {
    auto r = resolve_kek({{}, bad}, env_of({{"TOKEND_KEK", k_hex_a}}));
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::config);
  }
}

TEST_CASE("TOKEND_KEK read through process_env_without is gone from the environment",
          "[store][kek]") {
  REQUIRE(::setenv(k_kek_env, k_hex_a.c_str(), 1) == 0);
  const char* block = std::getenv(k_kek_env);
  REQUIRE(block != nullptr);
  const EnvLookup env = process_env_without({k_kek_env});
  CHECK(std::getenv(k_kek_env) == nullptr);
  auto k = resolve_kek({}, env);
  REQUIRE(k);
  CHECK(k->source == "TOKEND_KEK");
  CHECK(k->material.reveal() == std::string(32, '\xaa'));
}

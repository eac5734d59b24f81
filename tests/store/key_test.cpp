#include "store/key.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch_test_macros.hpp>
#include <map>

#include "core/encoding.hpp"
#include "support/env.hpp"
#include "support/temp_dir.hpp"

using namespace tokend;
using namespace tokend::store;
using test::env_of;
using test::TempDir;

namespace {

const std::string k_hex(64, 'a');

}  // namespace

TEST_CASE("first start generates a 0600 key file of 32 random bytes in a 0700 dir",
          "[store][key]") {
  TempDir t;
  const auto key_file = t / "config/tokend/db.key";
  auto k = resolve_key({key_file, false, t / "data/tokens.db"}, env_of({}));
  REQUIRE(k);
  CHECK(k->kind == KeyKind::raw);
  CHECK(k->material.size() == 32);
  CHECK(k->source == "generated key file " + key_file.string());
  struct stat st{};
  REQUIRE(::stat(key_file.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);
  CHECK(st.st_size == 32);
  ::stat(key_file.parent_path().c_str(), &st);
  CHECK((st.st_mode & 07777) == 0700);
  CHECK(test::read_file_bytes(key_file) == k->material.reveal());

  // Second start reads the same key back.
  auto again = resolve_key({key_file, false, t / "data/tokens.db"}, env_of({}));
  REQUIRE(again);
  CHECK(again->material == k->material);
  CHECK(again->source == "key file " + key_file.string());

  // Two generated keys differ.
  TempDir u;
  auto other = resolve_key({u / "db.key", false, u / "t.db"}, env_of({}));
  CHECK_FALSE(other->material == k->material);
}

TEST_CASE("key sources in order: explicit file, systemd credential, TOKEND_KEY, default file",
          "[store][key]") {
  TempDir t;
  const auto explicit_file = t / "explicit.key";
  test::write_file_bytes(explicit_file, std::string(32, 'E'));
  ::mkdir((t / "creds").c_str(), 0700);
  test::write_file_bytes(t / "creds/tokend.key", std::string(64, 'c') + "\n", 0400);
  const auto default_file = t / "default.key";
  test::write_file_bytes(default_file, std::string(32, 'D'));
  const auto db = t / "t.db";
  const auto all =
      env_of({{"CREDENTIALS_DIRECTORY", (t / "creds").string()}, {"TOKEND_KEY", k_hex}});

  auto k = resolve_key({explicit_file, true, db}, all);
  REQUIRE(k);
  CHECK(k->material.reveal() == std::string(32, 'E'));
  CHECK(k->source == "key file " + explicit_file.string());

  k = resolve_key({default_file, false, db}, all);
  REQUIRE(k);
  CHECK(k->source == "systemd credential " + (t / "creds/tokend.key").string());
  CHECK(k->material.reveal() == std::string(32, '\xcc'));

  k = resolve_key({default_file, false, db}, env_of({{"TOKEND_KEY", k_hex}}));
  REQUIRE(k);
  CHECK(k->source == "TOKEND_KEY");
  CHECK(k->material.reveal() == std::string(32, '\xaa'));

  k = resolve_key({default_file, false, db}, env_of({}));
  REQUIRE(k);
  CHECK(k->source == "key file " + default_file.string());
}

TEST_CASE("bad key sources are clear errors", "[store][key]") {
  TempDir t;
  const auto db = t / "t.db";
  auto r = resolve_key({t / "missing.key", true, db}, env_of({}));
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("missing.key does not exist") != std::string::npos);

  r = resolve_key({t / "d.key", false, db}, env_of({{"TOKEND_KEY", "xyz"}}));
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("64 hexadecimal") != std::string::npos);
  CHECK(r.error().message.find("xyz") == std::string::npos);  // never echo a key

  test::write_file_bytes(t / "loose.key", std::string(32, 'L'), 0644);
  r = resolve_key({t / "loose.key", true, db}, env_of({}));
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::permission);
  CHECK(r.error().message.find("chmod 600") != std::string::npos);

  test::write_file_bytes(t / "empty.key", "\n");
  r = resolve_key({t / "empty.key", true, db}, env_of({}));
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("empty") != std::string::npos);
}

TEST_CASE("an existing database with no key is not given a new one", "[store][key]") {
  TempDir t;
  test::write_file_bytes(t / "t.db", "existing encrypted bytes");
  auto r = resolve_key({t / "db.key", false, t / "t.db"}, env_of({}));
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("restore the key file") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(t / "db.key"));
}

TEST_CASE("key file contents: raw bytes, hex, passphrase", "[store][key]") {
  auto raw = key_from_contents(Secret(std::string(32, '\n')), "s");
  CHECK(raw->kind == KeyKind::raw);  // exactly 32 bytes are raw, whatever they are
  auto hex = key_from_contents(Secret(std::string(64, 'F') + "\r\n"), "s");
  CHECK(hex->kind == KeyKind::raw);
  CHECK(hex->material.reveal() == std::string(32, '\xff'));
  auto pass = key_from_contents(Secret("my passphrase\n"), "s");
  CHECK(pass->kind == KeyKind::passphrase);
  CHECK(pass->material.reveal() == "my passphrase");
}

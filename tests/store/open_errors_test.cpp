// Wrong key, foreign file, truncated file: one clear error naming the file and
// the key source; the file's bytes unchanged.
#include <sys/stat.h>

#include <catch2/catch_test_macros.hpp>
#include <filesystem>

#include "store/store_support.hpp"
#include "support/temp_dir.hpp"

using namespace tokend;
using namespace tokend::store;
using test::TempDir;

namespace {

// A closed, checkpointed database with a few pages of content.
void make_database(const std::filesystem::path& path, const DbKey& key) {
  FakeClock clock;
  auto s = SqlcipherStore::open(path, key, clock);
  REQUIRE(s);
  for (int i = 0; i < 40; ++i) {
    auto p = test::make_profile("profile-" + std::to_string(i));
    p.config.description = std::string(400, 'p');
    REQUIRE(s->put_profile(p));
  }
}

void expect_refused_unchanged(const std::filesystem::path& path, const DbKey& key, Errc code) {
  FakeClock clock;
  const auto before = test::file_digest(path);
  auto s = SqlcipherStore::open(path, key, clock);
  REQUIRE_FALSE(s);
  INFO(s.error().message);
  CHECK(s.error().code == code);
  CHECK(s.error().message.find(path.string()) != std::string::npos);
  CHECK(s.error().message.find(key.source) != std::string::npos);
  CHECK(s.error().message.find("not changed") != std::string::npos);
  CHECK(test::file_digest(path) == before);
  CHECK_FALSE(std::filesystem::exists(path.string() + "-wal"));
}

}  // namespace

TEST_CASE("wrong key: clear error, file unchanged", "[store][errors]") {
  TempDir t;
  make_database(t / "t.db", test::random_raw_key());
  DbKey wrong = test::random_raw_key();
  wrong.source = "key file /somewhere/db.key";
  expect_refused_unchanged(t / "t.db", wrong, Errc::wrong_key);
}

TEST_CASE("a file that is not a database: clear error, file unchanged", "[store][errors]") {
  TempDir t;
  std::string text;
  for (int i = 0; i < 200; ++i) text += "this is a text file, not a database\n";
  test::write_file_bytes(t / "notes.db", text);
  expect_refused_unchanged(t / "notes.db", test::random_raw_key(), Errc::wrong_key);
}

TEST_CASE("a truncated database: clear error, file unchanged", "[store][errors]") {
  const auto key = test::random_raw_key();
  for (const double fraction : {0.5, 0.25}) {
    for (const int misalign : {0, 100}) {
      TempDir t;
      make_database(t / "t.db", key);
      const auto size = std::filesystem::file_size(t / "t.db");
      REQUIRE(size >= 4 * 4096);
      const auto cut =
          static_cast<std::uintmax_t>(static_cast<double>(size) * fraction) / 4096 * 4096 +
          static_cast<std::uintmax_t>(misalign);
      std::filesystem::resize_file(t / "t.db", cut);
      INFO("truncated to " << cut << " of " << size);
      FakeClock clock;
      const auto before = test::file_digest(t / "t.db");
      auto s = SqlcipherStore::open(t / "t.db", key, clock);
      REQUIRE_FALSE(s);
      INFO(s.error().message);
      CHECK((s.error().code == Errc::corrupt || s.error().code == Errc::wrong_key));
      CHECK(s.error().message.find((t / "t.db").string()) != std::string::npos);
      CHECK(s.error().message.find("not changed") != std::string::npos);
      CHECK(test::file_digest(t / "t.db") == before);
    }
  }
}

TEST_CASE("the database file is created 0600 and a loose one is refused", "[store][errors]") {
  TempDir t;
  FakeClock clock;
  ::umask(022);
  const auto key = test::random_raw_key();
  REQUIRE(SqlcipherStore::open(t / "t.db", key, clock));
  CHECK((std::filesystem::status(t / "t.db").permissions() & std::filesystem::perms::mask) ==
        (std::filesystem::perms::owner_read | std::filesystem::perms::owner_write));
  std::filesystem::permissions(t / "t.db", std::filesystem::perms::group_read,
                               std::filesystem::perm_options::add);
  auto s = SqlcipherStore::open(t / "t.db", key, clock);
  REQUIRE_FALSE(s);
  CHECK(s.error().message.find("chmod 600") != std::string::npos);
}

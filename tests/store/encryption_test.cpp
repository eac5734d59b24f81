// Encryption at rest: markers written through the store never appear in the
// database, its WAL or its shared-memory file, while the same writes to a
// plain (unkeyed) database do — which proves the search would find them.
#include <catch2/catch_test_macros.hpp>

#include "store/store_support.hpp"
#include "support/temp_dir.hpp"

using namespace tokend;
using namespace tokend::store;
using test::TempDir;

namespace {

const std::vector<std::string> k_markers = {"ACCESS-MARKER-7f3a9c", "REFRESH-MARKER-b81e22",
                                            "CLIENTSECRET-MARKER-44d0", "PROFILECFG-MARKER-e1"};

void write_markers(Store& s) {
  auto p = test::make_profile("marked");
  p.client_secret = Secret(k_markers[2]);
  p.config.description = k_markers[3];
  REQUIRE(s.put_profile(p));
  for (int i = 0; i < 3; ++i) {
    REQUIRE(s.store_token_set("marked", test::make_tokens(k_markers[0] + std::to_string(i),
                                                          k_markers[1] + std::to_string(i), 1)));
  }
}

std::size_t markers_in(const std::filesystem::path& dir) {
  std::size_t hits = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string bytes = test::read_file_bytes(entry.path());
    for (const auto& m : k_markers) {
      if (bytes.find(m) != std::string::npos) {
        UNSCOPED_INFO(entry.path().filename().string() << " contains " << m);
        ++hits;
      }
    }
  }
  return hits;
}

}  // namespace

TEST_CASE("no marker appears in the encrypted database, -wal or -shm; a plain control has them",
          "[store][encryption]") {
  FakeClock clock;
  TempDir enc;
  TempDir plain;
  auto s = SqlcipherStore::open(enc / "t.db", test::random_raw_key(), clock);
  REQUIRE(s);
  auto control = open_unencrypted_for_tests(plain / "t.db", clock);
  REQUIRE(control);
  write_markers(*s);
  write_markers(*control);

  // While open: the data sits in the WAL.
  CHECK(std::filesystem::exists(enc / "t.db-wal"));
  CHECK(markers_in(enc.path()) == 0);
  CHECK(markers_in(plain.path()) >= k_markers.size());

  // After close (checkpointed into the main file) as well.
  *s = SqlcipherStore::open(enc / "other.db", test::random_raw_key(), clock).value();
  CHECK(markers_in(enc.path()) == 0);
}

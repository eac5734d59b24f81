// Large bodies in an unlinked temporary file.
#include "net/spool.hpp"

#include <catch2/catch_test_macros.hpp>
#include <filesystem>
#include <string>

#include "support/temp_dir.hpp"

using namespace tokend;

namespace {

// Restores the process-wide spool directory after a test.
struct SpoolDirectory {
  explicit SpoolDirectory(const std::filesystem::path& dir) { net::Spool::set_directory(dir); }
  ~SpoolDirectory() { net::Spool::set_directory({}); }
  SpoolDirectory(const SpoolDirectory&) = delete;
  SpoolDirectory& operator=(const SpoolDirectory&) = delete;
};

std::string read_all(const net::Spool& spool, std::size_t chunk) {
  std::string out;
  std::string buf(chunk, '\0');
  for (;;) {
    auto got = spool.read_at(out.size(), buf.data(), buf.size());
    REQUIRE(got);
    if (*got == 0) return out;
    out.append(buf.data(), *got);
  }
}

}  // namespace

TEST_CASE("spool: what is appended reads back from any offset, and the file has no name",
          "[net][spool]") {
  test::TempDir dir;
  SpoolDirectory in(dir.path());
  auto spool = net::Spool::create();
  REQUIRE(spool);
  auto& s = **spool;
  CHECK(s.size() == 0);
  std::string expected;
  for (int i = 0; i < 300; ++i) {
    const std::string part =
        std::to_string(i) +
        std::string(static_cast<std::size_t>(i * 37 % 4096), static_cast<char>('a' + i % 26));
    REQUIRE(s.append(part));
    expected += part;
  }
  REQUIRE(s.append(""));
  CHECK(s.size() == expected.size());
  CHECK(read_all(s, 1000) == expected);
  CHECK(read_all(s, 1 << 20) == expected);

  char buf[16];
  auto got = s.read_at(10, buf, sizeof buf);
  REQUIRE(got);
  CHECK(std::string(buf, *got) == expected.substr(10, sizeof buf));
  got = s.read_at(expected.size(), buf, sizeof buf);
  REQUIRE(got);
  CHECK(*got == 0);
  got = s.read_at(expected.size() - 3, buf, sizeof buf);
  REQUIRE(got);
  CHECK(std::string(buf, *got) == expected.substr(expected.size() - 3));

  // Unlinked from the start: nothing in the directory names it.
  CHECK(std::filesystem::is_empty(dir.path()));
}

TEST_CASE("spool: two spools do not share bytes", "[net][spool]") {
  test::TempDir dir;
  SpoolDirectory in(dir.path());
  auto a = net::Spool::create();
  auto b = net::Spool::create();
  REQUIRE(a);
  REQUIRE(b);
  REQUIRE((*a)->append("first"));
  REQUIRE((*b)->append("second"));
  CHECK(read_all(**a, 64) == "first");
  CHECK(read_all(**b, 64) == "second");
}

TEST_CASE("spool: a directory that does not exist is an I/O error naming it", "[net][spool]") {
  test::TempDir dir;
  SpoolDirectory in(dir / "missing");
  auto spool = net::Spool::create();
  REQUIRE_FALSE(spool);
  CHECK(spool.error().code == Errc::io);
  CHECK(spool.error().message.find("missing") != std::string::npos);
}

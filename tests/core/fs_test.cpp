#include "core/fs.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch_test_macros.hpp>

#include "support/temp_dir.hpp"

namespace fs = tokend::fs;
using tokend::Errc;
using tokend::test::TempDir;

namespace {
unsigned mode_of(const std::filesystem::path& p) {
  struct stat st{};
  ::lstat(p.c_str(), &st);
  return st.st_mode & 07777;
}
}  // namespace

TEST_CASE("ensure_private_dir creates missing components 0700", "[core][fs]") {
  TempDir t;
  const auto dir = t / "a/b/c";
  ::umask(022);
  REQUIRE(fs::ensure_private_dir(dir));
  CHECK(mode_of(t / "a") == 0700);
  CHECK(mode_of(dir) == 0700);
  CHECK(fs::ensure_private_dir(dir));  // idempotent
}

TEST_CASE("check_private_dir refuses loose, symlinked and foreign directories", "[core][fs]") {
  TempDir t;
  const auto loose = t / "loose";
  ::mkdir(loose.c_str(), 0755);
  ::chmod(loose.c_str(), 0755);
  auto r = fs::check_private_dir(loose);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::permission);
  CHECK(r.error().message.find(loose.string()) != std::string::npos);
  CHECK(r.error().message.find("chmod 700") != std::string::npos);

  const auto real = t / "real";
  ::mkdir(real.c_str(), 0700);
  const auto link = t / "link";
  REQUIRE(::symlink(real.c_str(), link.c_str()) == 0);
  r = fs::check_private_dir(link);
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("symbolic link") != std::string::npos);

  if (::geteuid() == 0) {
    const auto foreign = t / "foreign";
    ::mkdir(foreign.c_str(), 0700);
    REQUIRE(::chown(foreign.c_str(), 65534, 65534) == 0);
    r = fs::check_private_dir(foreign);
    REQUIRE_FALSE(r);
    CHECK(r.error().message.find("owned by uid 65534") != std::string::npos);
    CHECK(r.error().message.find("chown") != std::string::npos);
  } else {
    WARN("not root: the foreign-owner case needs chown and is skipped");
  }
}

TEST_CASE("check_private_file refuses group/other bits, symlinks and foreign owners",
          "[core][fs]") {
  TempDir t;
  const auto f = t / "key";
  tokend::test::write_file_bytes(f, "k", 0640);
  auto r = fs::check_private_file(f);
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("mode 0640") != std::string::npos);
  CHECK(r.error().message.find("chmod 600 " + f.string()) != std::string::npos);
  ::chmod(f.c_str(), 0600);
  CHECK(fs::check_private_file(f));
  ::chmod(f.c_str(), 0604);
  CHECK_FALSE(fs::check_private_file(f));
  ::chmod(f.c_str(), 0600);

  const auto link = t / "keylink";
  REQUIRE(::symlink(f.c_str(), link.c_str()) == 0);
  r = fs::check_private_file(link);
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("symbolic link") != std::string::npos);
  CHECK_FALSE(fs::read_private_file(link, 100));

  if (::geteuid() == 0) {
    REQUIRE(::chown(f.c_str(), 65534, 65534) == 0);
    CHECK_FALSE(fs::check_private_file(f));
  }
}

TEST_CASE("read_private_file enforces a size cap", "[core][fs]") {
  TempDir t;
  const auto f = t / "big";
  tokend::test::write_file_bytes(f, std::string(5000, 'x'));
  auto r = fs::read_private_file(f, 4096);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::corrupt);
  auto ok = fs::read_private_file(f, 5000);
  REQUIRE(ok);
  CHECK(ok->size() == 5000);
}

TEST_CASE("write_file_atomic replaces content with the exact mode, exclusive refuses overwrite",
          "[core][fs]") {
  TempDir t;
  const auto f = t / "out";
  ::umask(077);
  REQUIRE(fs::write_file_atomic(f, "one", 0644));
  CHECK(mode_of(f) == 0644);
  REQUIRE(fs::write_file_atomic(f, "two", 0600));
  CHECK(tokend::test::read_file_bytes(f) == "two");
  CHECK(mode_of(f) == 0600);
  auto r = fs::write_file_atomic(f, "three", 0600, /*exclusive=*/true);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::already_exists);
  CHECK(tokend::test::read_file_bytes(f) == "two");
  // No temp files left behind.
  int entries = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(t.path())) ++entries;
  CHECK(entries == 1);
}

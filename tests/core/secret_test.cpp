#include "core/secret.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <catch2/catch_test_macros.hpp>
#include <sstream>

using tokend::Secret;

TEST_CASE("Secret formats as a redaction marker through fmt and streams", "[core][secret]") {
  const Secret s("hunter2-marker");
  CHECK(fmt::format("{}", s) == Secret::k_redacted);
  CHECK(fmt::format("token={:>20}", s).find("hunter2") == std::string::npos);
  std::ostringstream os;
  os << s;
  CHECK(os.str() == Secret::k_redacted);
  CHECK(s.reveal() == "hunter2-marker");
}

TEST_CASE("Secret move leaves the source empty and copy is independent", "[core][secret]") {
  Secret a("abc");
  Secret b = a;
  CHECK(b.reveal() == "abc");
  Secret c = std::move(a);
  CHECK(c.reveal() == "abc");
  CHECK(a.empty());  // NOLINT(bugprone-use-after-move): asserting the moved-from state
  b = Secret("a-much-longer-secret-value-that-is-not-in-sso-buffers");
  CHECK(b.size() == 53);
  b.clear();
  CHECK(b.empty());
}

TEST_CASE("moving a Secret hands its buffer over and leaves no short copy behind",
          "[core][secret]") {
  Secret small("abcdefgh");
  const char* sso = small.reveal().data();  // the short-string buffer inside `small`
  Secret moved = std::move(small);
  CHECK(moved.reveal() == "abcdefgh");
  CHECK(std::all_of(sso, sso + 8, [](char c) { return c == 0; }));

  Secret large(std::string(40, 'x'));
  const char* heap = large.reveal().data();
  Secret taken = std::move(large);
  CHECK(taken.reveal().data() == heap);  // no copy of the bytes was made
  Secret assigned("old");
  assigned = std::move(taken);
  CHECK(assigned.reveal() == std::string(40, 'x'));
  CHECK(Secret::concat({"Bearer", " ", "tok"}).reveal() == "Bearer tok");
}

TEST_CASE("Secret::adopt wipes the source string", "[core][secret]") {
  std::string src = "short";
  Secret s = Secret::adopt(std::move(src));
  CHECK(s.reveal() == "short");
  CHECK(src.empty());  // NOLINT(bugprone-use-after-move)
}

TEST_CASE("secure_wipe zeroes the whole buffer", "[core][secret]") {
  std::string s(100, 'x');
  char* data = s.data();
  const std::size_t cap = s.capacity();
  tokend::secure_wipe(s);
  CHECK(s.empty());
  for (std::size_t i = 0; i < cap; ++i) REQUIRE(data[i] == '\0');
}

TEST_CASE("constant_time_equal compares content and length", "[core][secret]") {
  CHECK(tokend::constant_time_equal("abc", "abc"));
  CHECK_FALSE(tokend::constant_time_equal("abc", "abd"));
  CHECK_FALSE(tokend::constant_time_equal("abc", "abcd"));
  CHECK(tokend::constant_time_equal("", ""));
  CHECK(Secret("x") == Secret("x"));
  CHECK_FALSE(Secret("x") == Secret("y"));
}

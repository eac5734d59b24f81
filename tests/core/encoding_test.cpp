#include "core/encoding.hpp"

#include <catch2/catch_test_macros.hpp>

TEST_CASE("hex round trip and rejection of bad input", "[core][encoding]") {
  CHECK(tokend::hex_encode(std::string("\x00\xff\x10", 3)) == "00ff10");
  CHECK(*tokend::hex_decode("00FF10") == std::string("\x00\xff\x10", 3));
  CHECK_FALSE(tokend::hex_decode("abc"));
  CHECK_FALSE(tokend::hex_decode("zz"));
}

TEST_CASE("base64 known answers (RFC 4648 §10)", "[core][encoding]") {
  const std::pair<const char*, const char*> vectors[] = {{"", ""},
                                                         {"f", "Zg=="},
                                                         {"fo", "Zm8="},
                                                         {"foo", "Zm9v"},
                                                         {"foob", "Zm9vYg=="},
                                                         {"fooba", "Zm9vYmE="},
                                                         {"foobar", "Zm9vYmFy"}};
  for (const auto& [in, out] : vectors) {
    CHECK(tokend::base64_encode(in) == out);
    CHECK(tokend::base64_decode(out) == std::optional<std::string>(in));
  }
  for (const char* bad : {"Zg=", "Zg=a", "Z===", "Zm9v!A==", "=Zm9"})
    CHECK_FALSE(tokend::base64_decode(bad));
  CHECK(tokend::base64url_encode("\xfb\xff") == "-_8");
}

TEST_CASE("percent_encode keeps only unreserved characters; form_encode writes space as '+'") {
  CHECK(tokend::percent_encode("a-b.c_d~E9") == "a-b.c_d~E9");
  CHECK(tokend::percent_encode("a b/c?d#%\n\xff") == "a%20b%2Fc%3Fd%23%25%0A%FF");
  CHECK(tokend::form_encode("a b+c") == "a+b%2Bc");
  std::string out = "x";
  tokend::append_percent_escape(out, 0x0a);
  CHECK(out == "x%0A");
}

TEST_CASE("ASCII case folding leaves other bytes and the length alone") {
  CHECK(tokend::ascii_lower("Content-Type: ÄB") == "content-type: Äb");
  CHECK(tokend::ascii_lower("\xc3\x84") == "\xc3\x84");
  CHECK(tokend::ascii_iequals("Retry-After", "retry-after"));
  CHECK_FALSE(tokend::ascii_iequals("Retry-After", "retry-afte"));
  CHECK_FALSE(tokend::ascii_iequals("a", "\xc3"));
}

TEST_CASE("percent_decode: runs copied whole, escapes and '+' decoded, bad escapes refused",
          "[core][encoding]") {
  CHECK(tokend::percent_decode("", false) == "");
  CHECK(tokend::percent_decode("/v1/profiles/bench/token", false) == "/v1/profiles/bench/token");
  CHECK(tokend::percent_decode("a%20b%2Fc%41", false) == "a b/cA");
  CHECK(tokend::percent_decode("%41%42", false) == "AB");
  CHECK(tokend::percent_decode("a+b", false) == "a+b");
  CHECK(tokend::percent_decode("a+b%2B+", true) == "a b+ ");
  CHECK(tokend::percent_decode("++", true) == "  ");
  CHECK_FALSE(tokend::percent_decode("%", false));
  CHECK_FALSE(tokend::percent_decode("ab%4", false));
  CHECK_FALSE(tokend::percent_decode("%g1", true));
  CHECK_FALSE(tokend::percent_decode("x+%zz", true));
}

#include "core/json.hpp"

#include <catch2/catch_test_macros.hpp>

namespace json = tokend::json;

TEST_CASE("json::parse returns errors instead of throwing", "[core][json]") {
  CHECK(json::parse(R"({"a":1})", "body"));
  auto bad = json::parse(R"({"a":)", "request body");
  REQUIRE_FALSE(bad);
  CHECK(bad.error().message == "request body is not valid JSON");
  CHECK_FALSE(json::parse(R"({"a":1} trailing)", "body"));
  CHECK_FALSE(json::parse("", "body"));
}

TEST_CASE("json::parse refuses deep nesting before recursing", "[core][json]") {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  auto r = json::parse(deep, "body");
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("nests deeper") != std::string::npos);
  CHECK(json::parse(std::string(10, '[') + std::string(10, ']'), "body"));
}

TEST_CASE("typed field access names the field", "[core][json]") {
  const auto j = *json::parse(R"({"s":"x","i":5,"b":true,"n":null,"wrong":3})", "body");
  CHECK(*json::required_string(j, "s") == "x");
  CHECK(json::optional_int(j, "i")->value() == 5);
  CHECK(json::optional_bool(j, "b")->value());
  CHECK_FALSE(json::optional_string(j, "n")->has_value());
  auto r = json::required_string(j, "missing");
  REQUIRE_FALSE(r);
  CHECK(r.error().message == "field \"missing\" is required");
  auto w = json::optional_string(j, "wrong");
  REQUIRE_FALSE(w);
  CHECK(w.error().message == "field \"wrong\" must be a string");
}

TEST_CASE("append_quoted gives Json's own string literal", "[core][json]") {
  for (const std::string s : {"", "plain", "a\"b", "a\\b", "\x7f", "\n\r\t\b\f", "\x01",
                              "caf\xc3\xa9", "bad\xc3", "\xff\xfe"}) {
    std::string out = "x";
    json::append_quoted(out, s);
    CHECK(out == "x" + json::Json(s).dump(-1, ' ', false, json::Json::error_handler_t::replace));
  }
}

// Plain text is recognised eight bytes at a time: every byte value, at every
// place of a word and of the tail after it, must still be seen.
TEST_CASE("append_quoted sees every byte that needs escaping, wherever it is", "[core][json]") {
  const auto literal = [](const std::string& s) {
    return json::Json(s).dump(-1, ' ', false, json::Json::error_handler_t::replace);
  };
  for (int b = 0; b < 256; ++b) {
    for (std::size_t at = 0; at < 19; ++at) {
      std::string s(19, 'a');
      s[at] = static_cast<char>(b);
      std::string out;
      json::append_quoted(out, s);
      INFO("byte " << b << " at " << at);
      REQUIRE(out == literal(s));
    }
  }
}

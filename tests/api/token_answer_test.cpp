// The token answer is written without a Json tree (the socket API's hot
// path); it must say exactly what the Json tree said, and be marked for wiping.
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include "api/api.hpp"
#include "core/json.hpp"

using namespace tokend;

namespace {

// What the answer was before: a Json object (sorted keys), dumped.
std::string reference(const tokens::TokenGrant& g, std::int64_t now_ms) {
  json::Json j = {
      {"token", g.token()},
      {"token_type", g.token_type()},
      {"authorization", g.authorization()},
      {"expires_at",
       g.expires_at_ms() ? json::Json(*g.expires_at_ms() / 1000) : json::Json(nullptr)},
      {"expires_in",
       g.expires_at_ms() ? json::Json((*g.expires_at_ms() - now_ms) / 1000) : json::Json(nullptr)}};
  return j.dump(-1, ' ', false, json::Json::error_handler_t::replace) + "\n";
}

}  // namespace

TEST_CASE("the token answer says what a Json tree would, and is wiped once written",
          "[api][token]") {
  const std::string token =
      GENERATE(std::string("eyJhbGciOi.JIUzI1NiJ9-_~+/="), std::string("pat \"quoted\" \\ back"),
               std::string("ctl\x01\x1f tab\t"), std::string("caf\xc3\xa9"),
               std::string("bad\xff utf8"), std::string());
  const std::int64_t now = 1'700'000'000'000;
  for (const auto expires :
       {std::optional<std::int64_t>{}, std::optional<std::int64_t>{now + 3'599'500},
        std::optional<std::int64_t>{now - 1'500}}) {
    const tokens::TokenGrant g("Bearer", token, expires);
    CHECK(g.token() == token);
    CHECK(g.authorization() == "Bearer " + token);
    CHECK(g.token_type() == "Bearer");
    const auto r = api::Api::token_answer(g, now);
    CHECK(r.status == 200);
    CHECK(r.sensitive);
    CHECK(r.body == reference(g, now));
    CHECK(r.content_type == "application/json");
    CHECK(r.headers.empty());
  }
}

TEST_CASE("a grant whose header value does not end in the token keeps both", "[api][token]") {
  const auto g =
      tokens::TokenGrant::with_authorization("Basic ZUBleGFtcGxlLmNvbTp0b2s=", "tok", std::nullopt);
  CHECK(g.token() == "tok");
  CHECK(g.authorization() == "Basic ZUBleGFtcGxlLmNvbTp0b2s=");
  CHECK(g.token_type() == "Basic");
  CHECK_FALSE(g.expires_at_ms());
}

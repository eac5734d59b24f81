// Server mode's OIDC sign-in, the pure parts (daemon/oidc.hpp): the ID
// token's claims rule by rule, return_to, cookies, origins, public-url; and
// identify()'s session-cookie rules.
#include "daemon/oidc.hpp"

#include <catch2/catch_test_macros.hpp>

#include "core/encoding.hpp"
#include "core/json.hpp"
#include "daemon/connect.hpp"
#include "daemon/identity.hpp"

using namespace tokend;
using namespace tokend::daemon;

namespace {

constexpr std::int64_t k_now = 1'800'000'000;
const std::string k_issuer = "https://idp.example.com";

std::string jwt(const json::Json& claims) {
  return base64url_encode(R"({"alg":"RS256","kid":"k1"})") + "." + base64url_encode(claims.dump()) +
         ".c2lnbmF0dXJl";
}

json::Json good_claims() {
  return {{"iss", k_issuer},         {"sub", "248289761001"}, {"aud", "tokend"},
          {"exp", k_now + 300},      {"iat", k_now - 10},     {"nonce", "n-0S6_WzA2Mj"},
          {"email", "a@example.com"}};
}

IdTokenExpectations expect(std::string claim = "sub") {
  IdTokenExpectations e;
  e.issuer = k_issuer;
  e.client_id = "tokend";
  e.nonce = "n-0S6_WzA2Mj";
  e.user_claim = std::move(claim);
  e.now = WallTime(std::chrono::seconds(k_now));
  return e;
}

}  // namespace

TEST_CASE("oidc: the ID token's claims, rule by rule", "[daemon][oidc]") {
  REQUIRE(check_id_token(jwt(good_claims()), expect()) == "248289761001");
  REQUIRE(check_id_token(jwt(good_claims()), expect("email")) == "a@example.com");
  struct Case {
    const char* what;
    std::function<void(json::Json&)> change;
    const char* in_message;  // empty: accepted
  };
  const Case cases[] = {
      {"another issuer", [](json::Json& c) { c["iss"] = "https://evil.example"; }, "iss is"},
      {"no issuer", [](json::Json& c) { c.erase("iss"); }, "iss is"},
      {"another audience", [](json::Json& c) { c["aud"] = "other"; }, "aud does not hold"},
      {"the client among audiences, azp the client",
       [](json::Json& c) {
         c["aud"] = {"other", "tokend"};
         c["azp"] = "tokend";
       },
       ""},
      {"several audiences without azp", [](json::Json& c) { c["aud"] = {"other", "tokend"}; },
       "azp is not"},
      {"azp another client", [](json::Json& c) { c["azp"] = "other"; }, "azp is not"},
      {"expired beyond the skew", [](json::Json& c) { c["exp"] = k_now - 121; }, "expired"},
      {"expired within the skew", [](json::Json& c) { c["exp"] = k_now - 60; }, ""},
      {"no exp", [](json::Json& c) { c.erase("exp"); }, "exp is missing"},
      {"issued in the future", [](json::Json& c) { c["iat"] = k_now + 600; }, "future"},
      {"no iat", [](json::Json& c) { c.erase("iat"); }, "iat is missing"},
      {"another nonce", [](json::Json& c) { c["nonce"] = "n-other"; }, "nonce"},
      {"no nonce", [](json::Json& c) { c.erase("nonce"); }, "nonce"},
      {"no sub", [](json::Json& c) { c.erase("sub"); }, "no 'sub' claim"},
      {"a sub with a control character", [](json::Json& c) { c["sub"] = "a\nb"; },
       "not a valid user id"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    auto claims = good_claims();
    c.change(claims);
    auto got = check_id_token(jwt(claims), expect());
    if (std::string_view(c.in_message).empty()) {
      CHECK(got);
    } else {
      REQUIRE_FALSE(got);
      CHECK(got.error().code == Errc::login_failed);
      CHECK(got.error().message.find(c.in_message) != std::string::npos);
    }
  }
  auto unverified = good_claims();
  unverified["email_verified"] = false;
  CHECK_FALSE(check_id_token(jwt(unverified), expect("email")));
  CHECK(check_id_token(jwt(unverified), expect("sub")));
  for (const char* bad : {"", "a.b", "a.b.c.d", "x.!!!.y", "x.bm90IGpzb24.y"}) {
    CAPTURE(bad);
    CHECK_FALSE(check_id_token(bad, expect()));
  }
}

TEST_CASE("oidc: a user claim the ID token lacks comes from userinfo", "[daemon][oidc]") {
  auto no_email = good_claims();
  no_email.erase("email");
  auto e = expect("email");
  REQUIRE_FALSE(check_id_token(jwt(no_email), e));
  e.user_claim_elsewhere = true;
  REQUIRE(check_id_token(jwt(no_email), e) == "");
  REQUIRE(check_id_token(jwt(good_claims()), e) == "a@example.com");

  const std::string sub = "248289761001";
  CHECK(user_from_userinfo(R"({"sub":"248289761001","email":"a@example.com"})", sub, "email") ==
        "a@example.com");
  CHECK(
      user_from_userinfo(R"({"sub":"248289761001","email":"a@example.com","email_verified":true})",
                         sub, "email") == "a@example.com");
  const auto refused = [&sub](std::string_view body) {
    auto r = user_from_userinfo(body, sub, "email");
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::login_failed);
    return r.error().message;
  };
  CHECK(refused(R"({"sub":"someone-else","email":"a@example.com"})") ==
        "the userinfo answer: its sub is not the ID token's (OpenID Connect Core 5.3.4)");
  CHECK(refused(R"({"email":"a@example.com"})") ==
        "the userinfo answer: its sub is not the ID token's (OpenID Connect Core 5.3.4)");
  CHECK(refused(R"({"sub":"248289761001"})") ==
        "the userinfo answer: it has no 'email' claim either (oidc-user-claim)");
  CHECK(refused(R"({"sub":"248289761001","email":"a@example.com","email_verified":false})") ==
        "the userinfo answer: email_verified is false");
  CHECK(refused("eyJhbGciOiJSUzI1NiJ9.e30.c2ln") == "the userinfo answer: it is not a JSON object");
  CHECK(refused("[]") == "the userinfo answer: it is not a JSON object");
  auto empty_sub = user_from_userinfo(R"({"sub":"","email":"a@example.com"})", "", "email");
  CHECK_FALSE(empty_sub);
}

TEST_CASE("oidc: return_to stays on tokend", "[daemon][oidc]") {
  CHECK(checked_return_to("") == "/");
  CHECK(checked_return_to("/connect?x=1") == "/connect?x=1");
  for (const char* bad : {"//evil.example", "/\\evil.example", "https://evil.example", "evil",
                          "/a\\b", "/a\r\nSet-Cookie: x=y"}) {
    CAPTURE(bad);
    CHECK_FALSE(checked_return_to(bad));
  }
}

TEST_CASE("oidc: cookies, origins, public-url", "[daemon][oidc]") {
  ipc::Request r;
  r.headers = {{"Cookie", "a=1; __Host-tokend-session=abc; b=2"}};
  CHECK(cookie_value(r, "__Host-tokend-session") == "abc");
  CHECK_FALSE(cookie_value(r, "tokend-session"));
  r.headers.emplace_back("cookie", "__Host-tokend-session=def");
  CHECK_FALSE(cookie_value(r, "__Host-tokend-session"));  // twice: ambiguous

  CHECK(same_origin("https://tokend.example.org", "https://tokend.example.org"));
  CHECK(same_origin("HTTPS://Tokend.Example.org", "https://tokend.example.org"));
  CHECK_FALSE(same_origin("https://tokend.example.org.evil", "https://tokend.example.org"));
  CHECK_FALSE(same_origin("null", "https://tokend.example.org"));
  CHECK_FALSE(same_origin("", "https://tokend.example.org"));
  // Behind a reverse proxy's path prefix, the origin is what precedes it.
  CHECK(same_origin("https://tokend.example.org", "https://tokend.example.org/tokend"));
  CHECK_FALSE(
      same_origin("https://tokend.example.org/tokend", "https://tokend.example.org/tokend"));

  CHECK(parse_public_url("https://tokend.example.org/") == "https://tokend.example.org");
  CHECK(parse_public_url("https://localhost:8443") == "https://localhost:8443");
  CHECK(parse_public_url("https://h.example/tokend/") == "https://h.example/tokend");
  for (const char* bad : {"http://tokend.example.org", "https://", "https://h?x", "https://h#x",
                          "https://u@h", "tokend.example.org"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_public_url(bad));
  }
  CHECK(state_changing("POST"));
  CHECK(state_changing("DELETE"));
  CHECK_FALSE(state_changing("GET"));
  CHECK_FALSE(state_changing("HEAD"));
}

TEST_CASE("identity: the session cookie, over TLS only, with an Origin check", "[daemon][oidc]") {
  IdentityConfig cfg;
  cfg.trusted_proxy_uids = {33};
  const std::string url = "https://tokend.example.org";
  ipc::Peer tls;
  tls.tls = true;
  auto req = [](std::string method, ipc::Headers h) {
    ipc::Request r;
    r.method = std::move(method);
    r.path = "/v1/profiles";
    r.headers = std::move(h);
    return r;
  };
  const SessionCookie alice{true, "alice", url};
  auto ok = identify(cfg, req("GET", {}), tls, alice);
  REQUIRE(ok);
  CHECK(ok->user == "alice");
  CHECK(ok->service.empty());
  CHECK(identify(cfg, req("PUT", {{"Origin", url}}), tls, alice));
  struct Case {
    const char* what;
    ipc::Request request;
    SessionCookie session;
    int status;
    const char* code;
  };
  const Case cases[] = {
      {"a state change without Origin", req("PUT", {}), alice, 403, "cross_origin"},
      {"a state change from another origin", req("DELETE", {{"Origin", "https://evil.example"}}),
       alice, 403, "cross_origin"},
      {"an unknown or expired session", req("GET", {}), {true, "", url}, 401, "session_expired"},
      {"with a service's headers", req("GET", {{"X-Tokend-Act-As", "bob"}}), alice, 403,
       "ambiguous_identity"},
      {"with Authorization", req("GET", {{"Authorization", "Bearer x"}}), alice, 403,
       "ambiguous_identity"},
      {"with the user header", req("GET", {{"X-Forwarded-User", "bob"}}), alice, 403,
       "untrusted_user_header"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    auto got = identify(cfg, c.request, tls, c.session);
    REQUIRE_FALSE(got);
    CHECK(got.error().status == c.status);
    CHECK(got.error().code == c.code);
  }
  // Not over the Unix socket: a session there is not looked at.
  ipc::Peer unix_peer;
  unix_peer.uid = 1000;
  auto none = identify(cfg, req("GET", {}), unix_peer, alice);
  REQUIRE_FALSE(none);
  CHECK(none.error().code == "unauthenticated");
}

#include "oauth/protocol.hpp"

#include <catch2/catch_test_macros.hpp>

#include "core/encoding.hpp"

using namespace tokend;
using namespace tokend::oauth;
using namespace std::chrono_literals;

namespace {

Result<net::HttpResponse> answer(long status, std::string body,
                                 std::string type = "application/json",
                                 net::HttpHeaders extra = {}) {
  net::HttpResponse r;
  r.status = status;
  r.headers = std::move(extra);
  r.headers.emplace_back("content-type", std::move(type));
  r.body = Secret(body);
  return r;
}

const WallTime k_sent = from_unix_ms(1'800'000'000'000);

}  // namespace

TEST_CASE("refresh request: form with client_secret_basic, post, public; JSON for atlassian",
          "[refresh][oauth]") {
  TokenEndpoint e;
  e.token_url = "https://auth.example/token";
  e.client_id = "my id";
  e.client_secret = Secret("s&cret");
  e.auth = ClientAuth::basic;
  auto r = make_refresh_request(e, Secret("rt/1+2"), 10s);
  CHECK(r.method == "POST");
  CHECK(r.body.reveal() == "grant_type=refresh_token&refresh_token=rt%2F1%2B2");
  bool basic = false;
  for (const auto& [k, v] : r.headers) {
    if (k == "Authorization") {
      basic = true;
      CHECK(v == "Basic " + base64_encode("my+id:s%26cret"));  // RFC 6749 §2.3.1
    }
  }
  CHECK(basic);

  e.auth = ClientAuth::post;
  r = make_refresh_request(e, Secret("rt"), 10s);
  CHECK(r.body.reveal() ==
        "grant_type=refresh_token&refresh_token=rt&client_id=my+id&client_secret=s%26cret");
  for (const auto& [k, v] : r.headers) CHECK(k != "Authorization");

  e.auth = ClientAuth::none;
  r = make_refresh_request(e, Secret("rt"), 10s);
  CHECK(r.body.reveal() == "grant_type=refresh_token&refresh_token=rt&client_id=my+id");

  store::Profile p;
  p.name = "jira";
  p.provider = "atlassian";
  p.config.client_id = "cid";
  p.client_secret = Secret("cs");
  auto atl = token_endpoint_of(p);
  REQUIRE(atl);
  CHECK(atl->token_url == "https://auth.atlassian.com/oauth/token");
  CHECK(atl->json_body);
  CHECK(atl->reuse_window == 600s);
  r = make_refresh_request(*atl, Secret("rt"), 10s);
  auto body = json::parse(r.body.reveal(), "body");
  REQUIRE(body);
  CHECK((*body)["grant_type"] == "refresh_token");
  CHECK((*body)["client_secret"] == "cs");
  CHECK((*body)["refresh_token"] == "rt");

  p.client_secret = Secret();
  auto no_secret = token_endpoint_of(p);
  REQUIRE_FALSE(no_secret);
  CHECK(no_secret.error().message.find("client secret") != std::string::npos);
}

TEST_CASE("token answers: success, expiry from the send time, rotation", "[refresh][oauth]") {
  auto t = interpret_token_response(
      answer(
          200,
          R"({"access_token":"at-1","token_type":"bearer","expires_in":3600,"refresh_token":"rt-2","scope":"a b"})"),
      k_sent, 1h);
  REQUIRE(t);
  CHECK(t->access_token.reveal() == "at-1");
  CHECK(t->refresh_token.reveal() == "rt-2");
  CHECK(t->token_type == "Bearer");
  CHECK(t->expires_at_ms == to_unix_ms(k_sent) + 3'600'000);
  CHECK(t->scope == "a b");
  // expires_in as a string of digits is accepted; absent uses the default.
  CHECK(
      interpret_token_response(answer(200, R"({"access_token":"a","expires_in":"60"})"), k_sent, 1h)
          ->expires_at_ms == to_unix_ms(k_sent) + 60'000);
  CHECK(
      interpret_token_response(answer(200, R"({"access_token":"a"})"), k_sent, 1h)->expires_at_ms ==
      to_unix_ms(k_sent) + 3'600'000);
}

TEST_CASE("token answers: every failure is classified, with a clear message and no token",
          "[refresh][oauth]") {
  struct Case {
    const char* name;
    Result<net::HttpResponse> response;
    FailureKind kind;
    const char* says;
  };
  const Case cases[] = {
      {"400 invalid_grant", answer(400, R"({"error":"invalid_grant"})"), FailureKind::reauth,
       "rejected the refresh token"},
      {"atlassian 403 invalid_grant",
       answer(
           403,
           R"({"error":"invalid_grant","error_description":"Unknown or invalid refresh token."})"),
       FailureKind::reauth, "Unknown or invalid refresh token"},
      {"invalid_client", answer(401, R"({"error":"invalid_client"})"), FailureKind::config,
       "client credentials"},
      {"401 without body", answer(401, ""), FailureKind::config, "client credentials"},
      {"unsupported grant", answer(400, R"({"error":"unsupported_grant_type"})"),
       FailureKind::config, "refused"},
      {"wrong token url", answer(404, "<html>not found</html>", "text/html"), FailureKind::config,
       "token_url"},
      {"429", answer(429, "", "text/plain", {{"retry-after", "7"}}), FailureKind::transient,
       "rate limiting"},
      {"500 html", answer(500, "<html><body>oops</body></html>", "text/html"),
       FailureKind::transient, "HTML error page"},
      {"502 html", answer(502, "<html>bad gateway</html>", "text/html"), FailureKind::transient,
       "502"},
      {"503", answer(503, "<html>down</html>", "text/html", {{"retry-after", "30"}}),
       FailureKind::transient, "503"},
      {"html 200", answer(200, "<!DOCTYPE html><html>Sign in</html>", "text/html"),
       FailureKind::transient, "text/html (35 bytes), not JSON"},
      {"truncated json", answer(200, R"({"access_token":"at-x","expires_in":36)"),
       FailureKind::transient, "not valid JSON"},
      {"missing access_token", answer(200, R"({"expires_in":3600,"refresh_token":"rt"})"),
       FailureKind::transient, "no access_token"},
      {"empty access_token", answer(200, R"({"access_token":"","expires_in":3600})"),
       FailureKind::transient, "no access_token"},
      {"expires_in negative", answer(200, R"({"access_token":"a","expires_in":-5})"),
       FailureKind::transient, "expires_in"},
      {"expires_in zero", answer(200, R"({"access_token":"a","expires_in":0})"),
       FailureKind::transient, "expires_in"},
      {"expires_in garbage", answer(200, R"({"access_token":"a","expires_in":"soon"})"),
       FailureKind::transient, "expires_in"},
      {"expires_in huge", answer(200, R"({"access_token":"a","expires_in":99999999999})"),
       FailureKind::transient, "expires_in"},
      {"error of the wrong type", answer(400, R"({"error":5})"), FailureKind::transient, "400"},
      {"array", answer(200, R"(["at"])"), FailureKind::transient, "not a JSON object"},
      {"timeout", std::unexpected(Error{Errc::timeout, "no answer within the timeout"}),
       FailureKind::transient, "unreachable"},
      {"dropped", std::unexpected(Error{Errc::transient, "connection reset"}),
       FailureKind::transient, "unreachable"},
  };
  for (const auto& c : cases) {
    INFO(c.name);
    auto t = interpret_token_response(c.response, k_sent, 1h);
    REQUIRE_FALSE(t);
    CHECK(t.error().kind == c.kind);
    CHECK(t.error().message.find(c.says) != std::string::npos);
    CHECK(t.error().message.find("at-x") == std::string::npos);
  }
  auto rl =
      interpret_token_response(answer(429, "", "text/plain", {{"retry-after", "7"}}), k_sent, 1h);
  CHECK(rl.error().retry_after == 7s);
}

// Issue 13 findings 1, 6 and 7: what a hostile token endpoint sends does not
// reach a header, a file, a log line or a message unchecked.
TEST_CASE("token answers: tokens and token types outside the RFCs' alphabets are refused",
          "[refresh][oauth]") {
  struct Case {
    const char* name;
    std::string body;
    const char* says;
  };
  const Case cases[] = {
      {"shell metacharacters", R"({"access_token":"AAA;id>PWNED","expires_in":60})",
       "access_token is not a usable token"},
      {"newline in the token", R"({"access_token":"a\nLD_PRELOAD=/tmp/x.so","expires_in":60})",
       "access_token"},
      {"space in the token", R"({"access_token":"a b","expires_in":60})", "access_token"},
      {"padding in the middle", R"({"access_token":"a=b","expires_in":60})", "access_token"},
      {"refresh token with CR",
       R"({"access_token":"at-x","refresh_token":"r\rX: y","expires_in":60})", "refresh_token"},
      {"refresh token not a string", R"({"access_token":"at-x","refresh_token":5,"expires_in":60})",
       "refresh_token"},
      {"token_type with CRLF",
       R"({"access_token":"at-x","token_type":"Bearer\r\nX-Injected: 1","expires_in":60})",
       "token_type is not one word"},
      {"token_type two words", R"({"access_token":"at-x","token_type":"Bearer x","expires_in":60})",
       "token_type"},
      {"scope with a newline", R"({"access_token":"at-x","scope":"a\nb","expires_in":60})",
       "scope"},
  };
  for (const auto& c : cases) {
    INFO(c.name);
    auto t = interpret_token_response(answer(200, c.body), k_sent, 1h);
    REQUIRE_FALSE(t);
    CHECK(t.error().kind == FailureKind::transient);
    CHECK(t.error().message.find(c.says) != std::string::npos);
    for (const char* secret : {"PWNED", "LD_PRELOAD", "X-Injected", "at-x"})
      CHECK(t.error().message.find(secret) == std::string::npos);
  }
  // What the RFCs allow passes: a JWT, base64 with padding, other type names.
  auto jwt = interpret_token_response(
      answer(
          200,
          R"({"access_token":"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln-_~+/==","token_type":"DPoP","expires_in":60,
                      "refresh_token":"rt.1~2","scope":"read:jira-work offline_access"})"),
      k_sent, 1h);
  REQUIRE(jwt);
  CHECK(jwt->token_type == "DPoP");
  CHECK(jwt->refresh_token.reveal() == "rt.1~2");
}

TEST_CASE("token answers: provider error texts are printable, 2xx bodies never quoted",
          "[refresh][oauth]") {
  // A newline in error_description would forge a log line and reach TOKEND_REASON.
  auto forged =
      interpret_token_response(answer(400,
                                      "{\"error\":\"invalid_grant\\n2026-01-01 [info] "
                                      "forged\",\"error_description\":\"x\\r\\n\\u001b[31mred\"}"),
                               k_sent, 1h);
  REQUIRE_FALSE(forged);
  for (const char c : forged.error().message) {
    const auto u = static_cast<unsigned char>(c);
    CHECK((u >= 0x20 && u < 0x7f));
  }
  auto denied = interpret_token_response(
      answer(403, R"({"error":"invalid_grant","error_description":"d\u00e9j\u00e0\nvu"})"), k_sent,
      1h);
  REQUIRE_FALSE(denied);
  CHECK(denied.error().kind == FailureKind::reauth);
  CHECK(denied.error().message.find('\n') == std::string::npos);
  // A form-encoded 200 in a JSON-less form: never quoted into the message.
  auto text = interpret_token_response(
      answer(200, "access_token=at-x&refresh_token=rt-secret", "text/plain"), k_sent, 1h);
  REQUIRE_FALSE(text);
  CHECK(text.error().message.find("at-x") == std::string::npos);
  CHECK(text.error().message.find("rt-secret") == std::string::npos);
  CHECK(text.error().message.find("text/plain") != std::string::npos);
  // GitHub-style application/x-www-form-urlencoded answers are read, the
  // rotated refresh token included.
  auto form = interpret_token_response(
      answer(200,
             "access_token=gho_abc&expires_in=28800&refresh_token=ghr_def"
             "&refresh_token_expires_in=15897600&scope=repo&token_type=bearer",
             "application/x-www-form-urlencoded; charset=utf-8"),
      k_sent, 1h);
  REQUIRE(form);
  CHECK(form->access_token.reveal() == "gho_abc");
  CHECK(form->refresh_token.reveal() == "ghr_def");
  CHECK(form->token_type == "Bearer");
  CHECK(form->expires_at_ms == to_unix_ms(k_sent) + 28'800'000);
  auto form_error =
      interpret_token_response(answer(200, "error=bad_verification_code&error_description=The+code",
                                      "application/x-www-form-urlencoded"),
                               k_sent, 1h);
  REQUIRE_FALSE(form_error);
  CHECK(form_error.error().message.find("no access_token") != std::string::npos);
}

TEST_CASE("Retry-After: seconds and HTTP dates", "[refresh][oauth]") {
  const WallTime now = from_unix_ms(1'445'412'480'000);  // Wed, 21 Oct 2015 07:28:00 GMT
  CHECK(parse_retry_after("120", now) == 120s);
  CHECK(parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now) == 30s);
  CHECK(parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now) == 0s);
  CHECK_FALSE(parse_retry_after("soon", now));
  CHECK_FALSE(parse_retry_after("-3", now));
  CHECK_FALSE(parse_retry_after("", now));
}

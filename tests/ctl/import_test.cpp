#include "ctl/import.hpp"

#include <catch2/catch_test_macros.hpp>
#include <optional>
#include <string>

#include "core/encoding.hpp"

using tokend::Errc;
using tokend::Secret;
using tokend::ctl::DotenvValues;
using tokend::ctl::import_profile_body;
using tokend::ctl::jwt_expiry;
using tokend::ctl::login_paste_body;
using tokend::ctl::parse_unix_time;

namespace {

std::string jwt(const std::string& payload) {
  return tokend::base64url_encode(R"({"alg":"RS256","typ":"JWT"})") + "." +
         tokend::base64url_encode(payload) + ".c2lnbmF0dXJl";
}

struct ExpCase {
  const char* rule;
  std::string token;
  std::optional<std::int64_t> expected;
};

DotenvValues complete_set() {
  DotenvValues v;
  v.emplace("JIRA_OAUTH_CLIENT_ID", Secret("cid"));
  v.emplace("JIRA_OAUTH_CLIENT_SECRET", Secret("csecret"));
  v.emplace("JIRA_OAUTH_REDIRECT_URI", Secret("http://localhost:8080/callback"));
  v.emplace("JIRA_OAUTH_ACCESS_TOKEN", Secret("opaque-access-token"));
  v.emplace("JIRA_OAUTH_REFRESH_TOKEN", Secret("refresh-token"));
  return v;
}

}  // namespace

TEST_CASE("jwt_expiry reads the exp claim and ignores everything else", "[ctl][import][jwt]") {
  const ExpCase cases[] = {
      {"integer exp", jwt(R"({"sub":"me","exp":1790000000})"), 1790000000},
      {"fractional exp", jwt(R"({"exp":1790000000.75})"), 1790000000},
      {"the known token from a set_key file", "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3OTAwMDAwMDB9.c2ln",
       1790000000},
      {"padded base64url", "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3OTAwMDAwMDB9==.c2ln", 1790000000},
      {"surrounding whitespace", " " + jwt(R"({"exp":42})") + "\n", 42},
      {"no exp", jwt(R"({"sub":"me"})"), std::nullopt},
      {"exp as a string", jwt(R"({"exp":"1790000000"})"), std::nullopt},
      {"negative exp", jwt(R"({"exp":-5})"), std::nullopt},
      {"payload not JSON", jwt("not json"), std::nullopt},
      {"payload a JSON array", jwt("[1,2]"), std::nullopt},
      {"bad base64url", "eyJh.e$$$.sig", std::nullopt},
      {"impossible base64 length", "a.bcdef.c", std::nullopt},
      {"opaque token", "opaque-access-token", std::nullopt},
      {"two segments", "a.b", std::nullopt},
      {"JWE (five segments)", "a.b.c.d.e", std::nullopt},
      {"empty", "", std::nullopt},
  };
  for (const auto& c : cases) {
    INFO(c.rule);
    CHECK(jwt_expiry(c.token) == c.expected);
  }
}

TEST_CASE("parse_unix_time takes seconds, Python's time.time() and milliseconds", "[ctl][import]") {
  CHECK(parse_unix_time("1790000000") == 1790000000);
  CHECK(parse_unix_time(" 1790000000\n") == 1790000000);
  CHECK(parse_unix_time("1790000000.123456") == 1790000000);
  CHECK(parse_unix_time("1790000000123") == 1790000000);
  CHECK(parse_unix_time("") == std::nullopt);
  CHECK(parse_unix_time("-1") == std::nullopt);
  CHECK(parse_unix_time("0") == std::nullopt);
  CHECK(parse_unix_time("tomorrow") == std::nullopt);
  CHECK(parse_unix_time("2026-01-01T00:00:00Z") == std::nullopt);
  CHECK(parse_unix_time("1790000000.5x") == std::nullopt);
}

TEST_CASE("import_profile_body maps the JIRA_OAUTH_* variables", "[ctl][import]") {
  auto vars = complete_set();
  auto body = import_profile_body(vars, "atlassian");
  REQUIRE(body.has_value());
  CHECK((*body)["kind"] == "oauth2");
  CHECK((*body)["provider"] == "atlassian");
  CHECK((*body)["client_id"] == "cid");
  CHECK((*body)["client_secret"] == "csecret");
  CHECK((*body)["redirect_uri"] == "http://localhost:8080/callback");
  CHECK((*body)["access_token"] == "opaque-access-token");
  CHECK((*body)["refresh_token"] == "refresh-token");
  CHECK((*body)["expires_in"] == 0);  // opaque token, no EXPIRES_AT: refresh at once
  CHECK_FALSE(body->contains("expires_at"));
  CHECK_FALSE(body->contains("scopes"));
  CHECK_FALSE(body->contains("site"));
  CHECK_FALSE(body->contains("cloud_id"));

  SECTION("the cloud id when the script kept one") {
    vars.insert_or_assign("JIRA_OAUTH_CLOUD_ID", Secret("11111111-2222-3333-4444-555555555555"));
    CHECK((*import_profile_body(vars, "atlassian"))["cloud_id"] ==
          "11111111-2222-3333-4444-555555555555");
  }

  SECTION("expiry from the JWT's exp") {
    vars.insert_or_assign("JIRA_OAUTH_ACCESS_TOKEN", Secret(jwt(R"({"exp":1790000000})")));
    auto b = import_profile_body(vars, "atlassian");
    REQUIRE(b.has_value());
    CHECK((*b)["expires_at"] == 1790000000);
    CHECK_FALSE(b->contains("expires_in"));
  }
  SECTION("JIRA_OAUTH_EXPIRES_AT wins over the JWT") {
    vars.insert_or_assign("JIRA_OAUTH_ACCESS_TOKEN", Secret(jwt(R"({"exp":1790000000})")));
    vars.insert_or_assign("JIRA_OAUTH_EXPIRES_AT", Secret("1790000123.9"));
    auto b = import_profile_body(vars, "atlassian");
    REQUIRE(b.has_value());
    CHECK((*b)["expires_at"] == 1790000123);
  }
  SECTION("a malformed JIRA_OAUTH_EXPIRES_AT is an error naming it, not its value") {
    vars.insert_or_assign("JIRA_OAUTH_EXPIRES_AT", Secret("soonish"));
    auto b = import_profile_body(vars, "atlassian");
    REQUIRE_FALSE(b.has_value());
    CHECK(b.error().code == Errc::invalid_argument);
    CHECK(b.error().message.find("JIRA_OAUTH_EXPIRES_AT") != std::string::npos);
    CHECK(b.error().message.find("soonish") == std::string::npos);
  }
  SECTION("scopes (commas read as spaces) and the site, first of three names") {
    vars.insert_or_assign("JIRA_OAUTH_SCOPES", Secret("read:jira-work,offline_access"));
    vars.insert_or_assign("JIRA_BASE_URL", Secret("https://base.atlassian.net"));
    vars.insert_or_assign("JIRA_URL", Secret("https://url.atlassian.net"));
    auto b = import_profile_body(vars, "generic");
    REQUIRE(b.has_value());
    CHECK((*b)["provider"] == "generic");
    CHECK((*b)["scopes"] == "read:jira-work offline_access");
    CHECK((*b)["site"] == "https://url.atlassian.net");
    vars.insert_or_assign("JIRA_OAUTH_SITE", Secret("https://site.atlassian.net"));
    CHECK((*import_profile_body(vars, "atlassian"))["site"] == "https://site.atlassian.net");
  }
  SECTION(
      "a refresh token alone (no access token, or a blank one): no expiry, tokend refreshes at "
      "once") {
    for (const bool blank : {false, true}) {
      vars.erase("JIRA_OAUTH_ACCESS_TOKEN");
      if (blank) vars.insert_or_assign("JIRA_OAUTH_ACCESS_TOKEN", Secret(" "));
      vars.insert_or_assign("JIRA_OAUTH_EXPIRES_AT", Secret("1790000123"));
      auto b = import_profile_body(vars, "atlassian");
      REQUIRE(b.has_value());
      CHECK((*b)["refresh_token"] == "refresh-token");
      CHECK_FALSE(b->contains("access_token"));
      CHECK_FALSE(b->contains("expires_in"));
      CHECK_FALSE(b->contains("expires_at"));
    }
  }
  SECTION("values from the environment lose a trailing newline") {
    vars.insert_or_assign("JIRA_OAUTH_REFRESH_TOKEN", Secret("refresh-token\n"));
    CHECK((*import_profile_body(vars, "atlassian"))["refresh_token"] == "refresh-token");
  }
}

TEST_CASE("import_profile_body names every missing variable and no value", "[ctl][import]") {
  auto vars = complete_set();
  vars.erase("JIRA_OAUTH_CLIENT_SECRET");
  vars.insert_or_assign("JIRA_OAUTH_REFRESH_TOKEN", Secret("  "));  // blank counts as missing
  auto b = import_profile_body(vars, "atlassian");
  REQUIRE_FALSE(b.has_value());
  CHECK(b.error().code == Errc::not_found);
  CHECK(b.error().message ==
        "missing variables JIRA_OAUTH_CLIENT_SECRET, JIRA_OAUTH_REFRESH_TOKEN");

  vars = complete_set();
  vars.erase("JIRA_OAUTH_REDIRECT_URI");
  CHECK(import_profile_body(vars, "atlassian").error().message ==
        "missing variable JIRA_OAUTH_REDIRECT_URI");

  const auto none = import_profile_body(DotenvValues{}, "atlassian");
  CHECK(
      none.error().message ==
      "missing variables JIRA_OAUTH_CLIENT_ID, JIRA_OAUTH_CLIENT_SECRET, JIRA_OAUTH_REDIRECT_URI, "
      "JIRA_OAUTH_REFRESH_TOKEN");
}

TEST_CASE("login_paste_body tells a redirect URL from a bare code", "[ctl][import][login]") {
  struct PasteCase {
    const char* pasted;
    const char* field;  // nullptr: nothing to send
    const char* value;
  };
  const PasteCase cases[] = {
      {"http://127.0.0.1:8765/callback?code=abc&state=xyz", "redirect_url",
       "http://127.0.0.1:8765/callback?code=abc&state=xyz"},
      {"  https://example.com/cb?code=abc&state=xyz \r\n", "redirect_url",
       "https://example.com/cb?code=abc&state=xyz"},
      {"?code=abc&state=xyz", "redirect_url", "?code=abc&state=xyz"},
      {"code=abc&state=xyz", "redirect_url", "?code=abc&state=xyz"},
      {"error=access_denied&state=xyz&code=", "redirect_url",
       "?error=access_denied&state=xyz&code="},
      {"abc123-DEF", "code", "abc123-DEF"},
      {"\tabc123\n", "code", "abc123"},
      {"", nullptr, nullptr},
      {"   \r\n", nullptr, nullptr},
  };
  for (const auto& c : cases) {
    INFO(c.pasted);
    const auto body = login_paste_body(c.pasted);
    if (c.field == nullptr) {
      CHECK_FALSE(body.has_value());
      continue;
    }
    REQUIRE(body.has_value());
    CHECK(body->size() == 1);
    CHECK((*body)[c.field] == c.value);
  }
}

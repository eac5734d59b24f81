// Where proxied calls go and what may pass: table-driven over the credential
// kinds, the escape attempts, header filtering, policy and the rate limiter.
#include "proxy/route.hpp"

#include <catch2/catch_test_macros.hpp>

using namespace tokend;
using namespace tokend::proxy;
using json::Json;
using store::CredentialKind;

namespace {

store::Profile profile(CredentialKind kind, std::string provider, Json config) {
  store::Profile p;
  p.name = std::string(1, 'p');  // (a literal here trips GCC 12's -Wrestrict false positive)
  p.kind = kind;
  p.provider = std::move(provider);
  p.config = store::parse_profile_config(config).value();
  return p;
}

}  // namespace

TEST_CASE("upstream URLs per credential kind", "[proxy]") {
  const auto oauth = profile(CredentialKind::oauth2, "atlassian", {{"cloud_id", "c-1"}});
  const auto gateway = profile(CredentialKind::oauth2, "atlassian",
                               {{"cloud_id", "c-1"}, {"api_base", "https://gw.test/"}});
  const auto cloud =
      profile(CredentialKind::api_token, "", {{"site", "https://acme.atlassian.net/"}});
  const auto dc =
      profile(CredentialKind::pat, "",
              {{"site", "https://jira.corp"}, {"confluence_base", "https://wiki.corp"}});
  const auto generic =
      profile(CredentialKind::oauth2, "generic", {{"api_base", "https://api.example.com/v2"}});
  struct Case {
    const store::Profile* p;
    std::string rest;
    std::string query;
    std::string want;
  };
  const Case cases[] = {
      {&oauth, "jira/rest/api/3/myself", "",
       "https://api.atlassian.com/ex/jira/c-1/rest/api/3/myself"},
      {&oauth, "confluence/wiki/rest/api/content", "limit=5&start=0",
       "https://api.atlassian.com/ex/confluence/c-1/wiki/rest/api/content?limit=5&start=0"},
      {&gateway, "jira/rest/api/3/search", "jql=project%3DABC",
       "https://gw.test/ex/jira/c-1/rest/api/3/search?jql=project%3DABC"},
      {&cloud, "jira/rest/api/3/issue/ABC-1", "",
       "https://acme.atlassian.net/rest/api/3/issue/ABC-1"},
      {&cloud, "confluence/rest/api/content", "",
       "https://acme.atlassian.net/wiki/rest/api/content"},
      {&dc, "jira/rest/api/2/myself", "", "https://jira.corp/rest/api/2/myself"},
      {&dc, "confluence/rest/api/space", "", "https://wiki.corp/rest/api/space"},
      {&generic, "users/me", "", "https://api.example.com/v2/users/me"},
      // Characters a decoded path may hold are encoded again.
      {&cloud, "jira/rest/api/3/search/a b?c#d%e", "",
       "https://acme.atlassian.net/rest/api/3/search/a%20b%3Fc%23d%25e"},
  };
  for (const auto& c : cases) {
    INFO(c.rest);
    auto url = upstream_url(*c.p, c.rest, c.query);
    REQUIRE(url);
    CHECK(*url == c.want);
  }
}

TEST_CASE("paths that could leave the profile's hosts are refused", "[proxy]") {
  const auto cloud =
      profile(CredentialKind::api_token, "", {{"site", "https://acme.atlassian.net"}});
  const auto generic =
      profile(CredentialKind::oauth2, "generic", {{"api_base", "https://api.example.com/v2"}});
  for (const std::string rest :
       {"jira/../../evil", "jira/rest/../..", "jira/./x", "..", "jira//evil.com/x", "/jira/x",
        "jira/https://evil.com/", "jira/a\\b", "jira/a\r\nHost: evil", "jira/a\x01", "",
        "bitbucket/x", "http://evil.com/x"}) {
    INFO(rest);
    CHECK_FALSE(upstream_url(cloud, rest, ""));
  }
  CHECK_FALSE(upstream_url(generic, "../admin", ""));
  CHECK_FALSE(upstream_url(cloud, "jira/x", "a=b\r\nX: y"));
  CHECK_FALSE(upstream_url(cloud, "jira/x", "a=b#frag"));
  CHECK_FALSE(upstream_url(cloud, "jira/x", "a=b c"));
  // A missing cloud id or api_base is a configuration error, not a guess.
  CHECK(upstream_url(profile(CredentialKind::oauth2, "atlassian", Json::object()), "jira/x", "")
            .error()
            .code == Errc::config);
  CHECK(upstream_url(profile(CredentialKind::oauth2, "generic", Json::object()), "x", "")
            .error()
            .code == Errc::config);
  CHECK(needs_cloud_id(profile(CredentialKind::oauth2, "atlassian", Json::object()), "jira/x"));
  CHECK_FALSE(
      needs_cloud_id(profile(CredentialKind::oauth2, "atlassian", {{"cloud_id", "c"}}), "jira/x"));
}

TEST_CASE("request headers: credentials, hop-by-hop and injected lines go", "[proxy]") {
  const Headers in = {{"Authorization", "Bearer theirs"},
                      {"Cookie", "s=1"},
                      {"Host", "x"},
                      {"Connection", "close, X-Foo"},
                      {"X-Foo", "1"},
                      {"Keep-Alive", "5"},
                      {"Transfer-Encoding", "chunked"},
                      {"Proxy-Authorization", "b"},
                      {"X-Tokend-Retry-Wait", "5"},
                      {"Content-Type", "application/json"},
                      {"X-Atlassian-Token", "no-check"},
                      {"Accept", "*/*"}};
  auto out = request_headers(in);
  REQUIRE(out);
  CHECK(*out == Headers{{"Content-Type", "application/json"},
                        {"X-Atlassian-Token", "no-check"},
                        {"Accept", "*/*"}});
  CHECK_FALSE(request_headers({{"X-A", "a\r\nAuthorization: Bearer x"}}));
  CHECK_FALSE(request_headers({{"X-A", std::string("a\0b", 3)}}));
  const Headers up = {{"content-type", "application/json"},
                      {"set-cookie", "atl=1"},
                      {"transfer-encoding", "chunked"},
                      {"x-ratelimit-remaining", "9"},
                      {"connection", "keep-alive"}};
  CHECK(response_headers(up) ==
        Headers{{"content-type", "application/json"}, {"x-ratelimit-remaining", "9"}});
}

TEST_CASE("policy: read-only, allow and deny prefixes on whole segments", "[proxy]") {
  const Json policy = {{"read_only", true},
                       {"allow", {"jira/rest/api/3/project/AB", "confluence/"}},
                       {"deny", {"confluence/rest/api/space/HR"}}};
  struct Case {
    std::string method;
    std::string rest;
    bool ok;
  };
  const Case cases[] = {
      {"GET", "jira/rest/api/3/project/AB", true},
      {"GET", "jira/rest/api/3/project/AB/versions", true},
      {"GET", "jira/rest/api/3/project/ABC", false},  // not a whole-segment prefix
      {"POST", "jira/rest/api/3/project/AB", false},  // read-only
      {"HEAD", "confluence/rest/api/space/DOCS", true},
      {"GET", "confluence/rest/api/space/HR", false},
      {"GET", "confluence/rest/api/space/HR/content", false},
      {"GET", "jira/rest/api/3/myself", false},
  };
  const auto cloud = profile(CredentialKind::api_token, "",
                             {{"site", "https://acme.atlassian.net"}, {"policy", policy}});
  for (const auto& c : cases) {
    INFO(c.method << " " << c.rest);
    auto r = check_policy(cloud, c.method, c.rest);
    CHECK(r.has_value() == c.ok);
    if (!r) CHECK(r.error().code == Errc::permission);
  }
  CHECK(check_policy(profile(CredentialKind::api_token, "", {{"site", "https://a.test"}}), "DELETE",
                     "jira/anything"));
}

// Issue 13 finding 8: the policy is judged on what the upstream receives.
TEST_CASE("policy: other names of a denied URL, path parameters and '..;' do not get past it",
          "[proxy]") {
  const Json deny = {{"deny", {"confluence/rest/api/space/HR"}}};
  const Json allow = {{"allow", {"jira/rest/api/3/project/AB"}}};
  const auto cloud = profile(CredentialKind::api_token, "",
                             {{"site", "https://acme.atlassian.net"}, {"policy", deny}});
  const auto cloud_allow = profile(CredentialKind::api_token, "",
                                   {{"site", "https://acme.atlassian.net"}, {"policy", allow}});
  // A Data Center site serving both products from one base.
  const auto dc =
      profile(CredentialKind::pat, "", {{"site", "https://atl.corp"}, {"policy", deny}});
  const auto dc_allow =
      profile(CredentialKind::pat, "", {{"site", "https://atl.corp"}, {"policy", allow}});
  const auto generic =
      profile(CredentialKind::oauth2, "generic",
              {{"api_base", "https://api.example.com"}, {"policy", {{"deny", {"admin"}}}}});
  struct Case {
    const store::Profile* p;
    std::string rest;
    bool ok;
  };
  const Case cases[] = {
      // Confluence Cloud lives under the site's /wiki: jira/wiki/... is the same URL.
      {&cloud, "jira/wiki/rest/api/space/HR", false},
      {&cloud, "jira/wiki/rest/api/space/HR/content", false},
      {&cloud, "jira/wiki/rest/api/space/DOCS", true},
      {&dc, "jira/rest/api/space/HR", false},
      // Path parameters: Tomcat routes "HR;x" as "HR".
      {&cloud, "confluence/rest/api/space/HR;x", false},
      {&cloud, "confluence/rest;a=b/api/space/HR", false},
      {&cloud, "jira/wiki;x/rest/api/space/HR", false},
      // As written, "AB;x" is another resource than AB (for servers that do
      // not strip path parameters): not under the allowed prefix.
      {&cloud_allow, "jira/rest/api/3/project/AB;x", false},
      {&cloud_allow, "jira/rest/api/3/project/AB/versions;x", true},
      {&cloud_allow, "jira/rest/api/3/project/AB;/../../../myself", false},
      {&cloud_allow, "jira/rest/api/3/project/ABC;x", false},
      // The same URL under the other product's name is allowed like the first.
      {&dc_allow, "confluence/rest/api/3/project/AB", true},
      {&dc_allow, "confluence/rest/api/3/myself", false},
      {&generic, "admin;x/users", false},
      {&generic, "users/me", true},
  };
  for (const auto& c : cases) {
    INFO(c.rest);
    auto r = check_policy(*c.p, "GET", c.rest);
    CHECK(r.has_value() == c.ok);
  }
  // "..;" is a dot segment to Tomcat: refused outright, policy or not, so it
  // cannot leave the site's context path either.
  for (const std::string rest :
       {"jira/rest/..;/..;/admin", "confluence/..;x/secure", "jira/.;/x"}) {
    INFO(rest);
    auto r = check_policy(cloud_allow, "GET", rest);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::invalid_argument);
    CHECK_FALSE(upstream_url(cloud, rest, ""));
    CHECK_FALSE(upstream_url(profile(CredentialKind::api_token, "", {{"site", "https://a.test"}}),
                             rest, ""));
  }
}

TEST_CASE("the rate limiter allows a burst, then one call per interval", "[proxy]") {
  RateLimiter limiter;
  MonoTime t{};
  for (int i = 0; i < 60; ++i) CHECK_FALSE(limiter.take(60, t));
  auto wait = limiter.take(60, t);
  REQUIRE(wait);
  CHECK(wait->count() > 900);
  CHECK(wait->count() <= 1001);
  t += std::chrono::milliseconds(1000);
  CHECK_FALSE(limiter.take(60, t));
  CHECK(limiter.take(60, t));
  CHECK_FALSE(RateLimiter{}.take(0, t));  // no limit
}

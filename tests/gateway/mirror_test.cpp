// The stand-in endpoint's URL layout: per credential kind, the bases a
// command is given and the proxy path each endpoint path maps back to; the
// round trip base + upstream path -> proxy path -> upstream URL lands where
// the command meant.
#include "gateway/mirror.hpp"

#include <catch2/catch_test_macros.hpp>

#include "proxy/route.hpp"

using namespace tokend;
using namespace tokend::gateway;
using json::Json;
using store::CredentialKind;
using tokend::proxy::upstream_url;

namespace {

store::Profile profile(CredentialKind kind, std::string provider, Json config) {
  store::Profile p;
  p.name = std::string(1, 'p');
  p.kind = kind;
  p.provider = std::move(provider);
  p.config = store::parse_profile_config(config).value();
  return p;
}

}  // namespace

TEST_CASE("mirror layouts per credential kind", "[proxy][mirror]") {
  const auto oauth = profile(CredentialKind::oauth2, "atlassian", {{"cloud_id", "c-1"}});
  const auto cloud =
      profile(CredentialKind::api_token, "", {{"site", "https://acme.atlassian.net/"}});
  const auto dc = profile(CredentialKind::pat, "", {{"site", "https://corp.example/jira"}});
  const auto dc_two_hosts =
      profile(CredentialKind::pat, "",
              {{"site", "https://jira.corp"}, {"confluence_base", "https://wiki.corp/confluence"}});
  const auto generic =
      profile(CredentialKind::oauth2, "generic", {{"api_base", "https://api.example.com/v2/"}});
  struct Case {
    const store::Profile* p;
    std::string base;
    std::string jira;
    std::string confluence;
  };
  const Case cases[] = {
      {&oauth, "", "/ex/jira/c-1", "/ex/confluence/c-1"},
      {&cloud, "", "", "/wiki"},
      {&dc, "/jira", "/jira", "/jira"},
      {&dc_two_hosts, "", "", "/confluence/confluence"},
      {&generic, "/v2", "-", "-"},
  };
  for (const auto& c : cases) {
    INFO(Json(c.p->config).dump());
    auto layout = mirror_layout(*c.p);
    REQUIRE(layout);
    CHECK(layout->base == c.base);
    if (c.jira == "-") {
      CHECK(layout->products.empty());
    } else {
      CHECK(layout->products.at("jira") == c.jira);
      CHECK(layout->products.at("confluence") == c.confluence);
      CHECK(layout->urls.at("jira") == c.jira);
      CHECK(layout->urls.at("confluence") ==
            (c.p == &oauth ? c.confluence + "/wiki" : c.confluence));
    }
  }
  CHECK(mirror_layout(profile(CredentialKind::oauth2, "atlassian", Json::object())).error().code ==
        Errc::config);
  CHECK(mirror_layout(profile(CredentialKind::oauth2, "generic", Json::object())).error().code ==
        Errc::config);
  CHECK(mirror_layout(profile(CredentialKind::api_token, "", Json::object())).error().code ==
        Errc::config);
}

TEST_CASE("endpoint paths map back to proxy paths and the upstream URL the command meant",
          "[proxy][mirror]") {
  const auto oauth = profile(CredentialKind::oauth2, "atlassian", {{"cloud_id", "c-1"}});
  const auto cloud =
      profile(CredentialKind::api_token, "", {{"site", "https://acme.atlassian.net"}});
  const auto dc = profile(CredentialKind::pat, "", {{"site", "https://corp.example/jira"}});
  const auto dc_two_hosts =
      profile(CredentialKind::pat, "",
              {{"site", "https://jira.corp"}, {"confluence_base", "https://wiki.corp/confluence"}});
  const auto generic =
      profile(CredentialKind::oauth2, "generic", {{"api_base", "https://api.example.com/v2"}});
  struct Case {
    const store::Profile* p;
    std::string path;
    std::string rest;
    std::string upstream;
  };
  const Case cases[] = {
      {&oauth, "/ex/jira/c-1/rest/api/3/myself", "jira/rest/api/3/myself",
       "https://api.atlassian.com/ex/jira/c-1/rest/api/3/myself"},
      {&oauth, "/ex/confluence/c-1/wiki/rest/api/content", "confluence/wiki/rest/api/content",
       "https://api.atlassian.com/ex/confluence/c-1/wiki/rest/api/content"},
      {&oauth, "/ex/confluence/c-1/rest/api/content", "confluence/rest/api/content",
       "https://api.atlassian.com/ex/confluence/c-1/rest/api/content"},
      {&cloud, "/rest/api/3/issue/ABC-1", "jira/rest/api/3/issue/ABC-1",
       "https://acme.atlassian.net/rest/api/3/issue/ABC-1"},
      {&cloud, "/wiki/rest/api/content", "confluence/rest/api/content",
       "https://acme.atlassian.net/wiki/rest/api/content"},
      {&cloud, "/wikipedia", "jira/wikipedia", "https://acme.atlassian.net/wikipedia"},
      {&dc, "/jira/rest/api/2/myself", "jira/rest/api/2/myself",
       "https://corp.example/jira/rest/api/2/myself"},
      {&dc_two_hosts, "/rest/api/2/myself", "jira/rest/api/2/myself",
       "https://jira.corp/rest/api/2/myself"},
      {&dc_two_hosts, "/confluence/confluence/rest/api/space", "confluence/rest/api/space",
       "https://wiki.corp/confluence/rest/api/space"},
      {&generic, "/v2/users/me", "users/me", "https://api.example.com/v2/users/me"},
  };
  for (const auto& c : cases) {
    INFO(c.path);
    auto rest = mirrored_rest(*c.p, c.path);
    REQUIRE(rest);
    CHECK(*rest == c.rest);
    auto url = upstream_url(*c.p, *rest, "");
    REQUIRE(url);
    CHECK(*url == c.upstream);
  }
}

TEST_CASE("paths outside the layout are not found; escapes are still refused", "[proxy][mirror]") {
  const auto oauth = profile(CredentialKind::oauth2, "atlassian", {{"cloud_id", "c-1"}});
  const auto dc = profile(CredentialKind::pat, "", {{"site", "https://corp.example/jira"}});
  const auto generic =
      profile(CredentialKind::oauth2, "generic", {{"api_base", "https://api.example.com/v2"}});
  for (const auto& [p, path] : std::initializer_list<std::pair<const store::Profile*, std::string>>{
           {&oauth, "/ex/jira/c-2/rest/api/3/myself"},  // another cloud
           {&oauth, "/ex/bitbucket/c-1/x"},
           {&oauth, "/rest/api/3/myself"},
           {&oauth, "/ex/jira/c-10/x"},  // not a segment-wise prefix
           {&dc, "/rest/api/2/myself"},
           {&dc, "/jirax/rest"},
           {&generic, "/v3/users"},
           {&generic, "/v2"},
       }) {
    INFO(path);
    auto rest = mirrored_rest(*p, path);
    REQUIRE_FALSE(rest);
    CHECK(rest.error().code == Errc::not_found);
  }
  // Dot segments pass the layout but not the proxy.
  auto rest = mirrored_rest(oauth, "/ex/jira/c-1/../../admin");
  REQUIRE(rest);
  CHECK_FALSE(upstream_url(oauth, *rest, ""));
}

#include "oauth/atlassian.hpp"

#include <catch2/catch_test_macros.hpp>

using namespace tokend;
using namespace tokend::oauth;

TEST_CASE("accessible resources: sites with a usable cloud id and url, everything else skipped") {
  auto sites = parse_accessible_resources(R"([
    {"id": "1324a887-45db-1bf4-1e99-ef0ff456d421", "url": "https://one.atlassian.net", "name": "one"},
    {"id": "../../admin", "url": "https://evil.example", "name": "path in the id"},
    {"id": "", "url": "https://empty.atlassian.net"},
    {"id": "abc", "name": "no url"},
    {"id": 7, "url": "https://number.atlassian.net"},
    "not an object",
    {"id": "2", "url": "https://two.atlassian.net/", "name": "two"}
  ])");
  REQUIRE(sites);
  REQUIRE(sites->size() == 2);
  CHECK((*sites)[0].id == "1324a887-45db-1bf4-1e99-ef0ff456d421");
  CHECK((*sites)[1].url == "https://two.atlassian.net/");
}

TEST_CASE(
    "accessible resources: not a list, or not JSON, is a transient error that quotes nothing") {
  auto object = parse_accessible_resources(R"({"access_token": "SECRET"})");
  REQUIRE_FALSE(object);
  CHECK(object.error().code == Errc::transient);
  CHECK(object.error().message.find("SECRET") == std::string::npos);
  auto html = parse_accessible_resources("<html>SECRET</html>");
  REQUIRE_FALSE(html);
  CHECK(html.error().message.find("SECRET") == std::string::npos);
}

TEST_CASE("site choice: the configured site by origin, else the only one") {
  const std::vector<AtlassianSite> two = {{"1", "https://one.atlassian.net", "one"},
                                          {"2", "https://two.atlassian.net", "two"}};
  auto configured = choose_site(two, "https://TWO.atlassian.net/wiki");
  REQUIRE(configured.problem == SiteProblem::none);
  CHECK(configured.site->id == "2");

  CHECK(choose_site(two, "https://three.atlassian.net").problem == SiteProblem::not_reachable);
  CHECK(choose_site(two, "").problem == SiteProblem::ambiguous);
  CHECK(choose_site({}, "").problem == SiteProblem::no_site);
  CHECK(choose_site({}, "https://one.atlassian.net").problem == SiteProblem::not_reachable);

  auto only = choose_site({two[0]}, "");
  REQUIRE(only.site);
  CHECK(only.site->id == "1");
}

TEST_CASE("site descriptions carry no control characters from the provider") {
  CHECK(describe_sites({}) == "none");
  const std::string text = describe_sites({{"1", "https://one.atlassian.net", "line\nforged"}});
  CHECK(text.find('\n') == std::string::npos);
  CHECK(text.find("https://one.atlassian.net") != std::string::npos);
}

TEST_CASE("the accessible-resources URL ignores a trailing slash on the API base") {
  CHECK(accessible_resources_url("https://api.atlassian.com/") ==
        "https://api.atlassian.com/oauth/token/accessible-resources");
}

#include "ctl/exec.hpp"

#include <catch2/catch_test_macros.hpp>
#include <string>
#include <vector>

using tokend::ctl::exec_token_env;
using tokend::ctl::is_env_name;
using tokend::ctl::merge_environment;
using tokend::ctl::TokenEnvInput;
using Vars = std::vector<std::pair<std::string, std::string>>;

namespace {

TokenEnvInput input(std::string_view kind, std::string_view provider,
                    std::string_view cloud_id = "") {
  return {kind, provider, cloud_id, "tok-1", "Bearer", "Bearer tok-1", 1790000000};
}

}  // namespace

TEST_CASE("variable names", "[ctl][exec]") {
  for (const char* ok : {"A", "_", "TOKEN", "jira_token", "X1", "_9"}) {
    INFO(ok);
    CHECK(is_env_name(ok));
  }
  for (const char* bad : {"", "1A", "A-B", "A=B", "A B", "Ä", "A.B", "$A"}) {
    INFO(bad);
    CHECK_FALSE(is_env_name(bad));
  }
}

TEST_CASE("exec sets the TOKEND_* variables for every profile", "[ctl][exec][env]") {
  struct Case {
    const char* rule;
    TokenEnvInput in;
  };
  const Case cases[] = {
      {"pat", input("pat", "")},
      {"api-token", input("api-token", "")},
      {"generic oauth2", input("oauth2", "generic")},
      {"mcp oauth2", input("oauth2", "mcp", "ignored-cloud")},
  };
  for (const auto& c : cases) {
    INFO(c.rule);
    CHECK(exec_token_env(c.in, {}) == Vars{{"TOKEND_TOKEN", "tok-1"},
                                           {"TOKEND_TOKEN_TYPE", "Bearer"},
                                           {"TOKEND_AUTHORIZATION", "Bearer tok-1"},
                                           {"TOKEND_EXPIRES_AT", "1790000000"}});
  }
}

TEST_CASE("exec adds JIRA_OAUTH_* for Atlassian OAuth profiles", "[ctl][exec][env]") {
  CHECK(exec_token_env(input("oauth2", "atlassian", "11111111-2222"), {}) ==
        Vars{{"TOKEND_TOKEN", "tok-1"},
             {"TOKEND_TOKEN_TYPE", "Bearer"},
             {"TOKEND_AUTHORIZATION", "Bearer tok-1"},
             {"TOKEND_EXPIRES_AT", "1790000000"},
             {"JIRA_OAUTH_ACCESS_TOKEN", "tok-1"},
             {"JIRA_OAUTH_CLOUD_ID", "11111111-2222"}});
  // No cloud id known yet: no JIRA_OAUTH_CLOUD_ID rather than an empty one.
  const auto vars = exec_token_env(input("oauth2", "atlassian"), {});
  CHECK(vars.back() == std::pair<std::string, std::string>{"JIRA_OAUTH_ACCESS_TOKEN", "tok-1"});
  // An api-token profile on an Atlassian site is not OAuth: scripts reading
  // JIRA_OAUTH_ACCESS_TOKEN would send it as a Bearer token, which fails.
  auto site = input("api-token", "");
  for (const auto& [name, value] : exec_token_env(site, {}))
    CHECK(name.rfind("JIRA_", 0) == std::string::npos);
}

TEST_CASE("exec --env NAME adds the bare token, and wins over a default", "[ctl][exec][env]") {
  TokenEnvInput in = input("pat", "");
  in.expires_at.reset();
  const std::vector<std::string> extra = {"GITHUB_TOKEN", "TOKEND_AUTHORIZATION", "GITHUB_TOKEN"};
  CHECK(exec_token_env(in, extra) == Vars{{"TOKEND_TOKEN", "tok-1"},
                                          {"TOKEND_TOKEN_TYPE", "Bearer"},
                                          {"TOKEND_AUTHORIZATION", "tok-1"},
                                          {"GITHUB_TOKEN", "tok-1"}});
}

TEST_CASE("the child's environment: tokenctl's, with the token variables replaced",
          "[ctl][exec][env]") {
  const char* current[] = {
      "PATH=/usr/bin", "TOKEND_TOKEN=stale",          "HOME=/home/me", "TOKEND_TOKEN_X=kept",
      "NOEQUALS",      "JIRA_OAUTH_ACCESS_TOKEN=old", "EMPTY="};
  const Vars vars = {{"TOKEND_TOKEN", "new"}, {"JIRA_OAUTH_ACCESS_TOKEN", "new"}, {"EXTRA", "x=y"}};
  CHECK(merge_environment(current, vars) ==
        std::vector<std::string>{"PATH=/usr/bin", "HOME=/home/me", "TOKEND_TOKEN_X=kept",
                                 "NOEQUALS", "EMPTY=", "TOKEND_TOKEN=new",
                                 "JIRA_OAUTH_ACCESS_TOKEN=new", "EXTRA=x=y"});
  CHECK(merge_environment({}, vars).size() == 3);
}

TEST_CASE("exec --endpoint: the URL and stand-in variables, defaults and names asked for",
          "[ctl][exec][env]") {
  using tokend::ctl::EndpointEnvInput;
  using tokend::ctl::EndpointEnvNames;
  using tokend::ctl::exec_endpoint_env;
  const Vars products = {{"confluence", "http://127.0.0.1:5/ex/confluence/c/wiki"},
                         {"jira", "http://127.0.0.1:5/ex/jira/c"}};
  const EndpointEnvInput oauth{"oauth2", "atlassian", "c",     "http://127.0.0.1:5",
                               products, "STANDIN",   "tokend"};
  auto vars =
      exec_endpoint_env(oauth, EndpointEnvNames{{"JIRA_URL=jira", "BASE", "TOKEND_URL=confluence"},
                                                {"JIRA_PERSONAL_TOKEN"},
                                                {"JIRA_USERNAME"}});
  REQUIRE(vars);
  const Vars want = {
      {"TOKEND_URL", "http://127.0.0.1:5/ex/confluence/c/wiki"},  // asked for wins over the default
      {"TOKEND_JIRA_URL", "http://127.0.0.1:5/ex/jira/c"},
      {"TOKEND_CONFLUENCE_URL", "http://127.0.0.1:5/ex/confluence/c/wiki"},
      {"TOKEND_TOKEN", "STANDIN"},
      {"TOKEND_TOKEN_TYPE", "Bearer"},
      {"TOKEND_AUTHORIZATION", "Bearer STANDIN"},
      {"TOKEND_USER", "tokend"},
      {"JIRA_OAUTH_ACCESS_TOKEN", "STANDIN"},
      {"JIRA_OAUTH_CLOUD_ID", "c"},
      {"JIRA_URL", "http://127.0.0.1:5/ex/jira/c"},
      {"BASE", "http://127.0.0.1:5"},
      {"JIRA_PERSONAL_TOKEN", "STANDIN"},
      {"JIRA_USERNAME", "tokend"}};
  CHECK(*vars == want);

  const EndpointEnvInput generic{"oauth2", "generic", "",      "http://127.0.0.1:5/v2",
                                 {},       "S",       "tokend"};
  auto plain = exec_endpoint_env(generic, {});
  REQUIRE(plain);
  for (const auto& [k, v] : *plain) {
    CHECK(k.rfind("JIRA", 0) != 0);
    CHECK(k != "TOKEND_JIRA_URL");
  }
  auto no_product = exec_endpoint_env(generic, EndpointEnvNames{{"X=jira"}, {}, {}});
  REQUIRE_FALSE(no_product);
  CHECK(no_product.error().message.find("one base URL") != std::string::npos);
  auto unknown = exec_endpoint_env(oauth, EndpointEnvNames{{"X=bitbucket"}, {}, {}});
  REQUIRE_FALSE(unknown);
  CHECK(unknown.error().message.find("confluence, jira") != std::string::npos);
  for (const EndpointEnvNames& bad :
       {EndpointEnvNames{{"1X"}, {}, {}}, EndpointEnvNames{{}, {"A-B"}, {}},
        EndpointEnvNames{{}, {}, {""}}}) {
    CHECK_FALSE(exec_endpoint_env(oauth, bad));
  }
}

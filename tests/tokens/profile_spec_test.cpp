// A PUT body becomes the settings the store keeps: the same JSON keys and
// values as when the settings were a JSON object, secrets only in their
// secret fields.
#include "tokens/profile_spec.hpp"

#include <catch2/catch_test_macros.hpp>
#include <string>
#include <vector>

using namespace tokend;
using namespace tokend::tokens;
using json::Json;

TEST_CASE("a PUT body is stored as the settings it names, secrets apart",
          "[tokens][profile_spec]") {
  struct Case {
    std::string name;
    Json body;
    std::string stored;  // the config column, as it always was
  };
  const std::vector<Case> cases = {
      {"oauth2 with every setting", Json::parse(R"({
         "kind": "oauth2", "provider": "generic", "client_id": "cid",
         "client_secret": "cs-SECRET-1", "scopes": "openid  offline_access",
         "authorize_url": "https://as.example/authorize", "token_url": "https://as.example/token",
         "redirect_uri": "http://127.0.0.1:8976/callback", "issuer": "https://as.example",
         "audience": "api://x", "revocation_url": "https://as.example/revoke",
         "userinfo_url": "https://as.example/userinfo", "pkce": "required",
         "token_endpoint_auth": "client_secret_post", "reuse_window": 30, "refresh_buffer": 0,
         "device_authorization_url": "https://as.example/device",
         "registration_url": "https://as.example/register", "resource": "https://api.example/",
         "prompt": "login consent", "authorize_params": {"access_type": "offline"},
         "authorization_server": "https://as.example", "site": "https://x.atlassian.net",
         "api_base": "https://api.example", "description": "work", "jira_base": "https://j.example",
         "confluence_base": "https://c.example", "cloud_id": "c1",
         "sinks": [{"type": "dotenv", "path": "/x/.env"}, {"type": "file", "path": "/x/t"}],
         "policy": {"read_only": true, "deny": ["admin"], "rate_per_minute": 2},
         "access_token": "at-SECRET-2", "refresh_token": "rt-SECRET-3", "expires_in": 3600,
         "token_type": "Bearer", "scope": "openid", "mcp_server": null
       })"),
       R"({"api_base":"https://api.example","audience":"api://x","authorization_server":"https://as.example","authorize_params":{"access_type":"offline"},"authorize_url":"https://as.example/authorize","client_id":"cid","cloud_id":"c1","confluence_base":"https://c.example","description":"work","device_authorization_url":"https://as.example/device","issuer":"https://as.example","jira_base":"https://j.example","pkce":"required","policy":{"deny":["admin"],"rate_per_minute":2,"read_only":true},"prompt":"login consent","redirect_uri":"http://127.0.0.1:8976/callback","refresh_buffer":0,"registration_url":"https://as.example/register","resource":"https://api.example/","reuse_window":30,"revocation_url":"https://as.example/revoke","scopes":["openid","offline_access"],"sinks":[{"path":"/x/.env","type":"dotenv","variable":"ACCESS_TOKEN"},{"format":"raw","path":"/x/t","type":"file"}],"site":"https://x.atlassian.net","token_endpoint_auth":"client_secret_post","token_url":"https://as.example/token","userinfo_url":"https://as.example/userinfo"})"},
      {"what may be sent empty",
       Json{{"kind", "oauth2"},
            {"token_url", "https://as.example/token"},
            {"scopes", ""},
            {"sinks", Json::array()},
            {"policy", Json::object()},
            {"authorize_params", Json::object()},
            {"pkce", "off"},
            {"token_endpoint_auth", "none"}},
       R"({"authorize_params":{},"pkce":"off","policy":{},"scopes":[],"sinks":[],"token_endpoint_auth":"none","token_url":"https://as.example/token"})"},
      {"api-token",
       Json{{"kind", "api-token"},
            {"email", "me@example.com"},
            {"token", "T-SECRET-4"},
            {"site", "https://x.atlassian.net"}},
       R"({"email":"me@example.com","site":"https://x.atlassian.net"})"},
      {"pat", Json{{"kind", "pat"}, {"token", "T-SECRET-5"}, {"site", "https://jira.example.com"}},
       R"({"site":"https://jira.example.com"})"},
  };
  for (const auto& c : cases) {
    INFO(c.name);
    auto spec = parse_profile_spec("p", c.body, 1'700'000'000'000);
    INFO((spec ? "" : spec.error().message));
    REQUIRE(spec);
    const std::string stored = Json(spec->profile.config).dump();
    CHECK(stored == c.stored);
    CHECK(stored.find("SECRET") == std::string::npos);
  }
}

TEST_CASE("a PUT body of the wrong shape names the field, never a secret",
          "[tokens][profile_spec]") {
  const std::string secret = "cs-SECRET-VALUE";
  struct Case {
    Json body;
    std::string names;
  };
  const std::vector<Case> cases = {
      {{{"kind", "oauth2"}, {"client_secret", Json::array({secret})}},
       "field \"client_secret\" must be a string"},
      {{{"kind", "oauth2"}, {"client_id", 12}}, "field \"client_id\" must be a string"},
      {{{"kind", "oauth2"}, {"scopes", 1}}, "field \"scopes\" must be a list of strings"},
      {{{"kind", "oauth2"}, {"pkce", secret}}, "field \"pkce\" must be"},
      {{{"kind", "oauth2"}, {"token_endpoint_auth", secret}},
       "field \"token_endpoint_auth\" must be client_secret_basic"},
      {{{"kind", "oauth2"}, {"reuse_window", secret}}, "field \"reuse_window\" must be a number"},
      {{{"kind", "oauth2"}, {"policy", {{"read_only", secret}}}},
       "policy.read_only must be true or false"},
      {{{"kind", "oauth2"}, {"sinks", secret}}, "field \"sinks\" must be a list"},
      {{{"kind", "oauth2"}, {"authorize_params", {{"x", 1}}}}, "authorize_params.x must be"},
      {{{"kind", "oauth2"}, {"refresh_token", 5}}, "field \"refresh_token\" must be a string"},
  };
  for (const auto& c : cases) {
    INFO(c.body.dump());
    auto spec = parse_profile_spec("p", c.body, 0);
    REQUIRE_FALSE(spec);
    CHECK(spec.error().code == Errc::invalid_argument);
    CHECK(spec.error().message.find(c.names) != std::string::npos);
    CHECK(spec.error().message.find(secret) == std::string::npos);
  }
}

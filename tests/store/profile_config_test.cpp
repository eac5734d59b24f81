#include "store/profile_config.hpp"

#include <catch2/catch_test_macros.hpp>
#include <string>
#include <vector>

using namespace tokend;
using namespace tokend::store;
using json::Json;

namespace {

// What tokend writes into the config column: a PUT of each kind (after
// tokens/profile_spec), and what the login resolver, the proxy and a
// step-up add.
const std::vector<std::string>
    k_stored =
        {
            // api-token and pat
            R"({"email":"me@example.com","site":"https://x.atlassian.net"})",
            R"({"confluence_base":"https://wiki.example.com","description":"DC","jira_base":"https://jira.example.com/jira","site":"https://jira.example.com"})",
            // atlassian OAuth with everything a client can set, and the cloud id
            R"({"api_base":"https://api.atlassian.com","client_id":"cid","cloud_id":"11111111-2222-3333-4444-555555555555","cloud_url":"https://x.atlassian.net","refresh_buffer":0,"reuse_window":600,"scopes":["read:jira-work","offline_access"],"site":"https://x.atlassian.net"})",
            // generic OAuth: every endpoint, the enums, authorize params, sinks, policy
            R"({"audience":"api://x","authorize_params":{"access_type":"offline","login_hint":"me@example.com"},"authorize_url":"https://as.example/authorize","client_id":"cid","device_authorization_url":"https://as.example/device","pkce":"required","policy":{"allow":["me","oauth"],"deny":["oauth/userinfo"],"rate_per_minute":2,"read_only":true},"prompt":"login","redirect_uri":"http://127.0.0.1:8976/callback","refresh_buffer":120,"registration_url":"https://as.example/register","resource":"https://api.example/","revocation_url":"https://as.example/revoke","sinks":[{"format":"header","path":"/tmp/t","type":"file"},{"path":"/x/.env","type":"dotenv","variable":"JIRA_TOKEN"}],"token_endpoint_auth":"client_secret_post","token_url":"https://as.example/token","userinfo_url":"https://as.example/userinfo"})",
            // what a PUT may store empty, and a fractional rate
            R"({"authorize_params":{},"pkce":"off","policy":{"allow":[],"rate_per_minute":0.5,"read_only":false},"scopes":[],"sinks":[],"token_endpoint_auth":"none"})",
            R"({"policy":{}})",
            // MCP after discovery and dynamic registration, with a step-up pending
            R"({"authorization_server":"https://as2.example","client_id":"dyn-1","client_id_metadata_document":"https://app.example/client.json","client_registered":true,"client_registered_for":"https://as2.example","discovered":{"at":1700000000,"authorization_endpoint":"https://as2.example/authorize","authorization_response_iss_parameter_supported":true,"authorization_server":"https://as2.example","authorization_servers":["https://as1.example","https://as2.example"],"client_id_metadata_document_supported":true,"code_challenge_methods_supported":["S256"],"device_authorization_endpoint":"https://as2.example/device","grant_types_supported":["authorization_code","refresh_token"],"issuer":"https://as2.example","registration_endpoint":"https://as2.example/register","resource":"https://mcp.example/mcp","resource_scopes":["mcp:read"],"revocation_endpoint":"https://as2.example/revoke","scopes_supported":[],"token_endpoint":"https://as2.example/token","token_endpoint_auth_methods_supported":["none","client_secret_basic"],"userinfo_endpoint":"https://as2.example/userinfo"},"mcp_server":"https://mcp.example/mcp","redirect_uri":"http://127.0.0.1:8976/callback","step_up_scopes":["mcp:read","mcp:write"],"token_endpoint_auth":"none"})",
            // a registration at an authorization server without an issuer
            R"({"client_id":"dyn-2","client_registered":true,"client_registered_for":"","registration_url":"https://as.example/register","token_endpoint_auth":"client_secret_basic"})",
            // discovery at a time 0 (a test clock)
            R"({"discovered":{"at":0,"issuer":"https://as.example","token_endpoint":"https://as.example/token"},"issuer":"https://as.example"})",
            R"({})",
};

}  // namespace

TEST_CASE("every config tokend stores reads back and is written back byte for byte",
          "[store][profile_config]") {
  for (const auto& text : k_stored) {
    INFO(text);
    const Json stored = Json::parse(text);
    auto config = parse_profile_config(stored);
    REQUIRE(config);
    const Json written = *config;
    CHECK(written.dump() == text);
    // And once more: parsing what was written gives the same settings.
    auto again = parse_profile_config(written);
    REQUIRE(again);
    CHECK(*again == *config);
  }
}

TEST_CASE("settings are typed", "[store][profile_config]") {
  auto c = parse_profile_config(Json::parse(k_stored[3]));
  REQUIRE(c);
  CHECK(c->client_id == "cid");
  CHECK(c->token_url == "https://as.example/token");
  CHECK(c->pkce == PkceMode::required);
  CHECK(c->token_endpoint_auth == ClientAuthMethod::client_secret_post);
  CHECK(c->refresh_buffer == 120);
  CHECK_FALSE(c->reuse_window);
  REQUIRE(c->authorize_params);
  CHECK(c->authorize_params->at("access_type") == "offline");
  REQUIRE(c->policy);
  CHECK(c->policy->read_only == true);
  CHECK(c->policy->rate_per_minute == 2.0);
  CHECK(c->policy->deny == std::vector<std::string>{"oauth/userinfo"});
  REQUIRE(c->sinks);
  REQUIRE(c->sinks->size() == 2);
  CHECK((*c->sinks)[0].type == Sink::Type::file);
  CHECK((*c->sinks)[0].format == Sink::Format::header);
  CHECK((*c->sinks)[1].type == Sink::Type::dotenv);
  CHECK((*c->sinks)[1].variable == "JIRA_TOKEN");
  CHECK(c->other.empty());

  auto mcp = parse_profile_config(Json::parse(k_stored[6]));
  REQUIRE(mcp);
  CHECK(mcp->client_registered);
  CHECK(mcp->client_registered_for == "https://as2.example");
  REQUIRE(mcp->discovered);
  CHECK(mcp->discovered->issuer == "https://as2.example");
  CHECK(mcp->discovered->client_id_metadata_document_supported);
  CHECK(mcp->discovered->scopes_supported == std::vector<std::string>{});
  CHECK(mcp->discovered->authorization_servers.size() == 2);
  CHECK(mcp->discovered->at == 1700000000);
  CHECK(mcp->step_up_scopes == std::vector<std::string>{"mcp:read", "mcp:write"});

  // Nothing set: the defaults every reader relies on.
  auto empty = parse_profile_config(Json::object());
  REQUIRE(empty);
  CHECK(*empty == ProfileConfig{});
  CHECK(Json(ProfileConfig{}).dump() == "{}");
}

TEST_CASE("unknown keys are kept and written back, at every level", "[store][profile_config]") {
  const std::string text =
      R"({"discovered":{"introspection_endpoint":"https://as.example/i","issuer":"https://as.example"},"future":{"x":[1,2]},"note":"kept","policy":{"methods":["GET"],"read_only":true},"sinks":[{"mode":"0640","path":"/tmp/t","type":"file","format":"raw"}],"site":"https://x"})";
  auto c = parse_profile_config(Json::parse(text));
  REQUIRE(c);
  CHECK(c->other == Json::parse(R"({"future":{"x":[1,2]},"note":"kept"})"));
  CHECK(c->policy->other == Json::parse(R"({"methods":["GET"]})"));
  CHECK(c->discovered->other.contains("introspection_endpoint"));
  CHECK((*c->sinks)[0].other == Json::parse(R"({"mode":"0640"})"));
  CHECK(Json(*c) == Json::parse(text));

  // A field always wins over a stray copy of its key in `other`.
  ProfileConfig set;
  set.site = "https://mine";
  set.other = {{"site", "https://stray"}, {"note", "n"}};
  CHECK(Json(set) == Json::parse(R"({"note":"n","site":"https://mine"})"));
}

TEST_CASE("what reads the same as not set", "[store][profile_config]") {
  // An empty string and a null mean "not set" to every reader, as before.
  auto c = parse_profile_config(
      Json::parse(R"({"client_id":"","site":null,"pkce":null,"scopes":null,"policy":null})"));
  REQUIRE(c);
  CHECK(*c == ProfileConfig{});
  CHECK(Json(*c).dump() == "{}");
  // Flags are stored only when true.
  auto f = parse_profile_config(Json::parse(R"({"client_registered":false})"));
  REQUIRE(f);
  CHECK_FALSE(f->client_registered);
  CHECK(Json(*f).dump() == "{}");
}

TEST_CASE("a client authentication method tokend does not implement reads as Basic",
          "[store][profile_config]") {
  // What a dynamic registration answered was once stored as it came; the
  // token request has always sent anything but post and none as Basic.
  for (const char* method : {"private_key_jwt", "client_secret_jwt", "tls_client_auth"}) {
    INFO(method);
    auto c = parse_profile_config(Json{{"token_endpoint_auth", method}});
    REQUIRE(c);
    CHECK(c->token_endpoint_auth == ClientAuthMethod::client_secret_basic);
  }
  CHECK(parse_client_auth_method("client_secret_post") == ClientAuthMethod::client_secret_post);
  CHECK_FALSE(parse_client_auth_method("private_key_jwt"));
  CHECK(parse_pkce_mode("S256") == PkceMode::s256);
  CHECK_FALSE(parse_pkce_mode("s256"));
  CHECK(to_string(PkceMode::off) == "off");
}

TEST_CASE("a setting of the wrong shape is refused, naming the key and never its value",
          "[store][profile_config]") {
  // The value is made to look like a secret: it must not reach the message.
  const std::string v = "s3cr3t-VALUE-1234";
  struct Case {
    Json stored;
    std::string names;  // what the message must name
  };
  const std::vector<Case> cases = {
      {{{"client_id", Json::array({v})}}, "\"client_id\" must be a string"},
      {{{"site", 42}}, "\"site\" must be a string"},
      {{{"scopes", v}}, "\"scopes\" must be a list of strings"},
      {{{"scopes", Json::array({"a", 1})}}, "\"scopes\" must be a list of strings"},
      {{{"step_up_scopes", Json::object()}}, "\"step_up_scopes\" must be a list of strings"},
      {{{"refresh_buffer", v}}, "\"refresh_buffer\" must be an integer"},
      {{{"refresh_buffer", 1.5}}, "\"refresh_buffer\" must be an integer"},
      {{{"reuse_window", 18446744073709551615ULL}}, "\"reuse_window\" must be an integer"},
      {{{"client_registered", v}}, "\"client_registered\" must be true or false"},
      {{{"client_registered_for", 1}}, "\"client_registered_for\" must be a string"},
      {{{"authorize_params", Json::array({v})}},
       "\"authorize_params\" must be an object of strings"},
      {{{"authorize_params", {{"x", 1}}}}, "\"authorize_params\" must be an object of strings"},
      {{{"pkce", v}}, "\"pkce\" must be one of S256, required, off"},
      {{{"pkce", true}}, "\"pkce\" must be one of"},
      {{{"token_endpoint_auth", 3}}, "\"token_endpoint_auth\" must be a string"},
      {{{"policy", v}}, "\"policy\" must be an object"},
      {{{"policy", {{"read_only", v}}}}, "\"policy.read_only\" must be true or false"},
      {{{"policy", {{"allow", v}}}}, "\"policy.allow\" must be a list of strings"},
      {{{"policy", {{"rate_per_minute", v}}}}, "\"policy.rate_per_minute\" must be a number"},
      {{{"sinks", Json::array({"file"})}}, "\"sinks[0]\" must be an object"},
      {{{"sinks", v}}, "\"sinks\" must be a list of sinks"},
      {{{"sinks", Json::array({{{"type", v}, {"path", "/x"}}})}},
       "\"sinks[0].type\" must be one of file, dotenv"},
      {{{"sinks", Json::array({{{"path", "/x"}}})}}, "\"sinks[0].type\" must be file or dotenv"},
      {{{"sinks", Json::array({{{"type", "file"}, {"path", "/x"}},
                               {{"type", "file"}, {"path", "/y"}, {"format", v}}})}},
       "\"sinks[1].format\" must be one of raw, header, json"},
      {{{"sinks", Json::array({{{"type", "dotenv"}, {"path", Json::array({v})}}})}},
       "\"sinks[0].path\" must be a string"},
      {{{"discovered", v}}, "\"discovered\" must be an object"},
      {{{"discovered", {{"token_endpoint", Json::array({v})}}}},
       "\"discovered.token_endpoint\" must be a string"},
      {{{"discovered", {{"scopes_supported", v}}}},
       "\"discovered.scopes_supported\" must be a list of strings"},
      {{{"discovered", {{"client_id_metadata_document_supported", v}}}},
       "\"discovered.client_id_metadata_document_supported\" must be true or false"},
      {{{"discovered", {{"at", v}}}}, "\"discovered.at\" must be an integer"},
  };
  for (const auto& c : cases) {
    INFO(c.stored.dump());
    auto r = parse_profile_config(c.stored);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::invalid_argument);
    CHECK(r.error().message.find(c.names) != std::string::npos);
    CHECK(r.error().message.find(v) == std::string::npos);
  }
  CHECK_FALSE(parse_profile_config(Json::array()));
  CHECK_FALSE(parse_profile_config(Json(v)));
}

TEST_CASE("string settings by their stored names", "[store][profile_config]") {
  ProfileConfig c;
  std::string* site = string_setting(c, "site");
  REQUIRE(site != nullptr);
  *site = "https://x";
  CHECK(c.site == "https://x");
  REQUIRE(string_setting(c, "client_id_metadata_document") != nullptr);
  for (const char* not_plain : {"scopes", "pkce", "policy", "client_registered_for", "secret", ""})
    CHECK(string_setting(c, not_plain) == nullptr);
}

#include "tokens/sinks.hpp"

#include <sys/stat.h>

#include <catch2/catch_test_macros.hpp>
#include <vector>

#include "support/temp_dir.hpp"

using namespace tokend;
using namespace tokend::tokens;

TEST_CASE("dotenv update replaces one line and keeps every other byte", "[refresh][sinks]") {
  struct Case {
    std::string before, after;
  };
  const Case cases[] = {
      {"", "JIRA_OAUTH_ACCESS_TOKEN=new\n"},
      {"A=1\n", "A=1\nJIRA_OAUTH_ACCESS_TOKEN=new\n"},
      {"A=1", "A=1\nJIRA_OAUTH_ACCESS_TOKEN=new\n"},
      {"# comment\nJIRA_OAUTH_ACCESS_TOKEN=old\nB=\"x y\"\n",
       "# comment\nJIRA_OAUTH_ACCESS_TOKEN=new\nB=\"x y\"\n"},
      {"export JIRA_OAUTH_ACCESS_TOKEN='old'\n", "export JIRA_OAUTH_ACCESS_TOKEN=new\n"},
      {"JIRA_OAUTH_ACCESS_TOKEN_EXTRA=keep\n",
       "JIRA_OAUTH_ACCESS_TOKEN_EXTRA=keep\nJIRA_OAUTH_ACCESS_TOKEN=new\n"},
      {"A=1\r\nJIRA_OAUTH_ACCESS_TOKEN=old\r\n", "A=1\r\nJIRA_OAUTH_ACCESS_TOKEN=new\n"},
      {"  JIRA_OAUTH_ACCESS_TOKEN = old\nZ=2\n\n", "JIRA_OAUTH_ACCESS_TOKEN=new\nZ=2\n\n"},
  };
  for (const auto& c : cases) {
    INFO(c.before);
    auto r = update_dotenv(c.before, "JIRA_OAUTH_ACCESS_TOKEN", "new");
    REQUIRE(r);
    CHECK(*r == c.after);
  }
  CHECK_FALSE(update_dotenv(std::string("A=1\0\n", 5), "T", "x"));
}

// Issue 13 finding 1: what python-dotenv and `set -a; . ./.env` both read back
// as the value, and nothing that either would run or split into lines.
TEST_CASE("dotenv values are quoted for python-dotenv and the shell alike, line breaks refused",
          "[refresh][sinks]") {
  struct Case {
    std::string value, line;
  };
  const Case quoted[] = {
      {"eyJhbGciOi.J9-_~+/x=", "T=eyJhbGciOi.J9-_~+/x=\n"},
      {"AAA;id>PWNED", "T='AAA;id>PWNED'\n"},
      {"a|b&c<d>e(f)g", "T='a|b&c<d>e(f)g'\n"},
      {"$(id)`id`", "T='$(id)`id`'\n"},
      {"a b#c\"d", "T='a b#c\"d'\n"},
  };
  for (const auto& c : quoted) {
    INFO(c.value);
    auto r = update_dotenv("", "T", c.value);
    REQUIRE(r);
    CHECK(*r == c.line);
  }
  for (const std::string& bad :
       std::vector<std::string>{"a\nLD_PRELOAD=/tmp/x.so", "a\rHTTPS_PROXY=http://evil", "a'b",
                                "a\\b", std::string("a\0b", 3), "a\x1b[2J"}) {
    INFO(bad);
    auto r = update_dotenv("A=1\n", "T", bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::invalid_argument);
    CHECK(r.error().message.find(bad) == std::string::npos);
  }
}

TEST_CASE("sink validation", "[refresh][sinks]") {
  CHECK(validate_sinks(json::Json::parse(R"([{"type":"file","path":"/tmp/t"}])")));
  CHECK(
      (*validate_sinks(json::Json::parse(R"([{"type":"dotenv","path":"/x/.env"}])")))[0].variable ==
      "ACCESS_TOKEN");
  CHECK_FALSE(validate_sinks(json::Json::parse(R"([{"type":"file","path":"relative"}])")));
  CHECK_FALSE(validate_sinks(json::Json::parse(R"([{"type":"socket","path":"/x"}])")));
  CHECK_FALSE(
      validate_sinks(json::Json::parse(R"([{"type":"dotenv","path":"/x","variable":"1BAD"}])")));
  CHECK_FALSE(
      validate_sinks(json::Json::parse(R"([{"type":"file","path":"/x","format":"yaml"}])")));
  CHECK_FALSE(validate_sinks(json::Json::parse(R"({"type":"file"})")));
}

TEST_CASE("write_sinks writes a 0600 file and updates a dotenv file atomically",
          "[refresh][sinks]") {
  test::TempDir t;
  test::write_file_bytes(t / ".env",
                         "# my script\nJIRA_URL=https://x\nJIRA_OAUTH_ACCESS_TOKEN=old\n", 0600);
  store::Profile p;
  p.name = "jira";
  p.config.sinks = *validate_sinks(json::Json::array(
      {{{"type", "file"}, {"path", (t / "token").string()}},
       {{"type", "file"}, {"path", (t / "token.json").string()}, {"format", "json"}},
       {{"type", "dotenv"},
        {"path", (t / ".env").string()},
        {"variable", "JIRA_OAUTH_ACCESS_TOKEN"}}}));
  store::Credential c;
  c.access_token = Secret("at-NEW");
  c.token_type = "Bearer";
  c.expires_at_ms = 1'800'000'000'000;
  REQUIRE(write_sinks(p, c));
  CHECK(test::read_file_bytes(t / "token") == "at-NEW\n");
  CHECK(test::read_file_bytes(t / "token.json").find("\"expires_at\":1800000000") !=
        std::string::npos);
  CHECK(test::read_file_bytes(t / ".env") ==
        "# my script\nJIRA_URL=https://x\nJIRA_OAUTH_ACCESS_TOKEN=at-NEW\n");
  struct stat st{};
  ::stat((t / "token").c_str(), &st);
  CHECK((st.st_mode & 0777) == 0600);

  // A dotenv file we may not read safely is left alone, and the error says so.
  ::chmod((t / ".env").c_str(), 0644);
  const auto before = test::read_file_bytes(t / ".env");
  auto r = write_sinks(p, c);
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("chmod 600") != std::string::npos);
  CHECK(test::read_file_bytes(t / ".env") == before);
}

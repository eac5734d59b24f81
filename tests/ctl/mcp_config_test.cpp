#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch_test_macros.hpp>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "ctl/mcp/config.hpp"
#include "support/env.hpp"
#include "support/temp_dir.hpp"

using tokend::Errc;
using tokend::ctl::bridge_entry;
using tokend::ctl::default_config_path;
using tokend::ctl::exec_entry;
using tokend::ctl::HostOs;
using tokend::ctl::McpClient;
using tokend::ctl::McpServerEntry;
using tokend::ctl::merge_entry;
using tokend::ctl::MergeAction;
using tokend::ctl::parse_mcp_config_args;
using tokend::ctl::render_entry;
using tokend::ctl::write_entry_to_file;
using tokend::test::env_of;
using tokend::test::file_digest;
using tokend::test::read_file_bytes;
using tokend::test::TempDir;
using tokend::test::write_file_bytes;
using Json = nlohmann::json;

namespace {

const std::string k_ctl = "/opt/tokend/bin/tokenctl";

McpServerEntry jira(std::vector<std::pair<std::string, std::string>> env = {}) {
  return bridge_entry("jira", k_ctl, "jira", std::move(env));
}

std::string merged_text(McpClient c, std::string_view existing, const McpServerEntry& e,
                        MergeAction expect) {
  auto r = merge_entry(c, existing, e, false, "F");
  REQUIRE(r);
  CHECK(r->action == expect);
  return r->text;
}

std::size_t count(std::string_view text, std::string_view what) {
  std::size_t n = 0;
  for (auto p = text.find(what); p != std::string_view::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("each client's entry in its own format", "[ctl][mcp_config]") {
  const auto e = jira();
  const Json args = {"mcp", "jira"};
  const Json plain = {{"command", k_ctl}, {"args", args}};
  const Json stdio = {{"type", "stdio"}, {"command", k_ctl}, {"args", args}};
  const std::pair<McpClient, Json> cases[] = {
      {McpClient::claude_code, {{"mcpServers", {{"jira", stdio}}}}},
      {McpClient::claude_desktop, {{"mcpServers", {{"jira", plain}}}}},
      {McpClient::cursor, {{"mcpServers", {{"jira", plain}}}}},
      {McpClient::gemini, {{"mcpServers", {{"jira", plain}}}}},
      {McpClient::vscode, {{"servers", {{"jira", stdio}}}}},
      {McpClient::opencode,
       {{"mcp",
         {{"jira", {{"type", "local"}, {"command", {k_ctl, "mcp", "jira"}}, {"enabled", true}}}}}}},
  };
  for (const auto& [client, expected] : cases) {
    INFO(tokend::ctl::mcp_client_name(client));
    auto text = render_entry(client, e);
    REQUIRE(text);
    CHECK(text->ends_with("\n"));
    CHECK(Json::parse(*text) == expected);
  }
  auto toml = render_entry(McpClient::codex, e);
  REQUIRE(toml);
  CHECK(*toml ==
        "[mcp_servers.jira]\ncommand = \"/opt/tokend/bin/tokenctl\"\nargs = [\"mcp\", \"jira\"]\n");
}

TEST_CASE("a non-default socket goes into each client's environment key", "[ctl][mcp_config]") {
  const auto e = jira({{"TOKEND_SOCKET", "/run/t d/tokend.sock"}});
  const Json env = {{"TOKEND_SOCKET", "/run/t d/tokend.sock"}};
  for (auto c : {McpClient::claude_code, McpClient::claude_desktop, McpClient::cursor,
                 McpClient::gemini, McpClient::vscode}) {
    auto text = render_entry(c, e);
    REQUIRE(text);
    const Json j = Json::parse(*text);
    CHECK(j.begin()->at("jira").at("env") == env);
  }
  auto oc = render_entry(McpClient::opencode, e);
  REQUIRE(oc);
  CHECK(Json::parse(*oc)["mcp"]["jira"]["environment"] == env);
  CHECK_FALSE(Json::parse(*oc)["mcp"]["jira"].contains("env"));
  auto toml = render_entry(McpClient::codex, e);
  REQUIRE(toml);
  CHECK(*toml ==
        "[mcp_servers.jira]\ncommand = \"/opt/tokend/bin/tokenctl\"\nargs = [\"mcp\", \"jira\"]\n\n"
        "[mcp_servers.jira.env]\nTOKEND_SOCKET = \"/run/t d/tokend.sock\"\n");
}

TEST_CASE("a local server wrapped with exec --endpoint", "[ctl][mcp_config]") {
  const auto e = exec_entry("jira-local", k_ctl, "jira", {"--url-env", "JIRA_URL"},
                            {"uvx", "mcp-atlassian"}, {});
  CHECK(e.command == k_ctl);
  CHECK(e.args == std::vector<std::string>{"exec", "jira", "--endpoint", "--url-env", "JIRA_URL",
                                           "--", "uvx", "mcp-atlassian"});
  const auto given = exec_entry("x", k_ctl, "jira", {"--endpoint"}, {"srv"}, {});
  CHECK(given.args == std::vector<std::string>{"exec", "jira", "--endpoint", "--", "srv"});
  auto oc = render_entry(McpClient::opencode, e);
  REQUIRE(oc);
  CHECK(Json::parse(*oc)["mcp"]["jira-local"]["command"] ==
        Json({k_ctl, "exec", "jira", "--endpoint", "--url-env", "JIRA_URL", "--", "uvx",
              "mcp-atlassian"}));
}

TEST_CASE("TOML strings are escaped", "[ctl][mcp_config]") {
  const auto e = exec_entry("w", k_ctl, "p", {}, {"sh", "-c", "echo \"a\\b\"\n\t\x01\x7f é"}, {});
  auto toml = render_entry(McpClient::codex, e);
  REQUIRE(toml);
  CHECK(toml->find(R"("echo \"a\\b\"\n\t\u0001\u007F é")") != std::string::npos);
}

TEST_CASE("strings that are not UTF-8 are refused", "[ctl][mcp_config]") {
  const auto e = exec_entry("w", k_ctl, "p", {}, {"srv", "\xff\xfe"}, {});
  for (auto c : {McpClient::codex, McpClient::cursor}) {
    auto r = render_entry(c, e);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::invalid_argument);
    auto m = merge_entry(c, "", e, false, "F");
    REQUIRE_FALSE(m);
    CHECK(m.error().code == Errc::invalid_argument);
  }
}

TEST_CASE("JSON merge: other keys and entries keep their bytes", "[ctl][mcp_config]") {
  const std::string before =
      "{\n"
      "    \"numStartups\": 3,\n"
      "    \"big\": 123456789012345678901234567890,\n"
      "    \"f\": 1.10,\n"
      "    \"mcpServers\": {\n"
      "        \"other\": {\"command\": \"npx\", \"args\": [\"-y\", \"x\"]}\n"
      "    },\n"
      "    \"projects\": {\"/p\": {\"mcpServers\": {}}}\n"
      "}\n";
  const std::string after = merged_text(McpClient::claude_code, before, jira(), MergeAction::added);
  const std::string added =
      ",\n"
      "        \"jira\": {\n"
      "            \"type\": \"stdio\",\n"
      "            \"command\": \"/opt/tokend/bin/tokenctl\",\n"
      "            \"args\": [\n"
      "                \"mcp\",\n"
      "                \"jira\"\n"
      "            ]\n"
      "        }";
  const auto at = before.find("[\"-y\", \"x\"]}") + 12;
  CHECK(after == before.substr(0, at) + added + before.substr(at));

  SECTION("running again changes nothing") {
    CHECK(merged_text(McpClient::claude_code, after, jira(), MergeAction::unchanged) == after);
  }
  SECTION("a changed entry is replaced in place, the rest kept") {
    const std::string again = merged_text(McpClient::claude_code, after,
                                          jira({{"TOKEND_SOCKET", "/s"}}), MergeAction::replaced);
    CHECK(again.starts_with(before.substr(0, at) + ",\n        \"jira\": {"));
    CHECK(again.ends_with("    },\n    \"projects\": {\"/p\": {\"mcpServers\": {}}}\n}\n"));
    CHECK(Json::parse(again)["mcpServers"]["jira"]["env"] == Json({{"TOKEND_SOCKET", "/s"}}));
    CHECK(Json::parse(again)["mcpServers"]["other"] == Json::parse(before)["mcpServers"]["other"]);
    CHECK(count(again, "\"jira\"") == 2);  // the key and the profile in args
  }
}

TEST_CASE("JSON merge: missing container, empty objects, one-line files, CRLF, new files",
          "[ctl][mcp_config]") {
  CHECK(merged_text(McpClient::cursor, "{\n  \"a\": 1\n}\n", jira(), MergeAction::added) ==
        "{\n  \"a\": 1,\n  \"mcpServers\": {\n    \"jira\": {\n      \"command\": "
        "\"/opt/tokend/bin/tokenctl\",\n"
        "      \"args\": [\n        \"mcp\",\n        \"jira\"\n      ]\n    }\n  }\n}\n");
  CHECK(merged_text(McpClient::vscode, "{\"inputs\":[]}", jira(), MergeAction::added) ==
        "{\"inputs\":[], \"servers\": "
        "{\"jira\":{\"type\":\"stdio\",\"command\":\"/opt/tokend/bin/tokenctl\","
        "\"args\":[\"mcp\",\"jira\"]}}}");
  CHECK(
      merged_text(McpClient::gemini, "{\n\t\"mcpServers\": {}\n}\n", jira(), MergeAction::added) ==
      "{\n\t\"mcpServers\": {\n\t\t\"jira\": {\n\t\t\t\"command\": \"/opt/tokend/bin/tokenctl\",\n"
      "\t\t\t\"args\": [\n\t\t\t\t\"mcp\",\n\t\t\t\t\"jira\"\n\t\t\t]\n\t\t}\n\t}\n}\n");
  CHECK(
      merged_text(McpClient::cursor, "{}", jira(), MergeAction::added) ==
      "{\n  \"mcpServers\": {\n    \"jira\": {\n      \"command\": \"/opt/tokend/bin/tokenctl\",\n"
      "      \"args\": [\n        \"mcp\",\n        \"jira\"\n      ]\n    }\n  }\n}");
  const std::string crlf =
      merged_text(McpClient::cursor, "{\r\n  \"a\": 1\r\n}\r\n", jira(), MergeAction::added);
  CHECK(count(crlf, "\n") == count(crlf, "\r\n"));
  CHECK(Json::parse(crlf)["mcpServers"]["jira"]["args"] == Json({"mcp", "jira"}));
  for (std::string_view blank : {"", "  \n"}) {
    const std::string fresh = merged_text(McpClient::opencode, blank, jira(), MergeAction::added);
    CHECK(fresh == *render_entry(McpClient::opencode, jira()));
  }
}

TEST_CASE("JSON merge: an entry of that name that is not tokenctl's needs force",
          "[ctl][mcp_config]") {
  const std::string before =
      R"({"mcpServers": {"jira": {"command": "npx", "args": ["mcp-atlassian"]}}})";
  auto r = merge_entry(McpClient::claude_desktop, before, jira(), false, "F");
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::conflict);
  CHECK(r.error().message.find("runs npx, not tokenctl") != std::string::npos);
  CHECK(r.error().message.find("--force") != std::string::npos);
  auto forced = merge_entry(McpClient::claude_desktop, before, jira(), true, "F");
  REQUIRE(forced);
  CHECK(forced->action == MergeAction::replaced);
  CHECK(Json::parse(forced->text)["mcpServers"]["jira"]["command"] == k_ctl);
  // Another tokenctl (moved, or a different build) is ours: replaced without force.
  const std::string moved =
      R"({"mcpServers": {"jira": {"command": "/usr/bin/tokenctl", "args": ["mcp", "old"]}}})";
  CHECK(merged_text(McpClient::claude_desktop, moved, jira(), MergeAction::replaced)
            .find("/usr/bin") == std::string::npos);
}

TEST_CASE("JSON merge: files it cannot keep are refused with where and what to do",
          "[ctl][mcp_config]") {
  struct Bad {
    const char* what;
    std::string text;
    const char* says;
  };
  const Bad cases[] = {
      {"comments", "{\n  // mine\n  \"a\": 1\n}\n", "has comments (line 2, column 3)"},
      {"block comment", "{ /* x */ \"a\": 1 }", "has comments (line 1, column 3)"},
      {"trailing comma", "{\n  \"a\": 1,\n}\n", "is not valid JSON (line 3, column 1)"},
      {"truncated", "{\"mcpServers\": {\"x\": ", "is not valid JSON"},
      {"an array", "[1, 2]", "holds a JSON array, not an object"},
      {"container not an object", "{\"mcpServers\": []}",
       "\"mcpServers\" is a JSON array, not an object"},
      {"container twice", "{\"mcpServers\": {}, \"mcpServers\": {}}", "has \"mcpServers\" 2 times"},
      {"entry twice", "{\"mcpServers\": {\"jira\": {}, \"jira\": {}}}",
       "has the entry \"jira\" 2 times"},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    auto r = merge_entry(McpClient::cursor, c.text, jira(), true, "/home/u/.cursor/mcp.json");
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::corrupt);
    CHECK(r.error().message.find(c.says) != std::string::npos);
    CHECK(r.error().message.find("nothing was changed") != std::string::npos);
  }
  // The message never quotes the file (it may hold secrets).
  auto r = merge_entry(McpClient::cursor, "{\"token\": \"sekrit-MARKER", jira(), false, "F");
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("MARKER") == std::string::npos);
}

TEST_CASE("TOML merge: the server's table is replaced, not duplicated, the rest byte for byte",
          "[ctl][mcp_config]") {
  const std::string head =
      "model = \"o3\"   # comment\n"
      "notes = \"\"\"\n[mcp_servers.jira]\nnot a table\"\"\"\n"
      "\n"
      "[mcp_servers.github]\n"
      "command = \"npx\"\n"
      "args = [\n  \"-y\",   # ] in a comment\n  \"gh\",\n]\n"
      "env = { \"TOKEN\" = \"x\" }\n"
      "\n"
      "# the jira server\n";
  const std::string old_table =
      "[ mcp_servers . \"jira\" ]\n"
      "command = '/old/bin/tokenctl'\n"
      "args = [\"mcp\", \"jira\"]\n"
      "\n"
      "[mcp_servers.jira.env]\n"
      "TOKEND_SOCKET = \"/old.sock\"\n";
  const std::string tail =
      "\n# next one\n"
      "[profiles.x]\n"
      "when = 1979-05-27 07:32:00Z\n";
  const std::string before = head + old_table + tail;
  const auto e = jira({{"TOKEND_SOCKET", "/new.sock"}});
  const std::string after = merged_text(McpClient::codex, before, e, MergeAction::replaced);
  CHECK(after == head + *render_entry(McpClient::codex, e) + tail);
  CHECK(count(after, "[mcp_servers.jira]") == 2);  // ours and the one inside the multi-line string
  CHECK(count(after, "[mcp_servers.jira.env]") == 1);
  CHECK(merged_text(McpClient::codex, after, e, MergeAction::unchanged) == after);

  SECTION("without env now: the env table goes") {
    const std::string plain = merged_text(McpClient::codex, after, jira(), MergeAction::replaced);
    CHECK(plain == head + *render_entry(McpClient::codex, jira()) + tail);
  }
  SECTION("an env table elsewhere is removed, the table replaced where it was") {
    const std::string apart = head + "[mcp_servers.jira.env]\nA = \"1\"\n\n[other]\nx = 1\n\n" +
                              "[mcp_servers.jira]\ncommand = \"tokenctl\"\nargs = []\n" + tail;
    CHECK(merged_text(McpClient::codex, apart, jira(), MergeAction::replaced) ==
          head + "\n[other]\nx = 1\n\n" + *render_entry(McpClient::codex, jira()) + tail);
  }
  SECTION("a new server is appended after a blank line") {
    const std::string added = merged_text(
        McpClient::codex, before, bridge_entry("conf", k_ctl, "conf", {}), MergeAction::added);
    CHECK(added == before +
                       "\n[mcp_servers.conf]\ncommand = \"/opt/tokend/bin/tokenctl\"\nargs = "
                       "[\"mcp\", \"conf\"]\n");
  }
}

TEST_CASE("TOML merge: appending, CRLF, a missing final newline", "[ctl][mcp_config]") {
  CHECK(merged_text(McpClient::codex, "model = \"o3\"", jira(), MergeAction::added) ==
        "model = \"o3\"\n\n" + *render_entry(McpClient::codex, jira()));
  CHECK(merged_text(McpClient::codex, "model = \"o3\"\n\n", jira(), MergeAction::added) ==
        "model = \"o3\"\n\n" + *render_entry(McpClient::codex, jira()));
  CHECK(merged_text(McpClient::codex, "a = 1\r\n", jira(), MergeAction::added) ==
        "a = 1\r\n\r\n[mcp_servers.jira]\r\ncommand = \"/opt/tokend/bin/tokenctl\"\r\nargs = "
        "[\"mcp\", \"jira\"]\r\n");
  CHECK(merged_text(McpClient::codex, "", jira(), MergeAction::added) ==
        *render_entry(McpClient::codex, jira()));
}

TEST_CASE("TOML merge: forms it does not edit and files it cannot read are refused",
          "[ctl][mcp_config]") {
  struct Bad {
    const char* what;
    std::string text;
    Errc code;
    const char* says;
  };
  const Bad cases[] = {
      {"inline table under [mcp_servers]", "[mcp_servers]\njira = { command = \"x\" }\n",
       Errc::corrupt, "with dotted keys or an inline table (line 2, column 8)"},
      {"dotted keys at the root", "mcp_servers.jira.command = \"x\"\n", Errc::corrupt,
       "with dotted keys"},
      {"mcp_servers inline", "mcp_servers = {}\n", Errc::corrupt, "mcp_servers as an inline table"},
      {"array of tables", "[[mcp_servers.jira]]\n", Errc::corrupt, "an array of tables"},
      {"table twice", "[mcp_servers.jira]\ncommand = \"tokenctl\"\n[mcp_servers.jira]\n",
       Errc::corrupt, "twice"},
      {"unterminated string", "a = \"x\n", Errc::corrupt,
       "line 1, column 7: a string is not closed"},
      {"unterminated multi-line string", "a = \"\"\"x\n", Errc::corrupt,
       "a multi-line string is not closed"},
      {"unclosed array", "a = [1,\n", Errc::corrupt, "is not TOML that tokenctl can read"},
      {"garbage after a value", "a = 1 2\n", Errc::corrupt, "expected the end of the line"},
      {"a header not closed", "[mcp_servers.jira\n", Errc::corrupt, "not closed with ]"},
      {"someone else's server", "[mcp_servers.jira]\ncommand = \"npx\"\n", Errc::conflict,
       "runs npx, not tokenctl"},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    auto r = merge_entry(McpClient::codex, c.text, jira(), false, "/home/u/.codex/config.toml");
    REQUIRE_FALSE(r);
    CHECK(r.error().code == c.code);
    CHECK(r.error().message.find(c.says) != std::string::npos);
    CHECK(r.error().message.find("nothing was changed") != std::string::npos);
  }
  auto forced =
      merge_entry(McpClient::codex, "[mcp_servers.jira]\ncommand = \"npx\"\n", jira(), true, "F");
  REQUIRE(forced);
  CHECK(forced->text == *render_entry(McpClient::codex, jira()));
}

TEST_CASE("write: backup, mode kept, atomic, idempotent", "[ctl][mcp_config]") {
  TempDir dir;
  const auto file = dir / "mcp.json";
  const std::string before = "{\n  \"mcpServers\": {}\n}\n";
  write_file_bytes(file, before, 0640);
  const std::time_t now = 1'800'000'000;
  auto r = write_entry_to_file(McpClient::cursor, file, jira(), false, now);
  REQUIRE(r);
  CHECK(r->action == MergeAction::added);
  REQUIRE(r->backup);
  CHECK(r->backup->parent_path() == dir.path());
  CHECK(r->backup->filename().string().starts_with("mcp.json.bak-20"));
  CHECK(read_file_bytes(*r->backup) == before);
  struct stat st{};
  REQUIRE(::stat(file.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0640);
  REQUIRE(::stat(r->backup->c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0640);
  const std::string after = read_file_bytes(file);
  CHECK(Json::parse(after)["mcpServers"]["jira"]["command"] == k_ctl);

  auto again = write_entry_to_file(McpClient::cursor, file, jira(), false, now);
  REQUIRE(again);
  CHECK(again->action == MergeAction::unchanged);
  CHECK_FALSE(again->backup);
  CHECK(read_file_bytes(file) == after);

  auto changed =
      write_entry_to_file(McpClient::cursor, file, jira({{"TOKEND_SOCKET", "/s"}}), false, now);
  REQUIRE(changed);
  REQUIRE(changed->backup);
  CHECK(*changed->backup != *r->backup);  // same second: a second name, the first backup kept
  CHECK(read_file_bytes(*changed->backup) == after);
  CHECK(read_file_bytes(*r->backup) == before);
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& f : std::filesystem::directory_iterator(dir.path())) ++files;
  CHECK(files == 3);  // no temporary file left behind
}

TEST_CASE("write: a new file is 0600 in new 0700 directories", "[ctl][mcp_config]") {
  TempDir dir;
  const auto file = dir.path() / "a" / "b" / "config.toml";
  auto r = write_entry_to_file(McpClient::codex, file, jira(), false, 0);
  REQUIRE(r);
  CHECK(r->action == MergeAction::added);
  CHECK_FALSE(r->backup);
  CHECK(read_file_bytes(file) == *render_entry(McpClient::codex, jira()));
  struct stat st{};
  REQUIRE(::stat(file.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);
  REQUIRE(::stat((dir.path() / "a").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0700);
}

TEST_CASE("write: a file that does not parse is left alone, no backup made", "[ctl][mcp_config]") {
  TempDir dir;
  const auto file = dir / "settings.json";
  write_file_bytes(file, "{\n  // comment\n  \"a\": 1\n}\n", 0644);
  const auto digest = file_digest(file);
  auto r = write_entry_to_file(McpClient::gemini, file, jira(), false, 0);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::corrupt);
  CHECK(file_digest(file) == digest);
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& f : std::filesystem::directory_iterator(dir.path())) ++files;
  CHECK(files == 1);
}

TEST_CASE("write: a symlinked config file stays a link, its target is written",
          "[ctl][mcp_config]") {
  TempDir dir;
  const auto target = dir / "dotfiles-mcp.json";
  const auto link = dir / "mcp.json";
  write_file_bytes(target, "{}", 0600);
  std::filesystem::create_symlink(target, link);
  auto r = write_entry_to_file(McpClient::cursor, link, jira(), false, 0);
  REQUIRE(r);
  CHECK(r->file == std::filesystem::canonical(target));
  CHECK(std::filesystem::is_symlink(link));
  CHECK(Json::parse(read_file_bytes(target))["mcpServers"].contains("jira"));
}

TEST_CASE("default config files per client and OS", "[ctl][mcp_config]") {
  const auto env = env_of({{"HOME", "/home/u"}});
  const auto xdg = env_of({{"HOME", "/home/u"}, {"XDG_CONFIG_HOME", "/x"}, {"CODEX_HOME", "/c"}});
  auto none = [](const std::filesystem::path&) { return false; };
  using P = std::filesystem::path;
  CHECK(default_config_path(McpClient::claude_code, HostOs::linux_like, env, none) ==
        P("/home/u/.claude.json"));
  CHECK(default_config_path(McpClient::claude_desktop, HostOs::linux_like, env, none) ==
        P("/home/u/.config/Claude/claude_desktop_config.json"));
  CHECK(default_config_path(McpClient::claude_desktop, HostOs::linux_like, xdg, none) ==
        P("/x/Claude/claude_desktop_config.json"));
  CHECK(default_config_path(McpClient::claude_desktop, HostOs::macos, env, none) ==
        P("/home/u/Library/Application Support/Claude/claude_desktop_config.json"));
  CHECK(default_config_path(McpClient::codex, HostOs::linux_like, env, none) ==
        P("/home/u/.codex/config.toml"));
  CHECK(default_config_path(McpClient::codex, HostOs::linux_like, xdg, none) ==
        P("/c/config.toml"));
  CHECK(default_config_path(McpClient::cursor, HostOs::macos, env, none) ==
        P("/home/u/.cursor/mcp.json"));
  CHECK(default_config_path(McpClient::vscode, HostOs::linux_like, env, none) ==
        P("/home/u/.config/Code/User/mcp.json"));
  CHECK(default_config_path(McpClient::vscode, HostOs::macos, env, none) ==
        P("/home/u/Library/Application Support/Code/User/mcp.json"));
  CHECK(default_config_path(McpClient::gemini, HostOs::linux_like, env, none) ==
        P("/home/u/.gemini/settings.json"));
  CHECK(default_config_path(McpClient::opencode, HostOs::macos, env, none) ==
        P("/home/u/.config/opencode/opencode.json"));
  auto only_jsonc = [](const std::filesystem::path& p) { return p.extension() == ".jsonc"; };
  CHECK(default_config_path(McpClient::opencode, HostOs::linux_like, env, only_jsonc) ==
        P("/home/u/.config/opencode/opencode.jsonc"));
}

TEST_CASE("mcp config arguments", "[ctl][mcp_config]") {
  using V = std::vector<std::string>;
  auto ok = parse_mcp_config_args(
      V{"jira.prod", "--client", "codex", "--name=j", "--write", "--file", "/f"});
  REQUIRE(ok);
  CHECK(ok->profile == "jira.prod");
  CHECK(ok->client == McpClient::codex);
  CHECK(ok->name == "j");
  CHECK(ok->write);
  CHECK(ok->file == std::filesystem::path("/f"));
  CHECK(ok->command.empty());

  auto wrap = parse_mcp_config_args(V{"jira", "--client=cursor", "--url-env", "JIRA_URL", "--env",
                                      "T", "--", "uvx", "mcp-atlassian", "--flag"});
  REQUIRE(wrap);
  CHECK(wrap->exec_options == V{"--url-env", "JIRA_URL", "--env", "T"});
  CHECK(wrap->command == V{"uvx", "mcp-atlassian", "--flag"});

  CHECK(parse_mcp_config_args(V{"jira", "-h"})->help);

  struct Bad {
    V args;
    const char* says;
  };
  const Bad bad[] = {
      {{"--client", "codex"}, "missing PROFILE"},
      {{"jira"}, "missing --client"},
      {{"jira", "--client", "emacs"}, "not a client tokenctl knows"},
      {{"jira", "--client"}, "--client needs a value"},
      {{"jira", "--client", "codex", "--client", "cursor"}, "twice"},
      {{"jira", "--client", "codex", "--name", "a.b"}, "entry name 'a.b'"},
      {{"jira", "--client", "codex", "--file", "/f"}, "--file goes with --write"},
      {{"jira", "--client", "codex", "--force"}, "--force goes with --write"},
      {{"jira", "--client", "codex", "--wirte"}, "unexpected '--wirte'"},
      {{"jira", "--client", "codex", "extra"}, "unexpected 'extra'"},
      {{"--url-env", "X", "jira", "--client", "codex", "--", "srv"}, "PROFILE comes before"},
      {{"jira", "--client", "codex", "--"}, "no command after --"},
      {{"jira", "--client", "codex", "--", "--url-env"}, "is not a command"},
      {{"../x", "--client", "codex"}, "profile name"},
  };
  for (const auto& b : bad) {
    INFO(b.args.front() << " ... " << b.says);
    auto r = parse_mcp_config_args(b.args);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::invalid_argument);
    CHECK(r.error().message.find(b.says) != std::string::npos);
  }
}

#include "ctl/dotenv.hpp"

#include <catch2/catch_test_macros.hpp>
#include <string>

#include "support/temp_dir.hpp"

using tokend::Errc;
using tokend::ctl::parse_dotenv;
using tokend::ctl::read_dotenv_file;

namespace {

struct ValueCase {
  const char* rule;
  std::string text;
  const char* key;
  std::string expected;
};

}  // namespace

TEST_CASE("dotenv values, rule by rule", "[ctl][dotenv]") {
  const ValueCase cases[] = {
      {"plain", "KEY=value\n", "KEY", "value"},
      {"no final newline", "KEY=value", "KEY", "value"},
      {"export prefix", "export KEY=value\n", "KEY", "value"},
      {"export prefix with tabs", "export\tKEY=value\n", "KEY", "value"},
      {"a key named like the prefix", "export=1\n", "export", "1"},
      {"spaces around =", "KEY = value\n", "KEY", "value"},
      {"indented line", "   KEY=value\n", "KEY", "value"},
      {"unquoted value trimmed", "KEY=   value with spaces   \n", "KEY", "value with spaces"},
      {"inline comment after a space", "KEY=value # a comment\n", "KEY", "value"},
      {"inline comment after a tab", "KEY=value\t# a comment\n", "KEY", "value"},
      {"# inside an unquoted value", "KEY=a#b\n", "KEY", "a#b"},
      {"# right after =", "KEY=#abc\n", "KEY", "#abc"},
      {"only a comment after =", "KEY= # nothing here\n", "KEY", ""},
      {"empty value", "KEY=\n", "KEY", ""},
      {"= inside the value", "KEY=a=b==\n", "KEY", "a=b=="},
      {"single quotes are literal", R"(KEY='a $X \n "b" # c')", "KEY", R"(a $X \n "b" # c)"},
      {"python-dotenv's \\' in single quotes", R"(KEY='it\'s')", "KEY", "it's"},
      {"python-dotenv's \\\\ in single quotes", R"(KEY='a\\b')", "KEY", R"(a\b)"},
      {"other backslashes in single quotes stay", R"(KEY='a\b')", "KEY", R"(a\b)"},
      {"double quotes: \\n", R"(KEY="a\nb")", "KEY", "a\nb"},
      {"double quotes: \\\"", R"(KEY="say \"hi\"")", "KEY", "say \"hi\""},
      {"double quotes: \\\\", R"(KEY="a\\b")", "KEY", R"(a\b)"},
      {"double quotes: \\t", R"(KEY="a\tb")", "KEY", "a\tb"},
      {"double quotes: unknown escape kept", R"(KEY="a\xb")", "KEY", R"(a\xb)"},
      {"double quotes keep # and spaces", R"(KEY=" a # b ")", "KEY", " a # b "},
      {"comment after a quoted value", "KEY='v' # note\n", "KEY", "v"},
      {"spaces after a quoted value", "KEY=\"v\"   \n", "KEY", "v"},
      {"multi-line double-quoted value", "KEY=\"line 1\nline 2\"\nNEXT=x\n", "KEY",
       "line 1\nline 2"},
      {"line after a multi-line value", "KEY=\"line 1\nline 2\"\nNEXT=x\n", "NEXT", "x"},
      {"shell-quoted quote (tokend's dotenv sink)", R"(KEY='it'\''s')", "KEY", "it's"},
      {"no interpolation", "A=1\nKEY=${A}\n", "KEY", "${A}"},
      {"duplicate key: the last wins", "KEY=first\nKEY=second\n", "KEY", "second"},
      {"comments and blank lines skipped", "# header\n\n   \n\t\nKEY=v\n# KEY=commented\n", "KEY",
       "v"},
      {"key with dots and dashes", "my.key-1=v\n", "my.key-1", "v"},
      {"CRLF, unquoted", "KEY=value\r\nNEXT=x\r\n", "KEY", "value"},
      {"CRLF, quoted", "KEY='value'\r\nNEXT=x\r\n", "KEY", "value"},
      {"CRLF, inline comment", "KEY=value # c\r\n", "KEY", "value"},
      {"CRLF, last line", "A=1\r\nKEY=v\r\n", "KEY", "v"},
      {"UTF-8 byte order mark", "\xEF\xBB\xBFKEY=v\n", "KEY", "v"},
  };
  for (const auto& c : cases) {
    INFO(c.rule);
    auto r = parse_dotenv(c.text, ".env");
    REQUIRE(r.has_value());
    const auto it = r->find(c.key);
    REQUIRE(it != r->end());
    CHECK(std::string(it->second.reveal()) == c.expected);
  }
}

TEST_CASE("dotenv: a file exactly as python-dotenv's set_key writes it", "[ctl][dotenv]") {
  // Written by python-dotenv 1.2.2: set_key() for each variable (the client id
  // twice, so it was rewritten in place), then set_key(..., export=True).
  const std::string file =
      "JIRA_OAUTH_CLIENT_ID='AbCdEf456'\n"
      "JIRA_OAUTH_CLIENT_SECRET='ATOA-s3cr3t/+=x'\n"
      "JIRA_OAUTH_REDIRECT_URI='http://localhost:8080/callback'\n"
      "JIRA_OAUTH_ACCESS_TOKEN='eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3OTAwMDAwMDB9.c2ln'\n"
      "JIRA_OAUTH_REFRESH_TOKEN='it\\'s a #token'\n"
      "export EXPORTED='v'\n";
  auto r = parse_dotenv(file, ".env");
  REQUIRE(r.has_value());
  CHECK(r->size() == 6);
  CHECK(r->at("JIRA_OAUTH_CLIENT_ID").reveal() == "AbCdEf456");
  CHECK(r->at("JIRA_OAUTH_CLIENT_SECRET").reveal() == "ATOA-s3cr3t/+=x");
  CHECK(r->at("JIRA_OAUTH_REDIRECT_URI").reveal() == "http://localhost:8080/callback");
  CHECK(r->at("JIRA_OAUTH_ACCESS_TOKEN").reveal() ==
        "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3OTAwMDAwMDB9.c2ln");
  CHECK(r->at("JIRA_OAUTH_REFRESH_TOKEN").reveal() == "it's a #token");
  CHECK(r->at("EXPORTED").reveal() == "v");
}

TEST_CASE("dotenv: the same file with CRLF line endings", "[ctl][dotenv]") {
  auto r =
      parse_dotenv("# saved on Windows\r\nA='x'\r\n\r\nexport B=y # c\r\nC=\"z\\n\"\r\n", ".env");
  REQUIRE(r.has_value());
  CHECK(r->size() == 3);
  CHECK(r->at("A").reveal() == "x");
  CHECK(r->at("B").reveal() == "y");
  CHECK(r->at("C").reveal() == "z\n");
}

TEST_CASE("dotenv: an empty file and a comments-only file have no values", "[ctl][dotenv]") {
  for (const char* text : {"", "\n\n", "# only\n  # comments\n"}) {
    auto r = parse_dotenv(text, ".env");
    REQUIRE(r.has_value());
    CHECK(r->empty());
  }
}

namespace {

struct BadCase {
  const char* rule;
  std::string text;
  std::string message;
};

}  // namespace

TEST_CASE("dotenv: malformed lines name the file and line, never the value", "[ctl][dotenv]") {
  const BadCase cases[] = {
      {"no =", "A=1\nSECRETVALUE\n", "app.env line 2: expected KEY=VALUE"},
      {"export without =", "export SECRETVALUE\n", "app.env line 1: expected KEY=VALUE"},
      {"key starting with a digit", "\n\n1SECRETVALUE=x\n", "app.env line 3: expected KEY=VALUE"},
      {"space inside the key", "MY KEY=SECRETVALUE\n", "app.env line 1: expected KEY=VALUE"},
      {"a bare value", "A=1\r\n: SECRETVALUE\r\n", "app.env line 2: expected KEY=VALUE"},
      {"unclosed single quote", "A=1\nB='SECRETVALUE\nC=2\n",
       "app.env line 2: the quoted value is not closed"},
      {"unclosed double quote", "B=\"SECRETVALUE\n",
       "app.env line 1: the quoted value is not closed"},
      {"escaped closing quote", R"(B='SECRETVALUE\')",
       "app.env line 1: the quoted value is not closed"},
      {"text after the closing quote", "B='SECRET'VALUE\n",
       "app.env line 1: unexpected text after the closing quote"},
  };
  for (const auto& c : cases) {
    INFO(c.rule);
    auto r = parse_dotenv(c.text, "app.env");
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == Errc::invalid_argument);
    CHECK(r.error().message == c.message);
    CHECK(r.error().message.find("SECRET") == std::string::npos);
  }
}

TEST_CASE("dotenv files: read, missing, a directory", "[ctl][dotenv]") {
  tokend::test::TempDir t;
  const auto good = t / "good.env";
  tokend::test::write_file_bytes(good, "A='1'\nB=2\n", 0644);
  auto r = read_dotenv_file(good.string());
  REQUIRE(r.has_value());
  CHECK(r->at("A").reveal() == "1");
  CHECK(r->at("B").reveal() == "2");

  const auto missing = (t / "missing.env").string();
  auto m = read_dotenv_file(missing);
  REQUIRE_FALSE(m.has_value());
  CHECK(m.error().code == Errc::io);
  CHECK(m.error().message.find(missing) != std::string::npos);
  CHECK(m.error().message.find("No such file") != std::string::npos);

  auto d = read_dotenv_file(t.path().string());
  REQUIRE_FALSE(d.has_value());
  CHECK(d.error().code == Errc::io);

  const auto bad = t / "bad.env";
  tokend::test::write_file_bytes(bad, "A=1\nB\n", 0600);
  auto b = read_dotenv_file(bad.string());
  REQUIRE_FALSE(b.has_value());
  CHECK(b.error().message == bad.string() + " line 2: expected KEY=VALUE");
}

#include "ctl/api.hpp"

#include <catch2/catch_test_macros.hpp>
#include <optional>
#include <string>

using tokend::Errc;
using tokend::ctl::DataArg;
using tokend::ctl::is_framing_header;
using tokend::ctl::is_replaced_header;
using tokend::ctl::normalize_method;
using tokend::ctl::parse_data_arg;
using tokend::ctl::parse_header_arg;
using tokend::ctl::parse_tokend_error;
using tokend::ctl::proxy_target;
using tokend::ctl::render_response_head;

namespace {

struct HeaderCase {
  const char* rule;
  std::string arg;
  std::string name;
  std::string value;
};

struct BadHeaderCase {
  const char* rule;
  std::string arg;
  const char* says;  // part of the message
};

struct TargetCase {
  const char* rule;
  std::string path;
  std::string target;
};

}  // namespace

TEST_CASE("api: -H takes Name: value", "[ctl][api][headers]") {
  const HeaderCase cases[] = {
      {"plain", "Accept: application/json", "Accept", "application/json"},
      {"no space after the colon", "X-Atlassian-Token:no-check", "X-Atlassian-Token", "no-check"},
      {"white space around the value trimmed", "Accept: \t text/plain \t", "Accept", "text/plain"},
      {"an empty value", "X-Empty:", "X-Empty", ""},
      {"a colon in the value", "X-Url: https://a.example:8443/x", "X-Url",
       "https://a.example:8443/x"},
      {"a tab inside the value", "X-Tab: a\tb", "X-Tab", "a\tb"},
      {"token punctuation in the name", "X-A.b_c~d!#$%&'*+^`|: 1", "X-A.b_c~d!#$%&'*+^`|", "1"},
      {"UTF-8 in the value", "X-Name: J\xc3\xbcrgen", "X-Name", "J\xc3\xbcrgen"},
      {"name case kept", "content-TYPE: text/csv", "content-TYPE", "text/csv"},
  };
  for (const auto& c : cases) {
    INFO(c.rule);
    auto h = parse_header_arg(c.arg);
    REQUIRE(h.has_value());
    CHECK(h->first == c.name);
    CHECK(h->second == c.value);
  }
}

TEST_CASE("api: -H refuses what would break or smuggle a header, without repeating the value",
          "[ctl][api][headers]") {
  const BadHeaderCase cases[] = {
      {"no colon", "Accept application/json", "\"Name: value\""},
      {"empty", "", "\"Name: value\""},
      {"no name", ": value", "no header name"},
      {"space before the colon", "Accept : x", "cannot contain spaces"},
      {"space inside the name", "X Token: x", "cannot contain spaces"},
      {"a bad character in the name", "X(1): x", "may only contain"},
      {"LF in the value", "X-A: secret-1\nX-B: 2", "line break"},
      {"CR LF in the value", "X-A: secret-1\r\nHost: evil", "line break"},
      {"CR alone", "X-A: secret-1\r", "line break"},
      {"NUL in the value", std::string("X-A: secret-1\0x", 15), "NUL"},
      {"another control character", "X-A: secret-1\x1b[31m", "control characters"},
      {"DEL", "X-A: secret-1\x7f", "control characters"},
      {"LF in the name", "X-\nA: 1", "may only contain"},
  };
  for (const auto& c : cases) {
    INFO(c.rule);
    auto h = parse_header_arg(c.arg);
    REQUIRE_FALSE(h.has_value());
    CHECK(h.error().code == Errc::invalid_argument);
    CHECK(h.error().message.find(c.says) != std::string::npos);
    CHECK(h.error().message.find("secret-1") == std::string::npos);
  }
}

TEST_CASE("headers tokenctl frames itself, and the ones tokend replaces", "[ctl][api][headers]") {
  for (const char* n : {"Host", "content-length", "Transfer-Encoding", "CONNECTION", "Keep-Alive",
                        "TE", "Trailer", "Upgrade", "Expect"}) {
    INFO(n);
    CHECK(is_framing_header(n));
  }
  for (const char* n : {"Accept", "Content-Type", "X-Tokend-Retry-Wait", "Hostname", "TEx"}) {
    INFO(n);
    CHECK_FALSE(is_framing_header(n));
  }
  for (const char* n :
       {"Authorization", "authorization", "Cookie", "Proxy-Authorization", "X-Tokend-Profile"}) {
    INFO(n);
    CHECK(is_replaced_header(n));
  }
  for (const char* n :
       {"X-Tokend-Retry-Wait", "x-tokend-retry-wait", "Accept", "Cookies", "X-Authorization"}) {
    INFO(n);
    CHECK_FALSE(is_replaced_header(n));
  }
}

TEST_CASE("METHOD is upper-cased letters", "[ctl][api]") {
  CHECK(normalize_method("get") == "GET");
  CHECK(normalize_method("Patch") == "PATCH");
  CHECK(normalize_method("DELETE") == "DELETE");
  for (const char* bad : {"", "GET /x", "G-T", "P0ST", "GET\r\n", "ABCDEFGHIJKLMNOPQRSTU"}) {
    INFO(bad);
    auto m = normalize_method(bad);
    REQUIRE_FALSE(m.has_value());
    CHECK(m.error().code == Errc::invalid_argument);
  }
}

TEST_CASE("PATH becomes the proxy target", "[ctl][api][target]") {
  const TargetCase cases[] = {
      {"as given", "jira/rest/api/3/myself", "/v1/proxy/p/jira/rest/api/3/myself"},
      {"one leading slash dropped", "/jira/rest/api/3/myself",
       "/v1/proxy/p/jira/rest/api/3/myself"},
      {"query passed through", "jira/rest/api/3/search?jql=project%3DABC&maxResults=5",
       "/v1/proxy/p/jira/rest/api/3/search?jql=project%3DABC&maxResults=5"},
      {"spaces encoded", "jira/rest/api/3/search?jql=project = ABC",
       "/v1/proxy/p/jira/rest/api/3/search?jql=project%20=%20ABC"},
      {"quotes and braces encoded", "x?q=\"a\"{b}|<c>^`\\",
       "/v1/proxy/p/x?q=%22a%22%7Bb%7D%7C%3Cc%3E%5E%60%5C"},
      {"# is data, not a fragment", "x?q=summary~'#12'", "/v1/proxy/p/x?q=summary~'%2312'"},
      {"a lone % encoded", "x?q=100%", "/v1/proxy/p/x?q=100%25"},
      {"a % without two hex digits encoded", "x?q=%zz", "/v1/proxy/p/x?q=%25zz"},
      {"an escape kept", "x/a%20b?c=%C3%BC", "/v1/proxy/p/x/a%20b?c=%C3%BC"},
      {"UTF-8 encoded", "x?q=J\xc3\xbcrgen", "/v1/proxy/p/x?q=J%C3%BCrgen"},
      {"sub-delims, : and @ kept", "x/a:b@c!$&'()*+,;=", "/v1/proxy/p/x/a:b@c!$&'()*+,;="},
      {"a second ? stays in the query", "x?a=?b", "/v1/proxy/p/x?a=?b"},
      {"a trailing slash kept", "confluence/wiki/rest/api/space/",
       "/v1/proxy/p/confluence/wiki/rest/api/space/"},
      {"dot segments left to tokend", "jira/../x", "/v1/proxy/p/jira/../x"},
  };
  for (const auto& c : cases) {
    INFO(c.rule);
    auto t = proxy_target("p", c.path);
    REQUIRE(t.has_value());
    CHECK(*t == c.target);
  }
  const std::string bad_paths[] = {
      "", "/", "?a=b", "/?a=b", "x\r\nHost: evil", "x\ny", std::string("x\0y", 3), "x\ty", "x\x7f"};
  for (const auto& bad : bad_paths) {
    INFO(bad);
    auto t = proxy_target("p", bad);
    REQUIRE_FALSE(t.has_value());
    CHECK(t.error().code == Errc::invalid_argument);
  }
}

TEST_CASE("api: --data: @FILE, - or the text", "[ctl][api]") {
  CHECK_FALSE(parse_data_arg(std::nullopt).has_value());
  auto f = parse_data_arg(std::string("@body.json"));
  REQUIRE(f);
  CHECK(f->kind == DataArg::Kind::file);
  CHECK(f->value == "body.json");
  for (const char* in : {"-", "@-"}) {
    auto s = parse_data_arg(std::string(in));
    REQUIRE(s);
    CHECK(s->kind == DataArg::Kind::stdin_stream);
  }
  auto l = parse_data_arg(std::string(R"({"fields":{"summary":"x"}})"));
  REQUIRE(l);
  CHECK(l->kind == DataArg::Kind::literal);
  CHECK(l->value == R"({"fields":{"summary":"x"}})");
  auto empty = parse_data_arg(std::string());
  REQUIRE(empty);
  CHECK(empty->kind == DataArg::Kind::literal);
  auto at = parse_data_arg(std::string("@"));
  REQUIRE(at);
  CHECK(at->kind == DataArg::Kind::file);
  CHECK(at->value.empty());  // the command refuses an empty file name
}

TEST_CASE("tokend's own error answers are told apart from upstream error bodies", "[ctl][api]") {
  auto own =
      parse_tokend_error(R"({"error":{"code":"policy_denied","message":"read-only profile"}})");
  REQUIRE(own);
  CHECK(own->code == "policy_denied");
  CHECK(own->message == "read-only profile");
  CHECK(own->command.empty());
  auto reauth = parse_tokend_error(
      R"({"error":{"code":"reauth_required","message":"jira needs a new login","command":"tokenctl login jira"}})");
  REQUIRE(reauth);
  CHECK(reauth->code == "reauth_required");
  CHECK(reauth->command == "tokenctl login jira");
  for (const char* upstream : {
           R"({"errorMessages":["Issue does not exist"],"errors":{}})",       // Jira
           R"({"error":"invalid_token","error_description":"expired"})",      // OAuth
           R"({"code":401,"message":"Unauthorized; scope does not match"})",  // Atlassian gateway
           R"({"error":{"code":"x","message":"y"},"status":404})",            // more than "error"
           R"({"error":{"code":404,"message":"y"}})",                         // a numeric code
           R"({"error":{"message":"y"}})",
           R"([{"error":{"code":"x","message":"y"}}])",
           "<html>Not Found</html>",
           "",
       }) {
    INFO(upstream);
    CHECK_FALSE(parse_tokend_error(upstream).has_value());
  }
}

TEST_CASE("api: --include prints the status line and headers", "[ctl][api]") {
  tokend::client::ResponseHead head;
  head.status = 201;
  head.reason = "Created";
  head.headers = {{"Content-Type", "application/json"},
                  {"Location", "https://x/rest/api/3/issue/10001"}};
  CHECK(render_response_head(head) ==
        "HTTP/1.1 201 Created\nContent-Type: application/json\nLocation: "
        "https://x/rest/api/3/issue/10001\n\n");
  head.reason.clear();
  head.headers.clear();
  CHECK(render_response_head(head) == "HTTP/1.1 201\n\n");
}

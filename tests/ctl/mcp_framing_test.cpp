// tokenctl mcp's framing: client lines, the request metadata headers of MCP
// 2026-07-28 (values, x-mcp-header), server-sent events, server messages.
#include <catch2/catch_test_macros.hpp>
#include <string>

#include "ctl/mcp/framing.hpp"

using namespace tokend::ctl::mcp;
using tokend::Errc;
using tokend::json::Json;

namespace {

std::string header(const tokend::client::Headers& h, const std::string& name) {
  for (const auto& [k, v] : h) {
    if (k == name) return v;
  }
  return "(absent)";
}

}  // namespace

TEST_CASE("client lines are classified, and anything else refused with a reason", "[mcp]") {
  auto r = parse_client_line(R"({"jsonrpc":"2.0","id":7,"method":"tools/list"})");
  REQUIRE(r);
  CHECK(r->kind == ClientMessage::Kind::request);
  CHECK(r->method == "tools/list");
  CHECK(r->request_ids == std::vector<Json>{7});

  r = parse_client_line("{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\r");
  REQUIRE(r);
  CHECK(r->kind == ClientMessage::Kind::notification);
  CHECK(r->request_ids.empty());

  r = parse_client_line(R"({"jsonrpc":"2.0","id":"s-1","result":{}})");
  REQUIRE(r);
  CHECK(r->kind == ClientMessage::Kind::response);

  r = parse_client_line(
      R"([{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"b"}])");
  REQUIRE(r);
  CHECK(r->kind == ClientMessage::Kind::batch);
  CHECK(r->request_ids == std::vector<Json>{1});

  for (const char* bad :
       {"", "nope", "[]", "42", R"({"id":1,"method":"x"})",
        R"({"jsonrpc":"1.0","id":1,"method":"x"})", R"({"jsonrpc":"2.0","id":1.5,"method":"x"})",
        R"({"jsonrpc":"2.0","id":{},"method":"x"})", R"({"jsonrpc":"2.0","method":""})",
        R"({"jsonrpc":"2.0","id":1})", R"({"jsonrpc":"2.0","id":1,"result":1,"error":{}})"}) {
    INFO(bad);
    auto e = parse_client_line(bad);
    REQUIRE_FALSE(e);
    CHECK(e.error().code == Errc::invalid_argument);
    CHECK_FALSE(e.error().message.empty());
  }
}

TEST_CASE("header values are plain ASCII or the base64 sentinel form", "[mcp]") {
  CHECK(header_value("us-west1") == "us-west1");
  CHECK(header_value("Hello, 世界") == "=?base64?SGVsbG8sIOS4lueVjA==?=");
  CHECK(header_value(" padded ") == "=?base64?IHBhZGRlZCA=?=");
  CHECK(header_value("line1\nline2") == "=?base64?bGluZTEKbGluZTI=?=");
  CHECK(header_value("=?base64?literal?=") == "=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?=");
  CHECK(header_value("a\r\nInjected: 1") == "=?base64?YQ0KSW5qZWN0ZWQ6IDE=?=");
  CHECK(header_value("").empty());
}

TEST_CASE(
    "requests carry Mcp-Method, Mcp-Name, the version of their _meta and x-mcp-header parameters",
    "[mcp]") {
  Json result = Json::parse(R"({"tools":[
    {"name":"execute_sql","inputSchema":{"type":"object","properties":{
      "region":{"type":"string","x-mcp-header":"Region"},
      "opts":{"type":"object","properties":{"dry":{"type":"boolean","x-mcp-header":"Dry"}}},
      "limit":{"type":"integer","x-mcp-header":"Limit"},
      "query":{"type":"string"}}}},
    {"name":"in_items","inputSchema":{"type":"object","properties":{
      "xs":{"type":"array","items":{"type":"string","x-mcp-header":"X"}}}}},
    {"name":"number_typed","inputSchema":{"type":"object","properties":{"n":{"type":"number","x-mcp-header":"N"}}}},
    {"name":"twice","inputSchema":{"type":"object","properties":{
      "a":{"type":"string","x-mcp-header":"Same"},"b":{"type":"string","x-mcp-header":"same"}}}},
    {"name":"bad_name","inputSchema":{"type":"object","properties":{"a":{"type":"string","x-mcp-header":"a b"}}}},
    {"name":"plain"},
    {"name":"named_like_it","inputSchema":{"type":"object","properties":{"x-mcp-header":{"type":"string",
      "default":{"x-mcp-header":"D"},"examples":[{"x-mcp-header":"E"}],"enum":[{"x-mcp-header":"F"}]}}}}]})");
  ToolHeaders tools;
  const auto dropped = take_tool_headers(result, tools);
  // Invalid annotations leave the tool out of the list the client sees.
  CHECK(dropped.size() == 4);
  // A property named x-mcp-header, or the word in data, is no annotation.
  REQUIRE(result["tools"].size() == 3);
  CHECK(result["tools"][0]["name"] == "execute_sql");
  CHECK(result["tools"][1]["name"] == "plain");
  CHECK(result["tools"][2]["name"] == "named_like_it");
  REQUIRE(tools.by_tool.count("execute_sql") == 1);
  CHECK(tools.by_tool.at("execute_sql").size() == 3);

  auto call = parse_client_line(
      R"({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"execute_sql",
    "arguments":{"region":"us-west1","opts":{"dry":true},"limit":42,"query":"SELECT 1"},
    "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}})");
  REQUIRE(call);
  auto h = request_headers(*call, tools, "2025-06-18");
  CHECK(header(h, "MCP-Protocol-Version") == "2026-07-28");  // the request's own claim wins
  CHECK(header(h, "Mcp-Method") == "tools/call");
  CHECK(header(h, "Mcp-Name") == "execute_sql");
  CHECK(header(h, "Mcp-Param-Region") == "us-west1");
  CHECK(header(h, "Mcp-Param-Dry") == "true");
  CHECK(header(h, "Mcp-Param-Limit") == "42");

  // null and absent values: no header; a value beyond 2^53 is not mirrored.
  call = parse_client_line(
      R"({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"execute_sql",
    "arguments":{"region":null,"limit":9007199254740993}}})");
  REQUIRE(call);
  h = request_headers(*call, tools, "2025-06-18");
  CHECK(header(h, "Mcp-Param-Region") == "(absent)");
  CHECK(header(h, "Mcp-Param-Dry") == "(absent)");
  CHECK(header(h, "Mcp-Param-Limit") == "(absent)");
  CHECK(header(h, "MCP-Protocol-Version") == "2025-06-18");  // the negotiated one

  auto read = parse_client_line(
      R"({"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":"file:///ü"}})");
  REQUIRE(read);
  CHECK(header(request_headers(*read, tools, ""), "Mcp-Name") == "=?base64?ZmlsZTovLy/DvA==?=");
  CHECK(header(request_headers(*read, tools, ""), "MCP-Protocol-Version") == "(absent)");

  // A claimed version that is not a token is not mirrored into a header.
  auto odd = parse_client_line(R"({"jsonrpc":"2.0","id":4,"method":"ping","params":{"_meta":
    {"io.modelcontextprotocol/protocolVersion":"2026-07-28\r\nX: 1"}}})");
  REQUIRE(odd);
  CHECK(header(request_headers(*odd, tools, ""), "MCP-Protocol-Version") == "(absent)");
}

TEST_CASE("server-sent events split anywhere give the same events", "[mcp]") {
  const std::string stream =
      ": keep-alive\r\n"
      "id: 1\r\nevent: message\r\ndata: {\"a\":1}\r\n\r\n"
      "data: line one\ndata: line two\n\n"
      "retry: 2500\n"
      "event: other\rdata: x\r\r"
      "id: 7\ndata:no-space\n\n"
      "data: unterminated";
  for (std::size_t step = 1; step <= stream.size(); ++step) {
    SseParser p;
    std::vector<SseParser::Event> all;
    for (std::size_t i = 0; i < stream.size(); i += step) {
      auto got = p.feed(std::string_view(stream).substr(i, step));
      REQUIRE(got);
      all.insert(all.end(), got->begin(), got->end());
    }
    INFO("split every " << step);
    REQUIRE(all.size() == 4);
    CHECK(all[0].data == "{\"a\":1}");
    CHECK(all[0].id == std::optional<std::string>("1"));
    CHECK(all[1].data == "line one\nline two");
    CHECK(all[1].id == std::optional<std::string>("1"));  // the last id carries on
    CHECK(all[2].type == "other");
    CHECK(all[3].data == "no-space");
    CHECK(p.last_id() == "7");
    CHECK(p.retry_ms() == std::optional<long>(2500));
  }
  // One leading byte order mark is ignored; a negative retry is not a delay.
  {
    SseParser p;
    auto got = p.feed("\xEF\xBB");
    REQUIRE(got);
    got = p.feed(
        "\xBF"
        "data: x\nretry: -5\n\n");
    REQUIRE(got);
    REQUIRE(got->size() == 1);
    CHECK((*got)[0].data == "x");
    CHECK_FALSE(p.retry_ms());
  }
  // A line past the limit fails even when it ends in the same piece.
  SseParser tight(8);
  CHECK_FALSE(tight.feed("data: 0123456789\n\n"));
  SseParser small(16);
  auto r = small.feed("data: 0123456789abcdefghij");
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::limit_exceeded);
}

TEST_CASE("a server's protocol version goes back in a header only when it is a short token",
          "[mcp]") {
  CHECK(usable_version("2025-11-25") == std::optional<std::string>("2025-11-25"));
  CHECK_FALSE(usable_version("2025-11-25\r\nX: y"));
  CHECK_FALSE(usable_version(""));
  CHECK_FALSE(usable_version(std::string(33, '1')));
}

TEST_CASE("server messages must be JSON-RPC and leave as one line", "[mcp]") {
  auto m = server_message("{\"jsonrpc\":\"2.0\",\n\"id\":1,\r\n\"result\":{}}");
  REQUIRE(m);
  CHECK(m->second == R"({"id":1,"jsonrpc":"2.0","result":{}})");
  m = server_message(R"({"jsonrpc":"2.0","method":"notifications/message","params":{}})");
  REQUIRE(m);
  CHECK(m->second == R"({"jsonrpc":"2.0","method":"notifications/message","params":{}})");
  for (const char* bad :
       {"", "<html>502</html>", "[]", R"({"id":1,"result":{}})", R"([{"jsonrpc":"2.0"},3])"}) {
    INFO(bad);
    CHECK_FALSE(server_message(bad));
  }
}

TEST_CASE("error lines are JSON-RPC errors for the id given", "[mcp]") {
  const Json e = Json::parse(error_line(5, k_login_required, "run tokenctl login x",
                                        Json{{"command", "tokenctl login x"}}));
  CHECK(e["jsonrpc"] == "2.0");
  CHECK(e["id"] == 5);
  CHECK(e["error"]["code"] == -32001);
  CHECK(e["error"]["data"]["command"] == "tokenctl login x");
  CHECK(Json::parse(error_line(nullptr, k_parse_error, "Parse error"))["id"].is_null());
  // Invalid UTF-8 in a message does not throw.
  CHECK_FALSE(error_line(1, k_upstream_error, std::string("bad \xff byte")).empty());
}

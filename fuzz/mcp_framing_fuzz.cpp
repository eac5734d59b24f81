// tokenctl mcp's framing (ctl/mcp_framing.hpp): the client's JSON-RPC lines,
// the server's event streams and messages, tools/list annotations and the
// request metadata headers made from them. The first byte picks what is fed:
//
//   0  an event stream, fed whole and again in pieces whose sizes come from
//      the next bytes; both ways must give the same events, and each event's
//      data goes through server_message
//   1  a client line: parse_client_line, then request_headers
//   2  a tools/list answer (first line: server_message, take_tool_headers),
//      a negotiated version (second line), then a client line as in 1
//   3  header_value of the rest
//
// Invariants: what goes on stdout is one line (no CR, no LF) of JSON that
// parses back to the same value; every header value is visible ASCII (no
// CR, LF or NUL), every header name a token; a base64-wrapped value decodes
// back to the input; the parser's state stays bounded by its limit.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "ctl/mcp/framing.hpp"
#include "fuzz_input.hpp"

using namespace tokend;
using namespace tokend::ctl::mcp;

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

bool visible_ascii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c <= 0x7e; });
}

bool token(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
  });
}

std::string base64_decode(std::string_view in) {
  static constexpr std::string_view k_alphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::uint32_t acc = 0;
  int bits = 0;
  for (const char c : in) {
    if (c == '=') break;
    const auto v = k_alphabet.find(c);
    check(v != std::string_view::npos);
    acc = (acc << 6) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return out;
}

void check_header_value(std::string_view in, const std::string& out) {
  if (in.empty()) return check(out.empty());  // an empty value stays empty
  check(!out.empty() && visible_ascii(out));
  check(out.front() != ' ' && out.back() != ' ');
  if (out.starts_with("=?base64?") && out.ends_with("?=") && out.size() >= 11) {
    check(base64_decode(std::string_view(out).substr(9, out.size() - 11)) == in);
  } else {
    check(out == in);
  }
}

void check_line(const json::Json& j, const std::string& line) {
  check(line.find_first_of("\r\n") == std::string::npos);
  auto again = json::parse(line, "line");
  check(again.has_value() && *again == j);
}

void server_payload(std::string_view payload) {
  auto m = server_message(payload);
  if (!m) return;
  check_line(m->first, m->second);
}

void headers_of(const ClientMessage& m, const ToolHeaders& tools, std::string_view negotiated) {
  for (const auto& [name, value] : request_headers(m, tools, negotiated)) {
    check(token(name));
    // Empty only where the body's value is empty (a tool named ""): the
    // header mirrors it; anything else is visible ASCII.
    check(value.empty() ? name == "Mcp-Name" || name.starts_with("Mcp-Param-")
                        : visible_ascii(value));
  }
  (void)claimed_version(m.body);
}

void client_line(std::string_view line, const ToolHeaders& tools, std::string_view negotiated) {
  auto m = parse_client_line(line);
  if (!m) return;
  switch (m->kind) {
    case ClientMessage::Kind::request:
      check(m->request_ids.size() == 1 && !m->method.empty());
      break;
    case ClientMessage::Kind::notification:
      check(m->request_ids.empty() && !m->method.empty());
      break;
    case ClientMessage::Kind::response:
      check(m->request_ids.empty() && m->method.empty());
      break;
    case ClientMessage::Kind::batch:
      check(m->body.is_array() && !m->body.empty() && m->request_ids.size() <= m->body.size());
      break;
  }
  headers_of(*m, tools, negotiated);
  // What the bridge sends back for it, whatever the id.
  for (const auto& id : m->request_ids) {
    const std::string line_out = error_line(id, k_upstream_error, "fuzz");
    check(line_out.find_first_of("\r\n") == std::string::npos);
  }
}

bool same_events(const std::vector<SseParser::Event>& a, const std::vector<SseParser::Event>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].type != b[i].type || a[i].data != b[i].data || a[i].id != b[i].id) return false;
  }
  return true;
}

void event_stream(fuzz::Input& in) {
  // Chunk sizes for the split feed: up to 8 of them, used in turn (0 -> 1).
  std::vector<std::size_t> sizes(1 + in.byte() % 8);
  for (auto& s : sizes) s = 1 + in.byte() % 64;
  const std::string_view stream = in.rest();
  constexpr std::size_t k_limit = 4096;

  SseParser whole(k_limit);
  auto all = whole.feed(stream);

  SseParser split(k_limit);
  std::vector<SseParser::Event> pieces;
  bool failed = false;
  std::size_t at = 0;
  for (std::size_t i = 0; at < stream.size(); ++i) {
    const std::size_t n = std::min(sizes[i % sizes.size()], stream.size() - at);
    auto got = split.feed(stream.substr(at, n));
    at += n;
    if (!got) {
      failed = true;
      break;
    }
    for (auto& e : *got) pieces.push_back(std::move(e));
  }
  if (!all || failed) return;  // past the limit: the stream is unusable either way
  check(same_events(*all, pieces));
  check(whole.last_id() == split.last_id() && whole.retry_ms() == split.retry_ms());
  check(whole.last_id().size() <= stream.size() && whole.last_id().find('\0') == std::string::npos);
  for (const auto& e : *all) {
    check(!e.type.empty() && e.type.find_first_of("\r\n") == std::string::npos);
    check(e.data.find('\r') == std::string::npos && e.data.size() <= k_limit);
    if (e.id) check(e.id->find_first_of(std::string_view("\r\n\0", 3)) == std::string::npos);
    server_payload(e.data);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  switch (in.byte() % 4) {
    case 0:
      event_stream(in);
      break;
    case 1:
      client_line(in.rest(), ToolHeaders{}, "");
      break;
    case 2: {
      ToolHeaders tools;
      auto listed = server_message(in.line());
      if (listed) {
        check_line(listed->first, listed->second);
        json::Json answer = listed->first;
        if (answer.is_object() && answer.contains("result")) {
          (void)take_tool_headers(answer["result"], tools);
          // What the bridge writes after taking the annotations out.
          check_line(answer, answer.dump(-1, ' ', false, json::Json::error_handler_t::replace));
          for (const auto& [tool, params] : tools.by_tool) {
            for (const auto& p : params) check(token(p.header) && !p.path.empty());
          }
        }
      }
      // The bridge keeps a negotiated version only through usable_version
      // (Bridge::deliver, Bridge::reinitialize); request_headers trusts it.
      const std::string negotiated = usable_version(in.line()).value_or("");
      client_line(in.rest(), tools, negotiated);
      break;
    }
    default:
      check_header_value(in.rest(), header_value(in.rest()));
      break;
  }
  return 0;
}

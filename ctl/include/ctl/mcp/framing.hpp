// The bytes tokenctl mcp reads and writes, as pure functions: JSON-RPC lines
// from the client on stdin, the Streamable HTTP request metadata mirrored
// into headers (MCP 2026-07-28: MCP-Protocol-Version, Mcp-Method, Mcp-Name,
// Mcp-Param-*), server-sent events from the server, and the lines written
// back on stdout. Everything here treats its input as hostile: the client's
// lines, and every byte the MCP server sends.
#pragma once

#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "client/client.hpp"
#include "core/error.hpp"
#include "core/json.hpp"

namespace tokend::ctl::mcp {

// The first MCP revision without sessions, GET streams or initialize.
inline constexpr std::string_view k_first_stateless_version = "2026-07-28";
inline constexpr std::string_view k_protocol_version_meta =
    "io.modelcontextprotocol/protocolVersion";

// One JSON-RPC message (or 2025-03-26 batch) from the client.
struct ClientMessage {
  enum class Kind { request, notification, response, batch };
  Kind kind = Kind::request;
  json::Json body;
  std::string method;  // requests and notifications
  json::Json id;       // requests and responses; null otherwise
  // The ids of the requests in it (one for a request, several in a batch).
  std::vector<json::Json> request_ids;
};

// Errc::invalid_argument, with a message for the JSON-RPC error, for a line
// that is not a JSON-RPC 2.0 message.
Result<ClientMessage> parse_client_line(std::string_view line);

// A header value as the transport carries it: the value itself when it is
// plain visible ASCII without leading or trailing space, else
// "=?base64?...?=" (also for a plain value that looks like that form).
std::string header_value(std::string_view value);

// The x-mcp-header annotations of the tools the server listed: for each
// tool, the header names (after "Mcp-Param-") and the property path whose
// value each carries.
struct ToolHeaders {
  struct Param {
    std::string header;             // as annotated, e.g. "Region"
    std::vector<std::string> path;  // property names from the arguments' root
  };
  std::map<std::string, std::vector<Param>, std::less<>> by_tool;
};

// Reads a tools/list result: records each valid tool's annotations in
// `into` and removes tools whose annotations break the rules (the transport
// requires clients to leave them out). Returns "tool: reason" for each
// removed tool.
std::vector<std::string> take_tool_headers(json::Json& result, ToolHeaders& into);

// The headers a POST of `message` carries: Mcp-Method, Mcp-Name,
// Mcp-Param-* (from `tools`), and MCP-Protocol-Version from the request's
// _meta when it names one (else `negotiated`, when known).
client::Headers request_headers(const ClientMessage& message, const ToolHeaders& tools,
                                std::string_view negotiated);

// The protocol version a message claims in params._meta, when it does.
std::optional<std::string> claimed_version(const json::Json& body);

// Server-sent events (the WHATWG event-stream format), fed in pieces.
class SseParser {
 public:
  struct Event {
    std::string type;  // "message" unless named
    std::string data;
    std::optional<std::string> id;
  };
  explicit SseParser(std::size_t max_event_bytes = 32 * 1024 * 1024) : m_max(max_event_bytes) {}
  // The events completed by `bytes`. Errc::limit_exceeded once an event or a
  // line grows past the limit (the stream is then unusable).
  Result<std::vector<Event>> feed(std::string_view bytes);
  // The last event id seen (survives across events, as the format says).
  [[nodiscard]] const std::string& last_id() const { return m_last_id; }
  // The reconnection delay the server asked for, in ms.
  [[nodiscard]] std::optional<long> retry_ms() const { return m_retry_ms; }

 private:
  void line(std::string_view l, std::vector<Event>& out);
  std::size_t m_max;
  std::size_t m_bom_seen = 0;  // bytes of a leading BOM matched (3: done)
  std::string m_line;
  bool m_skip_lf = false;  // a CR ended the last line; a following LF belongs to it
  std::string m_type;
  std::string m_data;
  bool m_has_data = false;
  std::string m_last_id;
  std::optional<long> m_retry_ms;
};

// A protocol version as a server names it, when it can go back in the
// MCP-Protocol-Version header (a short token); nullopt otherwise.
std::optional<std::string> usable_version(std::string_view v);

// One message from the server, checked to be JSON-RPC 2.0 (an object with
// "jsonrpc": "2.0", or an array of such), as one line without newlines.
Result<std::pair<json::Json, std::string>> server_message(std::string_view payload);

// A JSON-RPC error response as one line.
std::string error_line(const json::Json& id, int code, std::string_view message,
                       const json::Json& data = json::Json());

// JSON-RPC error codes the bridge uses (the server-error range).
inline constexpr int k_parse_error = -32700;
inline constexpr int k_invalid_request = -32600;
inline constexpr int k_upstream_error = -32000;   // the server or tokend could not answer
inline constexpr int k_login_required = -32001;   // no token without a person: tokenctl login
inline constexpr int k_header_mismatch = -32020;  // MCP 2026-07-28: headers and body disagree

}  // namespace tokend::ctl::mcp

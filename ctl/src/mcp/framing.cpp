#include "ctl/mcp/framing.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <set>

#include "core/encoding.hpp"

namespace tokend::ctl::mcp {

namespace {

bool valid_id(const json::Json& id) {
  return id.is_string() || id.is_number_integer() || id.is_number_unsigned();
}

// What one element of a message is; Errc::invalid_argument when it is not
// JSON-RPC 2.0.
Result<ClientMessage::Kind> kind_of(const json::Json& m) {
  if (!m.is_object()) return std::unexpected(bad_input("a JSON-RPC message must be an object"));
  const auto v = m.find("jsonrpc");
  if (v == m.end() || *v != "2.0")
    return std::unexpected(bad_input("the message lacks \"jsonrpc\": \"2.0\""));
  const auto method = m.find("method");
  const auto id = m.find("id");
  if (method != m.end()) {
    if (!method->is_string() || method->get_ref<const std::string&>().empty()) {
      return std::unexpected(bad_input("\"method\" must be a non-empty string"));
    }
    if (id == m.end()) return ClientMessage::Kind::notification;
    if (!valid_id(*id)) return std::unexpected(bad_input("\"id\" must be a string or an integer"));
    return ClientMessage::Kind::request;
  }
  if (id == m.end() || !(valid_id(*id) || id->is_null())) {
    return std::unexpected(
        bad_input("a message without \"method\" must be a response with an \"id\""));
  }
  if (m.contains("result") == m.contains("error")) {
    return std::unexpected(bad_input("a response carries exactly one of \"result\" and \"error\""));
  }
  return ClientMessage::Kind::response;
}

bool tchar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool lower_equal(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

// Collects the annotations reachable through "properties" alone; anything
// annotated elsewhere (items, oneOf, ...) is counted by count_all and so
// makes the tool invalid.
Result<> reachable(const json::Json& schema, std::vector<std::string>& path,
                   std::vector<ToolHeaders::Param>& out, std::size_t depth) {
  if (depth > 32) return std::unexpected(bad_input("the input schema nests too deeply"));
  if (!schema.is_object()) return {};
  const auto props = schema.find("properties");
  if (props == schema.end() || !props->is_object()) return {};
  for (const auto& [key, sub] : props->items()) {
    if (!sub.is_object()) continue;
    path.push_back(key);
    if (const auto h = sub.find("x-mcp-header"); h != sub.end()) {
      if (!h->is_string() || h->get_ref<const std::string&>().empty()) {
        return std::unexpected(
            bad_input(fmt::format("x-mcp-header of '{}' is not a non-empty string", key)));
      }
      const auto& name = h->get_ref<const std::string&>();
      if (!std::all_of(name.begin(), name.end(), tchar)) {
        return std::unexpected(
            bad_input(fmt::format("x-mcp-header of '{}' is not an HTTP field name", key)));
      }
      const std::string type =
          sub.contains("type") && sub["type"].is_string() ? sub["type"].get<std::string>() : "";
      if (type != "string" && type != "integer" && type != "boolean") {
        return std::unexpected(bad_input(fmt::format(
            "x-mcp-header on '{}', whose type is not string, integer or boolean", key)));
      }
      for (const auto& p : out) {
        if (lower_equal(p.header, name))
          return std::unexpected(bad_input(fmt::format("x-mcp-header '{}' is used twice", name)));
      }
      out.push_back({name, path});
    }
    auto nested = reachable(sub, path, out, depth + 1);
    path.pop_back();
    if (!nested) return nested;
  }
  return {};
}

// Annotations anywhere in the schema, as keywords of a (sub)schema: through
// every keyword that holds subschemas, but not into property names or data
// (default, const, enum, examples), where "x-mcp-header" is just a word.
std::size_t count_all(const json::Json& schema, std::size_t depth) {
  if (depth > 64) return 1;  // deeper than anything valid: count it as misplaced
  if (!schema.is_object()) return 0;
  static constexpr std::string_view k_one[] = {"items",
                                               "additionalProperties",
                                               "contains",
                                               "not",
                                               "if",
                                               "then",
                                               "else",
                                               "propertyNames",
                                               "unevaluatedItems",
                                               "unevaluatedProperties",
                                               "additionalItems"};
  static constexpr std::string_view k_list[] = {"allOf", "anyOf", "oneOf", "prefixItems", "items"};
  static constexpr std::string_view k_map[] = {"properties", "patternProperties", "$defs",
                                               "definitions", "dependentSchemas"};
  std::size_t n = schema.contains("x-mcp-header") ? 1 : 0;
  for (const auto& [key, v] : schema.items()) {
    const auto is = [&](const auto& names) {
      return std::find(std::begin(names), std::end(names), key) != std::end(names);
    };
    if (is(k_one) && v.is_object()) n += count_all(v, depth + 1);
    if (is(k_list) && v.is_array()) {
      for (const auto& sub : v) n += count_all(sub, depth + 1);
    }
    if (is(k_map) && v.is_object()) {
      for (const auto& [_, sub] : v.items()) n += count_all(sub, depth + 1);
    }
  }
  return n;
}

std::optional<std::string> param_value(const json::Json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  constexpr std::int64_t k_safe = (std::int64_t{1} << 53) - 1;
  if (v.is_number_integer()) {
    const auto n = v.get<std::int64_t>();
    if (n < -k_safe || n > k_safe) return std::nullopt;
    return std::to_string(n);
  }
  if (v.is_number_unsigned()) {
    const auto n = v.get<std::uint64_t>();
    if (n > static_cast<std::uint64_t>(k_safe)) return std::nullopt;
    return std::to_string(n);
  }
  return std::nullopt;
}

}  // namespace

Result<ClientMessage> parse_client_line(std::string_view line) {
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t'))
    line.remove_suffix(1);
  auto parsed = json::parse(line, "message");
  if (!parsed) return std::unexpected(bad_input("the line is not JSON"));
  ClientMessage m;
  m.body = std::move(*parsed);
  if (m.body.is_array()) {
    if (m.body.empty()) return std::unexpected(bad_input("an empty batch"));
    for (const auto& e : m.body) {
      auto k = kind_of(e);
      if (!k) return std::unexpected(k.error());
      if (*k == ClientMessage::Kind::request) m.request_ids.push_back(e["id"]);
    }
    m.kind = ClientMessage::Kind::batch;
    return m;
  }
  auto k = kind_of(m.body);
  if (!k) return std::unexpected(k.error());
  m.kind = *k;
  if (m.body.contains("method")) m.method = m.body["method"].get<std::string>();
  if (m.body.contains("id")) m.id = m.body["id"];
  if (m.kind == ClientMessage::Kind::request) m.request_ids.push_back(m.id);
  return m;
}

std::string header_value(std::string_view value) {
  if (value.empty()) return {};
  const bool plain =
      value.front() != ' ' && value.back() != ' ' &&
      std::all_of(value.begin(), value.end(), [](char c) { return c >= 0x20 && c <= 0x7e; }) &&
      !(value.starts_with("=?base64?") && value.ends_with("?="));
  if (plain) return std::string(value);
  return "=?base64?" + base64_encode(value) + "?=";
}

std::vector<std::string> take_tool_headers(json::Json& result, ToolHeaders& into) {
  std::vector<std::string> dropped;
  if (!result.is_object()) return dropped;
  auto tools = result.find("tools");
  if (tools == result.end() || !tools->is_array()) return dropped;
  json::Json kept = json::Json::array();
  for (auto& tool : *tools) {
    const std::string name = tool.is_object() ? json::string_or(tool, "name") : std::string();
    if (!tool.is_object() || !tool.contains("inputSchema")) {
      kept.push_back(std::move(tool));
      continue;
    }
    const json::Json& schema = tool["inputSchema"];
    std::vector<ToolHeaders::Param> params;
    std::vector<std::string> path;
    auto ok = reachable(schema, path, params, 0);
    if (ok && count_all(schema, 0) != params.size()) {
      ok = std::unexpected(bad_input(
          "x-mcp-header is set on a property not reachable through \"properties\" alone"));
    }
    if (!ok) {
      dropped.push_back(fmt::format("{}: {}", name.substr(0, 64), ok.error().message));
      continue;
    }
    if (params.empty()) {
      into.by_tool.erase(name);
    } else {
      into.by_tool.insert_or_assign(name, std::move(params));
    }
    kept.push_back(std::move(tool));
  }
  *tools = std::move(kept);
  return dropped;
}

std::optional<std::string> usable_version(std::string_view v) {
  if (v.empty() || v.size() > 32 || !std::all_of(v.begin(), v.end(), tchar)) return std::nullopt;
  return std::string(v);
}

std::optional<std::string> claimed_version(const json::Json& body) {
  if (!body.is_object()) return std::nullopt;
  const auto params = body.find("params");
  if (params == body.end() || !params->is_object()) return std::nullopt;
  const auto meta = params->find("_meta");
  if (meta == params->end() || !meta->is_object()) return std::nullopt;
  const auto v = meta->find(k_protocol_version_meta);
  if (v == meta->end() || !v->is_string()) return std::nullopt;
  // A version is a date-like token; anything else is not mirrored.
  return usable_version(v->get_ref<const std::string&>());
}

client::Headers request_headers(const ClientMessage& message, const ToolHeaders& tools,
                                std::string_view negotiated) {
  client::Headers out;
  const json::Json& body = message.body;
  if (auto v = claimed_version(body)) {
    out.emplace_back("MCP-Protocol-Version", *v);
  } else if (!negotiated.empty()) {
    out.emplace_back("MCP-Protocol-Version", std::string(negotiated));
  }
  if (message.kind != ClientMessage::Kind::request &&
      message.kind != ClientMessage::Kind::notification)
    return out;
  out.emplace_back("Mcp-Method", header_value(message.method));
  const json::Json params = body.value("params", json::Json::object());
  if (!params.is_object()) return out;
  if (message.method == "tools/call" || message.method == "prompts/get") {
    if (params.contains("name") && params["name"].is_string()) {
      out.emplace_back("Mcp-Name", header_value(params["name"].get<std::string>()));
    }
  } else if (message.method == "resources/read") {
    if (params.contains("uri") && params["uri"].is_string()) {
      out.emplace_back("Mcp-Name", header_value(params["uri"].get<std::string>()));
    }
  }
  if (message.method != "tools/call") return out;
  const std::string tool = json::string_or(params, "name");
  const auto it = tools.by_tool.find(tool);
  if (it == tools.by_tool.end()) return out;
  const json::Json args = params.value("arguments", json::Json::object());
  for (const auto& p : it->second) {
    const json::Json* at = &args;
    for (const auto& key : p.path) {
      if (!at->is_object() || !at->contains(key)) {
        at = nullptr;
        break;
      }
      at = &(*at)[key];
    }
    if (at == nullptr || at->is_null()) continue;
    if (auto value = param_value(*at))
      out.emplace_back("Mcp-Param-" + p.header, header_value(*value));
  }
  return out;
}

Result<std::vector<SseParser::Event>> SseParser::feed(std::string_view bytes) {
  std::vector<Event> out;
  // One UTF-8 byte order mark at the very start of the stream is ignored.
  static constexpr std::string_view k_bom = "\xEF\xBB\xBF";
  while (m_bom_seen < k_bom.size() && !bytes.empty()) {
    if (bytes.front() != k_bom[m_bom_seen]) {
      // Not a BOM after all: what matched so far is data.
      m_line.append(k_bom.substr(0, m_bom_seen));
      m_bom_seen = k_bom.size();
      break;
    }
    ++m_bom_seen;
    bytes.remove_prefix(1);
  }
  while (!bytes.empty()) {
    if (m_skip_lf) {
      m_skip_lf = false;
      if (bytes.front() == '\n') {
        bytes.remove_prefix(1);
        continue;
      }
    }
    const auto end = bytes.find_first_of("\r\n");
    if (end == std::string_view::npos) {
      if (m_line.size() + bytes.size() > m_max)
        return fail(Errc::limit_exceeded, "an event-stream line is too long");
      m_line.append(bytes);
      break;
    }
    if (m_line.size() + end > m_max)
      return fail(Errc::limit_exceeded, "an event-stream line is too long");
    m_line.append(bytes.substr(0, end));
    if (bytes[end] == '\r') m_skip_lf = true;
    bytes.remove_prefix(end + 1);
    line(m_line, out);
    m_line.clear();
    if (m_data.size() > m_max) return fail(Errc::limit_exceeded, "an event is too large");
  }
  return out;
}

void SseParser::line(std::string_view l, std::vector<Event>& out) {
  if (l.empty()) {
    if (m_has_data) {
      Event e;
      e.type = m_type.empty() ? "message" : m_type;
      e.data = std::move(m_data);
      if (!m_last_id.empty()) e.id = m_last_id;
      out.push_back(std::move(e));
    }
    m_data.clear();
    m_type.clear();
    m_has_data = false;
    return;
  }
  if (l.front() == ':') return;  // a comment (keep-alive)
  std::string_view field = l;
  std::string_view value;
  if (const auto colon = l.find(':'); colon != std::string_view::npos) {
    field = l.substr(0, colon);
    value = l.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  }
  if (field == "data") {
    if (m_has_data) m_data += '\n';
    m_data.append(value);
    m_has_data = true;
  } else if (field == "event") {
    m_type.assign(value);
  } else if (field == "id") {
    if (value.find('\0') == std::string_view::npos) m_last_id.assign(value);
  } else if (field == "retry") {
    // ASCII digits only, as the format says (no sign).
    long ms = 0;
    const auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), ms);
    if (ec == std::errc{} && p == value.data() + value.size() && !value.empty() &&
        value.front() != '-')
      m_retry_ms = ms;
  }
}

Result<std::pair<json::Json, std::string>> server_message(std::string_view payload) {
  auto parsed = json::parse(payload, "server message");
  if (!parsed) return std::unexpected(bad_input("the MCP server sent something that is not JSON"));
  auto check = [](const json::Json& m) {
    return m.is_object() && m.contains("jsonrpc") && m["jsonrpc"] == "2.0";
  };
  const bool ok = parsed->is_array()
                      ? !parsed->empty() && std::all_of(parsed->begin(), parsed->end(), check)
                      : check(*parsed);
  if (!ok)
    return std::unexpected(
        bad_input("the MCP server sent JSON that is not a JSON-RPC 2.0 message"));
  // Re-serialised only when it must be: a line may not hold a newline.
  std::string line = payload.find_first_of("\r\n") == std::string_view::npos ? std::string(payload)
                                                                             : parsed->dump();
  return std::pair{std::move(*parsed), std::move(line)};
}

std::string error_line(const json::Json& id, int code, std::string_view message,
                       const json::Json& data) {
  json::Json error = {{"code", code}, {"message", message}};
  if (!data.is_null()) error["data"] = data;
  return json::Json{{"jsonrpc", "2.0"}, {"id", id}, {"error", std::move(error)}}.dump(
      -1, ' ', false, json::Json::error_handler_t::replace);
}

}  // namespace tokend::ctl::mcp

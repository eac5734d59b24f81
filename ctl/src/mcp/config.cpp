#include "ctl/mcp/config.hpp"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef __APPLE__
#include <mach-o/dyld.h>
#endif

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "core/fd.hpp"
#include "core/fs.hpp"
#include "core/names.hpp"

namespace tokend::ctl {

namespace stdfs = std::filesystem;
using OrderedJson = nlohmann::ordered_json;

namespace {

constexpr std::array<std::pair<McpClient, std::string_view>, 7> k_clients{{
    {McpClient::claude_code, "claude-code"},
    {McpClient::claude_desktop, "claude-desktop"},
    {McpClient::codex, "codex"},
    {McpClient::cursor, "cursor"},
    {McpClient::vscode, "vscode"},
    {McpClient::gemini, "gemini"},
    {McpClient::opencode, "opencode"},
}};

// Every string that goes into a config file must be UTF-8: JSON and TOML
// files are, and nlohmann's dump throws on anything else.
bool is_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t len = 0;
    std::uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    }
    if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (std::size_t k = 1; k < len; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    const bool overlong =
        (len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000);
    if (overlong || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

Result<> check_utf8(const McpServerEntry& e) {
  auto bad = [](std::string_view what) {
    return fail(Errc::invalid_argument,
                fmt::format("{} is not valid UTF-8, which config files must be", what));
  };
  if (!is_utf8(e.command)) return bad("the command");
  for (std::size_t i = 0; i < e.args.size(); ++i) {
    if (!is_utf8(e.args[i])) return bad(fmt::format("argument {}", i + 1));
  }
  for (const auto& [k, v] : e.env) {
    if (!is_utf8(k) || !is_utf8(v)) return bad("an environment variable");
  }
  return {};
}

std::string basename_of(std::string_view command) {
  const auto slash = command.rfind('/');
  return std::string(slash == std::string_view::npos ? command : command.substr(slash + 1));
}

// Line and column (1-based) of a byte offset, for messages that must not quote
// the file (it may hold secrets: ~/.claude.json keeps OAuth state).
std::string where(std::string_view text, std::size_t offset) {
  offset = std::min(offset, text.size());
  std::size_t line = 1;
  std::size_t col = 1;
  for (std::size_t i = 0; i < offset; ++i) {
    if (text[i] == '\n') {
      ++line;
      col = 1;
    } else {
      ++col;
    }
  }
  return fmt::format("line {}, column {}", line, col);
}

bool is_blank(std::string_view text) {
  return std::all_of(text.begin(), text.end(),
                     [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; });
}

std::string newline_of(std::string_view text) {
  return text.find("\r\n") != std::string_view::npos ? "\r\n" : "\n";
}

// ---------------------------------------------------------------------------
// JSON clients

std::string_view json_container(McpClient client) {
  switch (client) {
    case McpClient::vscode:
      return "servers";
    case McpClient::opencode:
      return "mcp";
    default:
      return "mcpServers";
  }
}

OrderedJson json_value(McpClient client, const McpServerEntry& e) {
  OrderedJson env = OrderedJson::object();
  for (const auto& [k, v] : e.env) env[k] = v;
  OrderedJson v = OrderedJson::object();
  if (client == McpClient::opencode) {
    // opencode: one command array, "environment", "enabled".
    OrderedJson command = OrderedJson::array({e.command});
    for (const auto& a : e.args) command.push_back(a);
    v["type"] = "local";
    v["command"] = std::move(command);
    v["enabled"] = true;
    if (!e.env.empty()) v["environment"] = std::move(env);
    return v;
  }
  // Claude Code and VS Code name the transport; the others take command/args/env.
  if (client == McpClient::claude_code || client == McpClient::vscode) v["type"] = "stdio";
  v["command"] = e.command;
  v["args"] = e.args;
  if (!e.env.empty()) v["env"] = std::move(env);
  return v;
}

bool json_runs_tokenctl(const nlohmann::json& v) {
  if (!v.is_object()) return false;
  const auto it = v.find("command");
  if (it == v.end()) return false;
  if (it->is_string()) return basename_of(it->get<std::string>()) == "tokenctl";
  if (it->is_array() && !it->empty() && (*it)[0].is_string())
    return basename_of((*it)[0].get<std::string>()) == "tokenctl";
  return false;
}

std::string json_command_of(const nlohmann::json& v) {
  if (!v.is_object()) return "(not an object)";
  const auto it = v.find("command");
  if (it != v.end() && it->is_string()) return basename_of(it->get<std::string>()).substr(0, 64);
  if (it != v.end() && it->is_array() && !it->empty() && (*it)[0].is_string()) {
    return basename_of((*it)[0].get<std::string>()).substr(0, 64);
  }
  return "(no command)";
}

// Positions in JSON text that nlohmann has already accepted, so the scanner
// can assume well-formed input (it still never reads past the end).
class JsonText {
 public:
  struct Member {
    std::string key;
    std::size_t key_begin = 0;
    std::size_t value_begin = 0;
    std::size_t value_end = 0;
  };
  struct Object {
    std::size_t open = 0;
    std::size_t close = 0;
    std::vector<Member> members;
  };

  explicit JsonText(std::string_view t) : m_t(t) {}

  std::size_t start() const {
    std::size_t p = m_t.starts_with("\xEF\xBB\xBF") ? 3 : 0;
    return skip_ws(p);
  }

  std::size_t skip_ws(std::size_t p) const {
    while (p < m_t.size() && (m_t[p] == ' ' || m_t[p] == '\t' || m_t[p] == '\n' || m_t[p] == '\r'))
      ++p;
    return p;
  }

  std::size_t string_end(std::size_t p) const {
    ++p;
    while (p < m_t.size()) {
      if (m_t[p] == '\\') {
        p += 2;
      } else if (m_t[p] == '"') {
        return p + 1;
      } else {
        ++p;
      }
    }
    return m_t.size();
  }

  std::size_t value_end(std::size_t p) const {
    if (p >= m_t.size()) return p;
    if (m_t[p] == '"') return string_end(p);
    if (m_t[p] == '{' || m_t[p] == '[') {
      int depth = 0;
      while (p < m_t.size()) {
        const char c = m_t[p];
        if (c == '"') {
          p = string_end(p);
          continue;
        }
        if (c == '{' || c == '[') {
          ++depth;
        } else if (c == '}' || c == ']') {
          if (--depth == 0) return p + 1;
        }
        ++p;
      }
      return p;
    }
    while (p < m_t.size() && m_t[p] != ',' && m_t[p] != '}' && m_t[p] != ']' && m_t[p] != ' ' &&
           m_t[p] != '\t' && m_t[p] != '\n' && m_t[p] != '\r') {
      ++p;
    }
    return p;
  }

  Object object(std::size_t open) const {
    Object o;
    o.open = open;
    std::size_t p = skip_ws(open + 1);
    while (p < m_t.size() && m_t[p] == '"') {
      Member m;
      m.key_begin = p;
      const std::size_t key_end = string_end(p);
      m.key = nlohmann::json::parse(m_t.substr(p, key_end - p)).get<std::string>();
      p = skip_ws(skip_ws(key_end) + 1);  // past ':'
      m.value_begin = p;
      m.value_end = value_end(p);
      o.members.push_back(std::move(m));
      p = skip_ws(o.members.back().value_end);
      if (p < m_t.size() && m_t[p] == ',') p = skip_ws(p + 1);
    }
    o.close = p;
    return o;
  }

  // The whitespace that starts the line holding `pos`.
  std::string line_indent(std::size_t pos) const {
    std::size_t b = std::min(pos, m_t.size());
    while (b > 0 && m_t[b - 1] != '\n') --b;
    std::size_t e = b;
    while (e < m_t.size() && (m_t[e] == ' ' || m_t[e] == '\t')) ++e;
    return std::string(m_t.substr(b, e - b));
  }

  bool members_on_own_lines(const Object& o) const {
    return !o.members.empty() &&
           m_t.substr(o.open, o.members[0].key_begin - o.open).find('\n') != std::string_view::npos;
  }

 private:
  std::string_view m_t;
};

// `value` serialised for a place indented by `base`, nested levels by `unit`.
std::string dump_at(const OrderedJson& value, std::string_view unit, std::string_view base,
                    std::string_view nl) {
  const bool uniform = !unit.empty() && (unit[0] == ' ' || unit[0] == '\t') &&
                       std::all_of(unit.begin(), unit.end(), [&](char c) { return c == unit[0]; });
  const std::string text =
      value.dump(uniform ? static_cast<int>(unit.size()) : 2, uniform ? unit[0] : ' ');
  std::string out;
  for (const char c : text) {
    if (c == '\n') {
      out += nl;
      out += base;
    } else {
      out += c;
    }
  }
  return out;
}

// The first // or /* outside a string (JSONC comments), or npos.
std::size_t first_comment(std::string_view t) {
  bool in_string = false;
  for (std::size_t i = 0; i + 1 < t.size(); ++i) {
    if (in_string) {
      if (t[i] == '\\') {
        ++i;
      } else if (t[i] == '"') {
        in_string = false;
      }
    } else if (t[i] == '"') {
      in_string = true;
    } else if (t[i] == '/' && (t[i + 1] == '/' || t[i + 1] == '*')) {
      return i;
    }
  }
  return std::string_view::npos;
}

Result<Merged> merge_json(McpClient client, std::string_view existing, const McpServerEntry& entry,
                          bool replace_foreign, std::string_view source) {
  const OrderedJson value = json_value(client, entry);
  const std::string container(json_container(client));
  const std::string key_json = OrderedJson(entry.name).dump();
  if (is_blank(existing)) {
    OrderedJson doc = OrderedJson::object();
    doc[container][entry.name] = value;
    return Merged{doc.dump(2) + "\n", MergeAction::added};
  }
  nlohmann::json parsed;
  try {
    parsed = nlohmann::json::parse(existing);
  } catch (const nlohmann::json::parse_error& e) {
    if (nlohmann::json::accept(existing, /*ignore_comments=*/true)) {
      return fail(Errc::corrupt, fmt::format("{} has comments ({}), which tokenctl cannot keep "
                                             "when it rewrites the file; nothing was "
                                             "changed. Add the entry by hand (run the same command "
                                             "without --write to print it), or "
                                             "remove the comments and run again",
                                             source, where(existing, first_comment(existing))));
    }
    const std::size_t at = e.byte == 0 ? 0 : e.byte - 1;
    return fail(
        Errc::corrupt,
        fmt::format("{} is not valid JSON ({}); nothing was changed. Fix the file (or move it "
                    "aside) and run again",
                    source, where(existing, at)));
  }
  if (!parsed.is_object()) {
    return fail(
        Errc::corrupt,
        fmt::format("{} holds a JSON {}, not an object; nothing was changed. Fix the file (or move "
                    "it aside) and run again",
                    source, parsed.type_name()));
  }

  const JsonText t(existing);
  const std::string nl = newline_of(existing);
  const JsonText::Object top = t.object(t.start());
  // The file's own indentation unit, from its first member; two spaces else.
  std::string unit = "  ";
  if (t.members_on_own_lines(top)) {
    const std::string lead = t.line_indent(top.open);
    const std::string first = t.line_indent(top.members[0].key_begin);
    if (first.size() > lead.size() && first.starts_with(lead)) unit = first.substr(lead.size());
  }

  // A member `key_json: v` added to the end of object `o`.
  auto insert_member = [&](const JsonText::Object& o, const std::string& key,
                           const OrderedJson& v) {
    std::string out;
    if (o.members.empty()) {
      const std::string lead = t.line_indent(o.open);
      const std::string indent = lead + unit;
      out.append(existing.substr(0, o.open + 1));
      out += nl + indent + key + ": " + dump_at(v, unit, indent, nl) + nl + lead;
      out.append(existing.substr(o.close));
      return out;
    }
    const auto& last = o.members.back();
    out.append(existing.substr(0, last.value_end));
    if (t.members_on_own_lines(o)) {
      const std::string indent = t.line_indent(o.members[0].key_begin);
      out += "," + nl + indent + key + ": " + dump_at(v, unit, indent, nl);
    } else {
      out += ", " + key + ": " + v.dump();
    }
    out.append(existing.substr(last.value_end));
    return out;
  };

  std::vector<const JsonText::Member*> found;
  for (const auto& m : top.members) {
    if (m.key == container) found.push_back(&m);
  }
  if (found.size() > 1) {
    return fail(Errc::corrupt,
                fmt::format("{} has \"{}\" {} times; nothing was changed. Keep one and run again",
                            source, container, found.size()));
  }
  if (found.empty()) {
    OrderedJson servers = OrderedJson::object();
    servers[entry.name] = value;
    return Merged{insert_member(top, OrderedJson(container).dump(), servers), MergeAction::added};
  }
  const auto& cm = *found[0];
  if (existing[cm.value_begin] != '{') {
    return fail(
        Errc::corrupt,
        fmt::format(
            "{}: \"{}\" is a JSON {}, not an object ({}); nothing was changed. Fix the file "
            "and run again",
            source, container, parsed[container].type_name(), where(existing, cm.value_begin)));
  }
  const JsonText::Object servers = t.object(cm.value_begin);
  std::vector<const JsonText::Member*> same;
  for (const auto& m : servers.members) {
    if (m.key == entry.name) same.push_back(&m);
  }
  if (same.size() > 1) {
    return fail(
        Errc::corrupt,
        fmt::format("{} has the entry \"{}\" {} times; nothing was changed. Keep one and run again",
                    source, entry.name, same.size()));
  }
  if (same.empty()) return Merged{insert_member(servers, key_json, value), MergeAction::added};

  const nlohmann::json& old = parsed[container][entry.name];
  if (old == nlohmann::json::parse(value.dump()))
    return Merged{std::string(existing), MergeAction::unchanged};
  if (!replace_foreign && !json_runs_tokenctl(old)) {
    return fail(Errc::conflict, fmt::format("{} already has an entry \"{}\" that runs {}, not "
                                            "tokenctl; nothing was changed. Choose "
                                            "another name with --name, or replace it with --force",
                                            source, entry.name, json_command_of(old)));
  }
  const auto& m = *same[0];
  std::string out(existing.substr(0, m.value_begin));
  out += dump_at(value, unit, t.line_indent(m.key_begin), nl);
  out.append(existing.substr(m.value_end));
  return Merged{std::move(out), MergeAction::replaced};
}

// ---------------------------------------------------------------------------
// TOML (Codex)

bool is_bare_key(std::string_view k) {
  return !k.empty() && std::all_of(k.begin(), k.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

std::string toml_string(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) {
          out += fmt::format("\\u{:04X}", static_cast<unsigned>(static_cast<unsigned char>(c)));
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string toml_key(std::string_view k) {
  return is_bare_key(k) ? std::string(k) : toml_string(k);
}

std::string toml_block(const McpServerEntry& e, std::string_view nl) {
  std::string out = fmt::format("[mcp_servers.{}]{}", toml_key(e.name), nl);
  out += fmt::format("command = {}{}", toml_string(e.command), nl);
  out += "args = [";
  for (std::size_t i = 0; i < e.args.size(); ++i)
    out += (i == 0 ? "" : ", ") + toml_string(e.args[i]);
  out += fmt::format("]{}", nl);
  if (!e.env.empty()) {
    out += fmt::format("{}[mcp_servers.{}.env]{}", nl, toml_key(e.name), nl);
    for (const auto& [k, v] : e.env)
      out += fmt::format("{} = {}{}", toml_key(k), toml_string(v), nl);
  }
  return out;
}

void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Statement positions in a TOML file: enough to find, replace and append
// tables without touching anything else. It follows TOML 1.0 (and 1.1's
// newlines and trailing commas in inline tables) closely enough to know where
// every statement and multi-line value ends; it does not check everything a
// full parser would (duplicate keys, value types).
class TomlText {
 public:
  struct Table {
    std::vector<std::string> path;
    bool array = false;
    std::size_t begin = 0;  // start of the header's line
    std::size_t content_end =
        0;  // after the last statement's line (comments and blank lines after it excluded)
  };
  struct KeyValue {
    int table = -1;  // index in tables, -1 for the root
    std::vector<std::string> key;
    std::size_t value_begin = 0;
    std::size_t value_end = 0;
  };

  TomlText(std::string_view t, std::string_view source) : m_t(t), m_source(source) {}

  Result<> scan() {
    if (m_t.starts_with("\xEF\xBB\xBF")) m_p = 3;
    while (m_p < m_t.size()) {
      const std::size_t line_begin = m_p;
      skip_ws();
      if (m_p >= m_t.size()) break;
      if (m_t[m_p] == '#') {
        skip_comment();
        if (!newline()) return error("a comment runs into a stray carriage return");
        continue;
      }
      if (newline()) continue;
      if (m_t[m_p] == '[') {
        Table table;
        table.begin = line_begin;
        table.array = m_p + 1 < m_t.size() && m_t[m_p + 1] == '[';
        m_p += table.array ? 2 : 1;
        if (!key(table.path)) return std::unexpected(m_error);
        skip_ws();
        if (!expect(']') || (table.array && !expect(']')))
          return error("a table header is not closed with ]");
        if (!end_of_statement()) return std::unexpected(m_error);
        table.content_end = m_p;
        m_tables.push_back(std::move(table));
        continue;
      }
      KeyValue kv;
      kv.table = static_cast<int>(m_tables.size()) - 1;
      if (!key(kv.key)) return std::unexpected(m_error);
      skip_ws();
      if (!expect('=')) return error("expected = after a key");
      skip_ws();
      kv.value_begin = m_p;
      if (!value(0)) return std::unexpected(m_error);
      kv.value_end = m_p;
      if (!end_of_statement()) return std::unexpected(m_error);
      if (kv.table >= 0) m_tables[static_cast<std::size_t>(kv.table)].content_end = m_p;
      m_values.push_back(std::move(kv));
    }
    return {};
  }

  const std::vector<Table>& tables() const { return m_tables; }
  const std::vector<KeyValue>& values() const { return m_values; }

  // A string value's text decoded (basic or literal, single-line), or nullopt.
  static std::optional<std::string> decode_string(std::string_view token) {
    TomlText t(token, "");
    std::string out;
    if (token.starts_with("\"\"\"") || token.starts_with("'''")) return std::nullopt;
    if (!token.empty() && token[0] == '"' && t.basic_string(&out) && t.m_p == token.size())
      return out;
    if (!token.empty() && token[0] == '\'' && t.literal_string(&out) && t.m_p == token.size())
      return out;
    return std::nullopt;
  }

 private:
  static constexpr int k_max_depth = 64;

  std::unexpected<Error> error(std::string_view what) {
    m_error =
        Error(Errc::corrupt,
              fmt::format("{} is not TOML that tokenctl can read ({}: {}); nothing was changed. "
                          "Fix the file (or move it aside) and run again",
                          m_source, where(m_t, m_p), what));
    return std::unexpected(m_error);
  }

  bool bad(std::string_view what) {
    error(what);
    return false;
  }

  void skip_ws() {
    while (m_p < m_t.size() && (m_t[m_p] == ' ' || m_t[m_p] == '\t')) ++m_p;
  }
  void skip_comment() {
    while (m_p < m_t.size() && m_t[m_p] != '\n' &&
           !(m_t[m_p] == '\r' && m_p + 1 < m_t.size() && m_t[m_p + 1] == '\n')) {
      ++m_p;
    }
  }
  // Consumes a line ending (or stays at the end); false when there is none.
  bool newline() {
    if (m_p >= m_t.size()) return true;
    if (m_t[m_p] == '\n') {
      ++m_p;
      return true;
    }
    if (m_t[m_p] == '\r' && m_p + 1 < m_t.size() && m_t[m_p + 1] == '\n') {
      m_p += 2;
      return true;
    }
    return false;
  }
  bool expect(char c) {
    if (m_p < m_t.size() && m_t[m_p] == c) {
      ++m_p;
      return true;
    }
    return false;
  }
  bool end_of_statement() {
    skip_ws();
    if (m_p < m_t.size() && m_t[m_p] == '#') skip_comment();
    if (!newline()) {
      error("expected the end of the line");
      return false;
    }
    return true;
  }
  // Whitespace, newlines and comments inside arrays and inline tables.
  bool skip_blank() {
    for (;;) {
      skip_ws();
      if (m_p < m_t.size() && m_t[m_p] == '#') skip_comment();
      if (m_p >= m_t.size()) return true;
      if (m_t[m_p] != '\n' && m_t[m_p] != '\r') return true;
      if (!newline()) {
        error("a stray carriage return");
        return false;
      }
    }
  }

  bool key(std::vector<std::string>& out) {
    for (;;) {
      skip_ws();
      std::string part;
      if (m_p < m_t.size() && m_t[m_p] == '"') {
        if (!basic_string(&part)) return false;
      } else if (m_p < m_t.size() && m_t[m_p] == '\'') {
        if (!literal_string(&part)) return false;
      } else {
        const std::size_t b = m_p;
        while (m_p < m_t.size() && is_bare_key(m_t.substr(m_p, 1))) ++m_p;
        if (m_p == b) {
          error("expected a key");
          return false;
        }
        part = std::string(m_t.substr(b, m_p - b));
      }
      out.push_back(std::move(part));
      skip_ws();
      if (m_p < m_t.size() && m_t[m_p] == '.') {
        ++m_p;
        continue;
      }
      return true;
    }
  }

  bool hex(std::size_t digits, std::uint32_t& cp) {
    cp = 0;
    for (std::size_t i = 0; i < digits; ++i, ++m_p) {
      if (m_p >= m_t.size()) return false;
      const char c = m_t[m_p];
      cp <<= 4;
      if (c >= '0' && c <= '9') {
        cp |= static_cast<std::uint32_t>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        cp |= static_cast<std::uint32_t>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        cp |= static_cast<std::uint32_t>(c - 'A' + 10);
      } else {
        return false;
      }
    }
    return true;
  }

  bool basic_string(std::string* out) {
    ++m_p;  // "
    while (m_p < m_t.size()) {
      const char c = m_t[m_p];
      if (c == '"') {
        ++m_p;
        return true;
      }
      if (c == '\n' || c == '\r') break;
      if (c != '\\') {
        if (out != nullptr) *out += c;
        ++m_p;
        continue;
      }
      if (++m_p >= m_t.size()) break;
      const char e = m_t[m_p++];
      std::uint32_t cp = 0;
      switch (e) {
        case 'b':
          cp = '\b';
          break;
        case 't':
          cp = '\t';
          break;
        case 'n':
          cp = '\n';
          break;
        case 'f':
          cp = '\f';
          break;
        case 'r':
          cp = '\r';
          break;
        case 'e':
          cp = 0x1B;
          break;
        case '"':
          cp = '"';
          break;
        case '\\':
          cp = '\\';
          break;
        case 'x':
          if (!hex(2, cp)) return bad("a bad \\x escape");
          break;
        case 'u':
          if (!hex(4, cp)) return bad("a bad \\u escape");
          break;
        case 'U':
          if (!hex(8, cp)) return bad("a bad \\U escape");
          break;
        default:
          error("an unknown escape in a string");
          return false;
      }
      if (out != nullptr) append_utf8(*out, cp);
    }
    error("a string is not closed on its line");
    return false;
  }

  bool literal_string(std::string* out) {
    const std::size_t b = ++m_p;
    while (m_p < m_t.size() && m_t[m_p] != '\'' && m_t[m_p] != '\n' && m_t[m_p] != '\r') ++m_p;
    if (m_p >= m_t.size() || m_t[m_p] != '\'') {
      error("a string is not closed on its line");
      return false;
    }
    if (out != nullptr) *out = std::string(m_t.substr(b, m_p - b));
    ++m_p;
    return true;
  }

  bool multiline_string(char quote) {
    m_p += 3;
    while (m_p < m_t.size()) {
      if (quote == '"' && m_t[m_p] == '\\') {
        m_p += 2;
        continue;
      }
      if (m_t.substr(m_p).starts_with(std::string(3, quote))) {
        m_p += 3;
        // Up to two more quotes belong to the content: """a""""" ends after five.
        for (int extra = 0; extra < 2 && m_p < m_t.size() && m_t[m_p] == quote; ++extra) ++m_p;
        return true;
      }
      ++m_p;
    }
    error("a multi-line string is not closed");
    return false;
  }

  static bool is_digit(char c) { return c >= '0' && c <= '9'; }

  bool value(int depth) {
    if (depth > k_max_depth) return bad("values nested too deeply");
    if (m_p >= m_t.size()) return bad("expected a value");
    const std::string_view rest = m_t.substr(m_p);
    if (rest.starts_with("\"\"\"")) return multiline_string('"');
    if (rest.starts_with("'''")) return multiline_string('\'');
    if (rest[0] == '"') return basic_string(nullptr);
    if (rest[0] == '\'') return literal_string(nullptr);
    if (rest[0] == '[') {
      ++m_p;
      for (;;) {
        if (!skip_blank()) return false;
        if (expect(']')) return true;
        if (!value(depth + 1) || !skip_blank()) return false;
        if (expect(']')) return true;
        if (!expect(',')) return bad("expected , or ] in an array");
      }
    }
    if (rest[0] == '{') {
      ++m_p;
      if (!skip_blank()) return false;
      if (expect('}')) return true;
      for (;;) {
        std::vector<std::string> k;
        if (!key(k)) return false;
        skip_ws();
        if (!expect('=')) return bad("expected = in an inline table");
        skip_ws();
        if (!value(depth + 1) || !skip_blank()) return false;
        if (expect('}')) return true;
        if (!expect(',')) return bad("expected , or } in an inline table");
        if (!skip_blank()) return false;
        if (expect('}')) return true;
      }
    }
    const std::size_t b = m_p;
    auto scalar_end = [&] {
      while (m_p < m_t.size()) {
        const char c = m_t[m_p];
        if (c == ' ' || c == '\t' || c == '#' || c == ',' || c == ']' || c == '}' || c == '\n' ||
            c == '\r')
          break;
        ++m_p;
      }
    };
    scalar_end();
    // A date and a time separated by one space (RFC 3339, as TOML allows).
    const std::string_view token = m_t.substr(b, m_p - b);
    if (token.size() == 10 && token[4] == '-' && token[7] == '-' && m_p + 1 < m_t.size() &&
        m_t[m_p] == ' ' && is_digit(m_t[m_p + 1])) {
      ++m_p;
      scalar_end();
    }
    if (m_p == b) return bad("expected a value");
    return true;
  }

  std::string_view m_t;
  std::string_view m_source;
  std::size_t m_p = 0;
  Error m_error;
  std::vector<Table> m_tables;
  std::vector<KeyValue> m_values;
};

Result<Merged> merge_toml(std::string_view existing, const McpServerEntry& entry,
                          bool replace_foreign, std::string_view source) {
  const std::string nl = newline_of(existing);
  const std::string block = toml_block(entry, nl);
  if (is_blank(existing)) return Merged{toml_block(entry, "\n"), MergeAction::added};

  TomlText doc(existing, source);
  if (auto ok = doc.scan(); !ok) return std::unexpected(ok.error());
  const std::vector<std::string> main_path{"mcp_servers", entry.name};
  const std::vector<std::string> env_path{"mcp_servers", entry.name, "env"};
  const auto& tables = doc.tables();

  auto unsupported = [&](std::size_t at, std::string_view what) {
    return fail(
        Errc::corrupt,
        fmt::format("{} defines {} ({}), a form tokenctl does not edit; nothing was changed. "
                    "Write it as a [mcp_servers.{}] table, or remove it, and run again",
                    source, what, where(existing, at), entry.name));
  };
  for (const auto& kv : doc.values()) {
    std::vector<std::string> full =
        kv.table < 0 ? std::vector<std::string>{} : tables[static_cast<std::size_t>(kv.table)].path;
    const bool inside_ours = full.size() >= 2 && full[0] == "mcp_servers" && full[1] == entry.name;
    full.insert(full.end(), kv.key.begin(), kv.key.end());
    if (full.size() == 1 && full[0] == "mcp_servers")
      return unsupported(kv.value_begin, "mcp_servers as an inline table");
    if (!inside_ours && full.size() >= 2 && full[0] == "mcp_servers" && full[1] == entry.name) {
      return unsupported(
          kv.value_begin,
          fmt::format("the server \"{}\" with dotted keys or an inline table", entry.name));
    }
  }
  std::optional<std::size_t> main_index;
  std::optional<std::size_t> env_index;
  for (std::size_t i = 0; i < tables.size(); ++i) {
    const auto& p = tables[i].path;
    if (tables[i].array && !p.empty() && p[0] == "mcp_servers" &&
        (p.size() == 1 || p[1] == entry.name)) {
      return unsupported(tables[i].begin, "an array of tables [[...]] for mcp_servers");
    }
    if (p != main_path && p != env_path) continue;
    auto& slot = p == main_path ? main_index : env_index;
    if (slot) {
      return fail(
          Errc::corrupt,
          fmt::format("{} defines the table at {} twice, which TOML forbids; nothing was changed. "
                      "Keep one and run again",
                      source, where(existing, tables[i].begin)));
    }
    slot = i;
  }

  if (main_index) {
    std::optional<std::string> command;
    for (const auto& kv : doc.values()) {
      if (kv.table == static_cast<int>(*main_index) &&
          kv.key == std::vector<std::string>{"command"}) {
        command =
            TomlText::decode_string(existing.substr(kv.value_begin, kv.value_end - kv.value_begin));
      }
    }
    if (!replace_foreign && (!command || basename_of(*command) != "tokenctl")) {
      return fail(Errc::conflict,
                  fmt::format("{} already has a server \"{}\" that runs {}, not tokenctl; nothing "
                              "was changed. Choose "
                              "another name with --name, or replace it with --force",
                              source, entry.name,
                              command ? basename_of(*command).substr(0, 64) : "(no command)"));
    }
  }

  // Ranges of the old text to drop, and where the new block goes.
  std::vector<std::pair<std::size_t, std::size_t>> drop;
  std::size_t insert_at = existing.size();
  bool append = true;
  if (main_index) {
    const auto& m = tables[*main_index];
    std::size_t end = m.content_end;
    if (env_index) {
      const auto& e = tables[*env_index];
      // The env table right after ours (only blank lines between) is replaced with it.
      if (e.begin >= end && is_blank(existing.substr(end, e.begin - end))) {
        end = e.content_end;
      } else {
        drop.emplace_back(e.begin, e.content_end);
      }
    }
    drop.emplace_back(m.begin, end);
    insert_at = m.begin;
    append = false;
  } else if (env_index) {
    drop.emplace_back(tables[*env_index].begin, tables[*env_index].content_end);
  }
  std::sort(drop.begin(), drop.end());

  std::string out;
  std::size_t pos = 0;
  for (const auto& [b, e] : drop) {
    out.append(existing.substr(pos, b - pos));
    if (!append && b == insert_at) out += block;
    pos = e;
  }
  out.append(existing.substr(pos));
  if (append) {
    if (!out.empty() && !out.ends_with('\n')) out += nl;
    if (!out.empty() && !out.ends_with(nl + nl)) out += nl;
    out += block;
  }
  if (out == existing) return Merged{std::move(out), MergeAction::unchanged};
  return Merged{std::move(out), main_index ? MergeAction::replaced : MergeAction::added};
}

// ---------------------------------------------------------------------------
// Files

stdfs::path home_dir(const EnvLookup& env) {
  if (auto h = env("HOME"); h && !h->empty() && h->front() == '/') return *h;
  if (const struct passwd* pw = ::getpwuid(::getuid()); pw != nullptr && pw->pw_dir != nullptr)
    return pw->pw_dir;
  return "/";
}

stdfs::path xdg_config_home(const EnvLookup& env) {
  if (auto x = env("XDG_CONFIG_HOME"); x && !x->empty() && x->front() == '/') return *x;
  return home_dir(env) / ".config";
}

bool path_exists(const stdfs::path& p) {
  std::error_code ec;
  return stdfs::exists(p, ec);
}

struct ReadFile {
  bool exists = false;
  std::string text;
  mode_t mode = 0600;
};

constexpr std::size_t k_max_config_bytes = 64u << 20;

Result<ReadFile> read_config(const stdfs::path& path) {
  ReadFile r;
  const Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) {
    const int err = errno;
    if (err == ENOENT) return r;
    return fail(Errc::io, fmt::format("reading {}: {}", path.string(), errno_text(err)));
  }
  struct stat st{};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return fail(Errc::io,
                fmt::format("{} is not a regular file; nothing was changed", path.string()));
  }
  if (static_cast<std::size_t>(st.st_size) > k_max_config_bytes) {
    return fail(Errc::limit_exceeded,
                fmt::format("{} is larger than 64 MiB; nothing was changed", path.string()));
  }
  r.exists = true;
  r.mode = st.st_mode & 07777;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      return fail(Errc::io, fmt::format("reading {}: {}", path.string(), errno_text(err)));
    }
    if (n == 0) break;
    r.text.append(buf, static_cast<std::size_t>(n));
    if (r.text.size() > k_max_config_bytes) {
      return fail(Errc::limit_exceeded,
                  fmt::format("{} is larger than 64 MiB; nothing was changed", path.string()));
    }
  }
  return r;
}

// Missing directories from the top down, each 0700 (they hold config that may
// name credentials' locations; the client creates its own otherwise).
Result<> make_parents(const stdfs::path& dir) {
  if (dir.empty() || path_exists(dir)) return {};
  if (auto up = make_parents(dir.parent_path()); !up) return up;
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return fail(Errc::io, fmt::format("creating {}: {}", dir.string(), errno_text(errno)));
  }
  return {};
}

}  // namespace

std::optional<McpClient> parse_mcp_client(std::string_view name) {
  for (const auto& [c, n] : k_clients) {
    if (n == name) return c;
  }
  return std::nullopt;
}

std::string_view mcp_client_name(McpClient client) {
  for (const auto& [c, n] : k_clients) {
    if (c == client) return n;
  }
  return "?";
}

std::string_view mcp_client_list() {
  return "claude-code, claude-desktop, codex, cursor, vscode, gemini or opencode";
}

Result<> validate_entry_name(std::string_view name) {
  if (name.empty() || name.size() > 64 || !is_bare_key(name)) {
    return fail(Errc::invalid_argument,
                fmt::format("entry name '{}' must be 1-64 letters, digits, '-' or '_'",
                            name.substr(0, 64)));
  }
  return {};
}

std::string default_entry_name(std::string_view profile) {
  std::string out(profile);
  std::replace(out.begin(), out.end(), '.', '-');
  return out;
}

McpServerEntry bridge_entry(std::string name, std::string tokenctl, std::string_view profile,
                            std::vector<std::pair<std::string, std::string>> env) {
  return {std::move(name), std::move(tokenctl), {"mcp", std::string(profile)}, std::move(env)};
}

McpServerEntry exec_entry(std::string name, std::string tokenctl, std::string_view profile,
                          const std::vector<std::string>& exec_options,
                          const std::vector<std::string>& command,
                          std::vector<std::pair<std::string, std::string>> env) {
  McpServerEntry e{
      std::move(name), std::move(tokenctl), {"exec", std::string(profile)}, std::move(env)};
  if (std::find(exec_options.begin(), exec_options.end(), "--endpoint") == exec_options.end()) {
    e.args.emplace_back("--endpoint");
  }
  e.args.insert(e.args.end(), exec_options.begin(), exec_options.end());
  e.args.emplace_back("--");
  e.args.insert(e.args.end(), command.begin(), command.end());
  return e;
}

Result<std::string> render_entry(McpClient client, const McpServerEntry& entry) {
  if (auto ok = check_utf8(entry); !ok) return std::unexpected(ok.error());
  if (client == McpClient::codex) return toml_block(entry, "\n");
  OrderedJson doc = OrderedJson::object();
  doc[std::string(json_container(client))][entry.name] = json_value(client, entry);
  return doc.dump(2) + "\n";
}

Result<Merged> merge_entry(McpClient client, std::string_view existing, const McpServerEntry& entry,
                           bool replace_foreign, std::string_view source) {
  if (auto ok = check_utf8(entry); !ok) return std::unexpected(ok.error());
  if (auto ok = validate_entry_name(entry.name); !ok) return std::unexpected(ok.error());
  if (client == McpClient::codex) return merge_toml(existing, entry, replace_foreign, source);
  return merge_json(client, existing, entry, replace_foreign, source);
}

HostOs host_os() {
#ifdef __APPLE__
  return HostOs::macos;
#else
  return HostOs::linux_like;
#endif
}

stdfs::path default_config_path(McpClient client, HostOs os, const EnvLookup& env,
                                bool (*exists)(const stdfs::path&)) {
  stdfs::path home = home_dir(env);  // not const: returned, and moved then
  const stdfs::path app_support = home / "Library" / "Application Support";
  switch (client) {
    case McpClient::claude_code:
      return home / ".claude.json";
    case McpClient::claude_desktop:
      return (os == HostOs::macos ? app_support : xdg_config_home(env)) / "Claude" /
             "claude_desktop_config.json";
    case McpClient::codex: {
      auto codex_home = env("CODEX_HOME");
      const stdfs::path dir = codex_home && !codex_home->empty() && codex_home->front() == '/'
                                  ? stdfs::path(*codex_home)
                                  : home / ".codex";
      return dir / "config.toml";
    }
    case McpClient::cursor:
      return home / ".cursor" / "mcp.json";
    case McpClient::vscode:
      return (os == HostOs::macos ? app_support : xdg_config_home(env)) / "Code" / "User" /
             "mcp.json";
    case McpClient::gemini:
      return home / ".gemini" / "settings.json";
    case McpClient::opencode: {
      // opencode reads ~/.config/opencode on macOS too (XDG base directories).
      const stdfs::path dir = xdg_config_home(env) / "opencode";
      if (exists == nullptr) exists = path_exists;
      if (!exists(dir / "opencode.json") && exists(dir / "opencode.jsonc"))
        return dir / "opencode.jsonc";
      return dir / "opencode.json";
    }
  }
  return home;
}

Result<WriteOutcome> write_entry_to_file(McpClient client, const stdfs::path& path,
                                         const McpServerEntry& entry, bool replace_foreign,
                                         std::time_t now) {
  WriteOutcome out;
  out.file = path;
  std::error_code ec;
  if (stdfs::is_symlink(path, ec)) {
    // Dotfile managers link config files; write the file the link names.
    out.file = stdfs::canonical(path, ec);
    if (ec) {
      return fail(
          Errc::io,
          fmt::format("{} is a symlink to a file that cannot be reached ({}); nothing was changed",
                      path.string(), ec.message()));
    }
  }
  auto old = read_config(out.file);
  if (!old) return std::unexpected(old.error());
  auto merged = merge_entry(client, old->text, entry, replace_foreign, out.file.string());
  if (!merged) return std::unexpected(merged.error());
  out.action = merged->action;
  if (merged->action == MergeAction::unchanged) return out;

  if (auto ok = make_parents(out.file.parent_path()); !ok) return std::unexpected(ok.error());
  if (old->exists) {
    std::tm tm{};
    ::localtime_r(&now, &tm);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%S", &tm);
    const std::string base = out.file.string() + ".bak-" + stamp;
    for (int n = 0; n < 100 && !out.backup; ++n) {
      const stdfs::path candidate =
          n == 0 ? stdfs::path(base) : stdfs::path(fmt::format("{}-{}", base, n));
      auto w = fs::write_file_atomic(candidate, old->text, old->mode, /*exclusive=*/true);
      if (w) {
        out.backup = candidate;
      } else if (w.error().code != Errc::already_exists) {
        return fail(Errc::io, fmt::format("keeping a backup of {}: {}; nothing was changed",
                                          out.file.string(), w.error().message));
      }
    }
    if (!out.backup) {
      return fail(Errc::io, fmt::format("no free backup name next to {}; nothing was changed",
                                        out.file.string()));
    }
    // The client may have rewritten its file meanwhile (Claude Code rewrites
    // ~/.claude.json often): never replace a version we did not merge into.
    auto again = read_config(out.file);
    if (!again || again->text != old->text) {
      ::unlink(out.backup->c_str());
      return fail(
          Errc::conflict,
          fmt::format("{} changed while tokenctl was merging into it; nothing was changed. Run "
                      "the command again",
                      out.file.string()));
    }
  }
  if (auto w = fs::write_file_atomic(out.file, merged->text, old->exists ? old->mode : 0600); !w) {
    return fail(Errc::io, fmt::format("{}; {} is unchanged", w.error().message, out.file.string()));
  }
  return out;
}

std::string tokenctl_path() {
#ifdef __APPLE__
  std::uint32_t size = PATH_MAX;
  std::string buf(size, '\0');
  if (::_NSGetExecutablePath(buf.data(), &size) == 0) {
    char real[PATH_MAX];
    if (::realpath(buf.c_str(), real) != nullptr) return real;
  }
  return "tokenctl";
#else
  char buf[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "tokenctl";
  std::string path(buf, static_cast<std::size_t>(n));
  // A binary replaced while it runs (a rebuild, an upgrade) reads " (deleted)";
  // the path still names where the new one is.
  if (path.ends_with(" (deleted)")) path.resize(path.size() - 10);
  return path.starts_with('/') ? path : "tokenctl";
#endif
}

Result<McpConfigArgs> parse_mcp_config_args(const std::vector<std::string>& args) {
  McpConfigArgs out;
  const auto dash = std::find(args.begin(), args.end(), "--");
  const bool wraps = dash != args.end();
  auto usage = [](std::string message) { return fail(Errc::invalid_argument, std::move(message)); };
  for (auto it = args.begin(); it != dash; ++it) {
    const std::string& a = *it;
    if (a == "--help" || a == "-h") {
      out.help = true;
      return out;
    }
    // --opt VALUE or --opt=VALUE for mcp config's own options.
    auto value_of = [&](std::string_view opt) -> std::optional<std::string> {
      if (a == opt) {
        if (std::next(it) == dash) return std::nullopt;
        return *++it;
      }
      return a.substr(opt.size() + 1);
    };
    auto is = [&](std::string_view opt) {
      return a == opt || a.starts_with(std::string(opt) + "=");
    };
    if (is("--client")) {
      auto v = value_of("--client");
      if (!v) return usage("--client needs a value: " + std::string(mcp_client_list()));
      if (out.client) return usage("--client given twice");
      out.client = parse_mcp_client(*v);
      if (!out.client) {
        return usage(fmt::format("--client {}: not a client tokenctl knows; use {}",
                                 v->substr(0, 64), mcp_client_list()));
      }
    } else if (is("--name")) {
      auto v = value_of("--name");
      if (!v) return usage("--name needs a value");
      if (auto ok = validate_entry_name(*v); !ok) return usage(ok.error().message);
      out.name = *v;
    } else if (is("--file")) {
      auto v = value_of("--file");
      if (!v || v->empty()) return usage("--file needs a path");
      out.file = *v;
    } else if (a == "--write") {
      out.write = true;
    } else if (a == "--force") {
      out.force = true;
    } else if (out.profile.empty() && !a.starts_with("-")) {
      out.profile = a;
    } else if (!wraps) {
      return usage(
          fmt::format("unexpected '{}' (options for tokenctl exec go before -- CMD, after PROFILE)",
                      a.substr(0, 64)));
    } else if (out.profile.empty()) {
      return usage(fmt::format("PROFILE comes before exec's options ('{}')", a.substr(0, 64)));
    } else {
      out.exec_options.push_back(a);
    }
  }
  if (out.profile.empty()) return usage("missing PROFILE");
  if (auto ok = validate_profile_name(out.profile); !ok) return usage(ok.error().message);
  if (!out.client) return usage(fmt::format("missing --client ({})", mcp_client_list()));
  if (out.file && !out.write)
    return usage("--file goes with --write (without it the entry is only printed)");
  if (out.force && !out.write) return usage("--force goes with --write");
  if (wraps) {
    out.command.assign(std::next(dash), args.end());
    if (out.command.empty() || out.command[0].empty()) return usage("no command after --");
    if (out.command[0].starts_with("-")) {
      return usage(
          fmt::format("'{}' after -- is not a command; exec's options go between PROFILE and --",
                      out.command[0].substr(0, 64)));
    }
  }
  return out;
}

}  // namespace tokend::ctl

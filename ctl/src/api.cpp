#include "ctl/api.hpp"

#include <fmt/format.h>
#include <strings.h>

#include <algorithm>
#include <array>
#include <cctype>

#include "client/api.hpp"
#include "core/json.hpp"

namespace tokend::ctl {

namespace {

bool is_tchar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool is_hex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

bool iequal(std::string_view a, std::string_view b) {
  return a.size() == b.size() && ::strncasecmp(a.data(), b.data(), a.size()) == 0;
}

bool istarts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && iequal(s.substr(0, prefix.size()), prefix);
}

// RFC 3986 pchar minus '%' (handled apart), plus '/' and '?' (which may
// appear in a path and a query).
bool target_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         std::string_view("-._~!$&'()*+,;=:@/?").find(c) != std::string_view::npos;
}

}  // namespace

Result<std::string> normalize_method(std::string_view method) {
  if (method.empty() || method.size() > 20 ||
      !std::all_of(method.begin(), method.end(),
                   [](char c) { return std::isalpha(static_cast<unsigned char>(c)); })) {
    return fail(Errc::invalid_argument,
                "METHOD must be an HTTP method such as GET, POST, PUT, PATCH, DELETE or HEAD");
  }
  std::string out(method);
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

Result<std::string> proxy_target(std::string_view profile, std::string_view path) {
  if (path.starts_with('/')) path.remove_prefix(1);
  if (path.empty() || path.starts_with('?')) {
    return fail(Errc::invalid_argument,
                "PATH is empty; give the API path, e.g. jira/rest/api/3/myself");
  }
  std::string out = client::paths::proxy_prefix(profile);
  for (std::size_t i = 0; i < path.size(); ++i) {
    const char c = path[i];
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      return fail(Errc::invalid_argument,
                  "PATH contains a line break or another control character");
    }
    // Kept as they are: target characters, and an escape the caller wrote.
    if (target_char(c) ||
        (c == '%' && i + 2 < path.size() && is_hex(path[i + 1]) && is_hex(path[i + 2]))) {
      out += c;
    } else {
      out += fmt::format("%{:02X}", static_cast<unsigned>(u));
    }
  }
  return out;
}

Result<std::pair<std::string, std::string>> parse_header_arg(std::string_view arg) {
  const auto colon = arg.find(':');
  if (colon == std::string_view::npos) {
    return fail(Errc::invalid_argument,
                "-H takes \"Name: value\" (a header name, a colon, the value)");
  }
  const std::string_view name = arg.substr(0, colon);
  if (name.empty())
    return fail(Errc::invalid_argument, "-H \": ...\" has no header name before the colon");
  if (!std::all_of(name.begin(), name.end(), is_tchar)) {
    const bool space = name.find_first_of(" \t") != std::string_view::npos;
    return fail(Errc::invalid_argument,
                space ? "-H: a header name cannot contain spaces, and nothing may stand between it "
                        "and the colon"
                      : "-H: the header name may only contain letters, digits and !#$%&'*+-.^_`|~");
  }
  std::string_view value = arg.substr(colon + 1);
  for (const char c : value) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\r' || c == '\n' || c == '\0') {
      return fail(Errc::invalid_argument,
                  fmt::format("-H {}: the value cannot contain a line break or NUL", name));
    }
    if ((u < 0x20 && c != '\t') || u == 0x7f) {
      return fail(Errc::invalid_argument,
                  fmt::format("-H {}: the value cannot contain control characters", name));
    }
  }
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
  return std::pair<std::string, std::string>(std::string(name), std::string(value));
}

bool is_framing_header(std::string_view name) {
  // Expect too: tokenctl sends the body at once and reads one final answer,
  // so a "100 Continue" interim answer would be mistaken for it.
  constexpr std::array<std::string_view, 9> k_framing = {
      "Host", "Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive",
      "TE",   "Trailer",        "Upgrade",           "Expect"};
  return std::any_of(k_framing.begin(), k_framing.end(),
                     [&](std::string_view f) { return iequal(name, f); });
}

bool is_replaced_header(std::string_view name) {
  if (iequal(name, "Authorization") || iequal(name, "Cookie") || istarts_with(name, "Proxy-"))
    return true;
  return istarts_with(name, "X-Tokend-") && !iequal(name, "X-Tokend-Retry-Wait");
}

std::optional<DataArg> parse_data_arg(const std::optional<std::string>& arg) {
  if (!arg) return std::nullopt;
  if (*arg == "-" || *arg == "@-") return DataArg{DataArg::Kind::stdin_stream, {}};
  if (arg->starts_with('@')) return DataArg{DataArg::Kind::file, arg->substr(1)};
  return DataArg{DataArg::Kind::literal, *arg};
}

std::optional<TokendError> parse_tokend_error(std::string_view body) {
  auto j = json::parse(body, "answer");
  if (!j || !j->is_object() || j->size() != 1 || !j->contains("error")) return std::nullopt;
  const auto& e = (*j)["error"];
  if (!e.is_object()) return std::nullopt;
  const auto code = e.find("code");
  const auto message = e.find("message");
  if (code == e.end() || message == e.end() || !code->is_string() || !message->is_string())
    return std::nullopt;
  TokendError out{code->get<std::string>(), message->get<std::string>(), {}};
  if (const auto command = e.find("command"); command != e.end() && command->is_string()) {
    out.command = command->get<std::string>();
  }
  return out;
}

std::string render_response_head(const client::ResponseHead& head) {
  std::string out = fmt::format("HTTP/1.1 {}", head.status);
  if (!head.reason.empty()) out += " " + head.reason;
  out += "\n";
  for (const auto& [name, value] : head.headers) out += fmt::format("{}: {}\n", name, value);
  out += "\n";
  return out;
}

}  // namespace tokend::ctl

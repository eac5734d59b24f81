#include "tokens/sinks.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>

#include "core/fs.hpp"

namespace tokend::tokens {

namespace {

constexpr std::size_t k_max_dotenv_bytes = 1024 * 1024;

bool valid_variable(std::string_view v) {
  if (v.empty() || v.size() > 128 || (v[0] >= '0' && v[0] <= '9')) return false;
  for (const char c : v) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    if (!ok) return false;
  }
  return true;
}

// The dotenv value as both readers of a .env file take it back: python-dotenv
// and a shell that sources it (`set -a; . ./.env`). Plain when every
// character is inert to both; otherwise in single quotes, where a shell
// takes everything literally and python-dotenv unescapes only \\ and \' —
// so a value holding ' or \ (or a line break, or any other control
// character) has no form both read back the same, and is refused.
Result<std::string> dotenv_value(std::string_view v) {
  const auto inert = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 ||
           std::string_view("-._~+/=:@%,").find(c) != std::string_view::npos;
  };
  if (std::all_of(v.begin(), v.end(), inert)) return std::string(v);
  for (const char c : v) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f || c == '\'' || c == '\\') {
      return std::unexpected(bad_input(
          "the value holds a line break, a control character, a quote or a backslash, which "
          "a .env file cannot carry safely; not written"));
    }
  }
  return "'" + std::string(v) + "'";
}

// A header sink line must stay one line whatever the token holds.
bool one_line(std::string_view v) {
  return v.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

}  // namespace

Result<std::vector<store::Sink>> validate_sinks(const json::Json& sinks) {
  if (!sinks.is_array()) return std::unexpected(bad_input("field \"sinks\" must be a list"));
  if (sinks.size() > 16) return std::unexpected(bad_input("at most 16 sinks per profile"));
  std::vector<store::Sink> out;
  for (const auto& s : sinks) {
    if (!s.is_object()) return std::unexpected(bad_input("each sink must be an object"));
    const auto type =
        s.contains("type") && s["type"].is_string() ? s["type"].get<std::string>() : "";
    const auto path =
        s.contains("path") && s["path"].is_string() ? s["path"].get<std::string>() : "";
    if (type != "file" && type != "dotenv")
      return std::unexpected(bad_input("sink type must be file or dotenv"));
    if (path.empty() || path[0] != '/' || path.find('\0') != std::string::npos ||
        path.size() > 4096) {
      return std::unexpected(bad_input("sink path must be an absolute path"));
    }
    store::Sink n;
    n.type = type == "file" ? store::Sink::Type::file : store::Sink::Type::dotenv;
    n.path = path;
    for (const auto& [k, v] : s.items()) {
      if (k != "type" && k != "path" && k != "format" && k != "variable") {
        return std::unexpected(
            bad_input(fmt::format("sink field \"{}\" is not known", k.substr(0, 32))));
      }
    }
    if (type == "file") {
      const auto format =
          s.contains("format") && s["format"].is_string() ? s["format"].get<std::string>() : "raw";
      if (format == "raw") {
        n.format = store::Sink::Format::raw;
      } else if (format == "header") {
        n.format = store::Sink::Format::header;
      } else if (format == "json") {
        n.format = store::Sink::Format::json;
      } else {
        return std::unexpected(bad_input("file sink format must be raw, header or json"));
      }
    } else {
      const auto var = s.contains("variable") && s["variable"].is_string()
                           ? s["variable"].get<std::string>()
                           : "ACCESS_TOKEN";
      if (!valid_variable(var))
        return std::unexpected(bad_input("dotenv sink variable must be a shell variable name"));
      n.variable = var;
    }
    out.push_back(std::move(n));
  }
  return out;
}

Result<std::string> update_dotenv(std::string_view existing, std::string_view variable,
                                  std::string_view value) {
  if (existing.find('\0') != std::string_view::npos) {
    return fail(Errc::invalid_argument, "the .env file holds binary data; not touching it");
  }
  auto quoted = dotenv_value(value);
  if (!quoted) return std::unexpected(quoted.error());
  struct Wipe {
    std::string& s;
    ~Wipe() { secure_wipe(s); }
  } wipe_quoted{*quoted};
  std::string out;
  out.reserve(existing.size() + variable.size() + value.size() + 2);
  bool replaced = false;
  std::size_t pos = 0;
  while (pos < existing.size()) {
    const auto nl = existing.find('\n', pos);
    const std::size_t end = nl == std::string_view::npos ? existing.size() : nl;
    std::string_view line = existing.substr(pos, end - pos);
    std::string_view key = line;
    while (!key.empty() && (key.front() == ' ' || key.front() == '\t')) key.remove_prefix(1);
    std::string prefix;
    if (key.starts_with("export ")) {
      prefix = "export ";
      key.remove_prefix(7);
      while (!key.empty() && key.front() == ' ') key.remove_prefix(1);
    }
    const bool match = key.starts_with(variable) && key.size() > variable.size() &&
                       (key[variable.size()] == '=' || key[variable.size()] == ' ');
    if (match && !replaced) {
      out += prefix + std::string(variable) + "=" + *quoted;
      replaced = true;
    } else {
      out += line;  // every other line kept byte for byte (later duplicates too)
    }
    if (nl != std::string_view::npos) out += '\n';
    pos = end + 1;
  }
  if (!replaced) {
    if (!out.empty() && out.back() != '\n') out += '\n';
    out += std::string(variable) + "=" + *quoted + "\n";
  }
  return out;
}

Result<> write_sinks(const store::Profile& profile, const store::Credential& c) {
  if (!profile.config.sinks || c.access_token.empty()) return {};
  Result<> first;
  for (const store::Sink& s : *profile.config.sinks) {
    const std::string& path = s.path;
    Result<> r;
    if (s.type == store::Sink::Type::file) {
      using Format = store::Sink::Format;
      std::string content;
      const std::string type_name = c.token_type.empty() ? "Bearer" : c.token_type;
      if (s.format == Format::header &&
          !(one_line(type_name) && one_line(c.access_token.reveal()))) {
        r = fail(Errc::invalid_argument,
                 "the token or its type holds a line break; the header file is not written");
      } else if (s.format == Format::header) {
        content = "Authorization: " + type_name + " " + std::string(c.access_token.reveal()) + "\n";
      } else if (s.format == Format::json) {
        json::Json j = {{"access_token", c.access_token.reveal()}, {"token_type", type_name}};
        j["expires_at"] =
            c.expires_at_ms ? json::Json(*c.expires_at_ms / 1000) : json::Json(nullptr);
        content = j.dump() + "\n";
      } else {
        content = std::string(c.access_token.reveal()) + "\n";
      }
      if (r) r = fs::write_file_atomic(path, content, 0600);
      secure_wipe(content);
    } else {
      std::string existing;
      struct stat st{};
      if (::lstat(path.c_str(), &st) == 0) {
        if (!S_ISREG(st.st_mode)) {
          r = fail(Errc::config, fmt::format("dotenv sink {} is not a regular file", path));
        } else {
          auto text = fs::read_private_file(path, k_max_dotenv_bytes);
          if (!text) {
            r = std::unexpected(text.error());
          } else {
            existing = std::string(text->reveal());
          }
        }
      }
      if (r) {
        auto updated = update_dotenv(existing, s.variable, c.access_token.reveal());
        if (!updated) {
          r = std::unexpected(updated.error());
        } else {
          r = fs::write_file_atomic(path, *updated, 0600);
          secure_wipe(*updated);
        }
      }
      secure_wipe(existing);
    }
    if (!r) {
      spdlog::warn("profile {}: sink {} not written: {}", profile.name, path, r.error().message);
      if (first) first = r;
    }
  }
  return first;
}

}  // namespace tokend::tokens

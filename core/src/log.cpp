#include "core/log.hpp"

#include <fmt/chrono.h>
#include <spdlog/details/os.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <algorithm>
#include <cctype>
#include <ctime>
#include <mutex>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/encoding.hpp"
#include "core/paths.hpp"
#include "core/secret.hpp"

namespace tokend::log {

namespace {

// The redaction guard: finds credential-shaped values and masks them.
// A scanner rather than std::regex: it runs on every log line.
struct Span {
  std::size_t begin;
  std::size_t end;
};

constexpr std::string_view k_form_keys[] = {
    "access_token", "refresh_token", "id_token", "client_secret", "code_verifier",
    "password",     "token",         "code",     "api_key",       "secret"};
constexpr std::string_view k_json_keys[] = {
    "access_token",  "refresh_token", "id_token", "client_secret", "previous_refresh_token",
    "code_verifier", "password",      "token",    "secret",        "api_token"};

bool is_word(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-';
}
bool is_token_char(char c) {
  return is_word(c) || c == '.' || c == '~' || c == '+' || c == '/' || c == '=';
}
bool at_word_start(std::string_view s, std::size_t i) {
  return i == 0 || !is_word(s[i - 1]);
}
std::size_t skip_spaces(std::string_view s, std::size_t i) {
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
  return i;
}
std::size_t value_end(std::string_view s, std::size_t i, std::string_view stops) {
  while (i < s.size() && stops.find(s[i]) == std::string_view::npos && s[i] != ' ' &&
         s[i] != '\t' && s[i] != '\n' && s[i] != '\r') {
    ++i;
  }
  return i;
}

// Every occurrence of `key` starting a word in the lower-cased line.
template <class F>
void for_each_word(std::string_view lower, std::string_view key, F&& f) {
  for (std::size_t i = lower.find(key); i != std::string_view::npos; i = lower.find(key, i + 1)) {
    if (at_word_start(lower, i)) f(i + key.size());
  }
}

void collect(std::string_view line, std::string_view lower, std::vector<Span>& spans) {
  // key=value in URLs and form bodies
  for (const auto key : k_form_keys) {
    for_each_word(lower, key, [&](std::size_t i) {
      if (i < line.size() && line[i] == '=') {
        const std::size_t e = value_end(line, i + 1, "&\"'");
        if (e > i + 1) spans.push_back({i + 1, e});
      }
    });
  }
  // "key": "value" in JSON
  for (const auto key : k_json_keys) {
    const std::string quoted = "\"" + std::string(key) + "\"";
    for (std::size_t i = lower.find(quoted); i != std::string_view::npos;
         i = lower.find(quoted, i + 1)) {
      std::size_t j = skip_spaces(line, i + quoted.size());
      if (j >= line.size() || line[j] != ':') continue;
      j = skip_spaces(line, j + 1);
      if (j >= line.size() || line[j] != '"') continue;
      std::size_t e = ++j;
      while (e < line.size() && !(line[e] == '"' && line[e - 1] != '\\')) ++e;
      if (e > j) spans.push_back({j, e});
    }
  }
  // Authorization: <scheme> <credential>
  for (const auto key :
       {std::string_view("authorization"), std::string_view("proxy-authorization")}) {
    for_each_word(lower, key, [&](std::size_t i) {
      i = skip_spaces(line, i);
      if (i >= line.size() || (line[i] != ':' && line[i] != '=')) return;
      i = skip_spaces(line, i + 1);
      if (i < line.size() && line[i] == '"') ++i;
      for (const auto scheme :
           {std::string_view("bearer "), std::string_view("basic "), std::string_view("token ")}) {
        if (lower.substr(i, scheme.size()) == scheme) {
          i = skip_spaces(line, i + scheme.size());
          break;
        }
      }
      const std::size_t e = value_end(line, i, ",;\"");
      if (e > i) spans.push_back({i, e});
    });
  }
  // Bearer/Basic followed by something token-shaped, anywhere.
  for (const auto scheme : {std::string_view("bearer"), std::string_view("basic")}) {
    for_each_word(lower, scheme, [&](std::size_t i) {
      const std::size_t b = skip_spaces(line, i);
      if (b == i) return;
      std::size_t e = b;
      while (e < line.size() && is_token_char(line[e])) ++e;
      if (e - b >= 8) spans.push_back({b, e});
    });
  }
}

// Wraps a sink: formats the record, redacts, and hands the result on.
class RedactingSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  RedactingSink(spdlog::sink_ptr inner, Format format)
      : m_inner(std::move(inner)), m_format(format) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    const std::string payload = redact(std::string_view(msg.payload.data(), msg.payload.size()));
    if (m_format == Format::json) {
      nlohmann::json j;
      const auto ms =
          std::chrono::duration_cast<std::chrono::milliseconds>(msg.time.time_since_epoch())
              .count();
      j["time"] = fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03}Z",
                              fmt::gmtime(static_cast<std::time_t>(ms / 1000)), ms % 1000);
      j["level"] = std::string(spdlog::level::to_string_view(msg.level).data(),
                               spdlog::level::to_string_view(msg.level).size());
      if (msg.logger_name.size() > 0) {
        j["logger"] = std::string(msg.logger_name.data(), msg.logger_name.size());
      }
      j["msg"] = payload;
      // Replacement error handler: invalid UTF-8 from a hostile peer must
      // not throw out of the logger.
      const std::string line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      spdlog::details::log_msg out(msg.time, msg.source, msg.logger_name, msg.level, line);
      m_inner->log(out);
    } else {
      spdlog::details::log_msg out(msg.time, msg.source, msg.logger_name, msg.level, payload);
      m_inner->log(out);
    }
  }
  void flush_() override { m_inner->flush(); }

 private:
  spdlog::sink_ptr m_inner;
  Format m_format;
};

std::optional<std::string> env_value(const char* name) {
  return process_env()(name);
}

}  // namespace

std::string redact(std::string_view line) {
  const std::string lower = ascii_lower(line);
  std::vector<Span> spans;
  collect(line, lower, spans);
  if (spans.empty()) return std::string(line);
  std::sort(spans.begin(), spans.end(),
            [](const Span& a, const Span& b) { return a.begin < b.begin; });
  std::string out;
  out.reserve(line.size());
  std::size_t pos = 0;
  for (const auto& sp : spans) {
    if (sp.end <= pos) continue;  // inside a span already masked
    if (sp.begin > pos) out.append(line.substr(pos, sp.begin - pos));
    out += Secret::k_redacted;
    pos = sp.end;
  }
  out.append(line.substr(pos));
  return out;
}

Result<spdlog::level::level_enum> parse_level(std::string_view s) {
  static constexpr std::pair<std::string_view, spdlog::level::level_enum> k_levels[] = {
      {"trace", spdlog::level::trace},       {"debug", spdlog::level::debug},
      {"info", spdlog::level::info},         {"warn", spdlog::level::warn},
      {"warning", spdlog::level::warn},      {"error", spdlog::level::err},
      {"critical", spdlog::level::critical}, {"off", spdlog::level::off}};
  for (const auto& [name, level] : k_levels) {
    if (s == name) return level;
  }
  return fail(Errc::invalid_argument,
              "unknown log level '" + std::string(s) +
                  "'; use one of trace, debug, info, warn, error, critical, off");
}

Result<Format> parse_format(std::string_view s) {
  if (s == "text") return Format::text;
  if (s == "json") return Format::json;
  return fail(Errc::invalid_argument,
              "unknown log format '" + std::string(s) + "'; use text or json");
}

Result<Options> resolve_options(const std::optional<std::string>& flag_level,
                                const std::optional<std::string>& flag_format) {
  Options o;
  auto level = flag_level ? flag_level : env_value("TOKEND_LOG_LEVEL");
  auto format = flag_format ? flag_format : env_value("TOKEND_LOG_FORMAT");
  if (level) {
    auto l = parse_level(*level);
    if (!l) return std::unexpected(l.error());
    o.level = *l;
  }
  if (format) {
    auto f = parse_format(*format);
    if (!f) return std::unexpected(f.error());
    o.format = *f;
  }
  return o;
}

void setup_with_sink(const Options& options, spdlog::sink_ptr sink) {
  if (options.format == Format::json) {
    sink->set_pattern("%v");
  } else if (process_env()("JOURNAL_STREAM")) {
    // Under systemd the journal stamps each line itself.
    sink->set_pattern("%^%-5l%$ %v");
  } else {
    sink->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %^%-5l%$ %v");
  }
  auto guard = std::make_shared<RedactingSink>(std::move(sink), options.format);
  auto logger = std::make_shared<spdlog::logger>("tokend", std::move(guard));
  logger->set_level(options.level);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(std::move(logger));
}

void setup(const Options& options) {
  setup_with_sink(options, std::make_shared<spdlog::sinks::stderr_sink_mt>());
}

}  // namespace tokend::log

#include "core/log.hpp"

#include <ctime>
#include <mutex>

#include <fmt/chrono.h>
#include <regex>

#include <spdlog/details/os.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <nlohmann/json.hpp>

#include "core/paths.hpp"
#include "core/secret.hpp"

namespace tokend::log {

namespace {

// Masks credential-shaped substrings. Each pattern keeps its first group
// (the key) and replaces the value.
const std::vector<std::regex>& redaction_patterns() {
  static const std::vector<std::regex> patterns = [] {
    const auto flags = std::regex::ECMAScript | std::regex::icase | std::regex::optimize;
    return std::vector<std::regex>{
        // Authorization: Bearer xxx / Basic xxx (header or prose)
        std::regex(R"re(((?:authorization|proxy-authorization)\s*[:=]\s*"?(?:bearer|basic|token)?\s*)[^\s",;]+)re", flags),
        std::regex(R"re(((?:bearer|basic)\s+)[A-Za-z0-9\-._~+/]{8,}=*)re", flags),
        // key=value in URLs and form bodies
        std::regex(R"re(((?:access_token|refresh_token|id_token|client_secret|code_verifier|password|token|code|api_key|secret)=)[^&\s"']+)re", flags),
        // "key": "value" in JSON
        std::regex(R"re(("(?:access_token|refresh_token|id_token|client_secret|previous_refresh_token|code_verifier|password|token|secret|api_token)"\s*:\s*")[^"]*)re", flags),
    };
  }();
  return patterns;
}

// Wraps a sink: formats the record, redacts, and hands the result on.
class RedactingSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  RedactingSink(spdlog::sink_ptr inner, Format format) : m_inner(std::move(inner)), m_format(format) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    const std::string payload = redact(std::string_view(msg.payload.data(), msg.payload.size()));
    if (m_format == Format::json) {
      nlohmann::json j;
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          msg.time.time_since_epoch()).count();
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

std::optional<std::string> env_value(const char* name) { return process_env()(name); }

}  // namespace

std::string redact(std::string_view line) {
  std::string s(line);
  for (const auto& re : redaction_patterns()) {
    s = std::regex_replace(s, re, "$1" + std::string(Secret::k_redacted));
  }
  return s;
}

Result<spdlog::level::level_enum> parse_level(std::string_view s) {
  static constexpr std::pair<std::string_view, spdlog::level::level_enum> k_levels[] = {
      {"trace", spdlog::level::trace}, {"debug", spdlog::level::debug},
      {"info", spdlog::level::info},   {"warn", spdlog::level::warn},
      {"warning", spdlog::level::warn}, {"error", spdlog::level::err},
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
  return fail(Errc::invalid_argument, "unknown log format '" + std::string(s) + "'; use text or json");
}

Result<Options> resolve_options(std::optional<std::string> flag_level,
                                std::optional<std::string> flag_format) {
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

// Logging set-up on spdlog.
//
// Two formats: human text and one JSON object per line. Every record passes
// through a redaction guard before it reaches a sink: Secret values format as
// a marker by construction, and the guard additionally masks credential-shaped
// text (Authorization headers, token=/secret= pairs, JSON token fields) so a
// stray upstream body or URL in a log line cannot leak a token.
#pragma once

#include <spdlog/spdlog.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "core/error.hpp"

namespace tokend::log {

enum class Format { text, json };

struct Options {
  spdlog::level::level_enum level = spdlog::level::info;
  Format format = Format::text;
};

// Parses "trace|debug|info|warn|error|critical|off".
Result<spdlog::level::level_enum> parse_level(std::string_view s);
// Parses "text|json".
Result<Format> parse_format(std::string_view s);

// Options from TOKEND_LOG_LEVEL / TOKEND_LOG_FORMAT, overridden by the
// flag values when given (flag > env > default).
Result<Options> resolve_options(const std::optional<std::string>& flag_level,
                                const std::optional<std::string>& flag_format);

// Installs the default logger writing to stderr.
void setup(const Options& options);

// Installs the default logger writing to the given sink (tests capture output
// this way). The sink is wrapped in the redaction guard.
void setup_with_sink(const Options& options, spdlog::sink_ptr sink);

// The text the guard would emit for `line` (exposed for tests).
std::string redact(std::string_view line);

}  // namespace tokend::log

// Rendering of API answers for people and scripts.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "core/error.hpp"
#include "core/json.hpp"

namespace tokend::ctl {

enum class TokenFormat { raw, header, json, env, exec_credential };
Result<TokenFormat> parse_token_format(std::string_view s);

// `answer` is the JSON of GET /v1/profiles/NAME/token.
std::string render_token(const json::Json& answer, TokenFormat format);

// Quotes a value for POSIX shells ('...' with embedded quotes escaped).
std::string shell_quote(std::string_view v);

// "in 52 min", "3 h 4 min ago", "never".
std::string relative_time(std::optional<std::int64_t> at_s, std::int64_t now_s);
// RFC 3339 UTC ("2026-11-22T10:00:00Z").
std::string rfc3339(std::int64_t unix_s);
// Local time for people: "14:05" on the same local day as now_s, else
// "2026-11-23 14:05".
std::string local_clock_time(std::int64_t at_s, std::int64_t now_s);

// The status table; colour only when `colour`.
std::string render_status_table(const json::Json& profiles, std::int64_t now_s, bool colour);
std::string render_profile_detail(const json::Json& profile, std::int64_t now_s, bool colour);
// One line per event for monitor.
std::string render_event_line(const json::Json& event, bool colour);

}  // namespace tokend::ctl

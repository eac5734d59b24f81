// Sinks: for scripts that cannot ask tokend, the current token is
// written where they already look, after every new token set.
//   {"type": "file", "path": "/abs/token", "format": "raw|header|json"}
//     the whole file, rewritten atomically, mode 0600;
//   {"type": "dotenv", "path": "/abs/.env", "variable": "JIRA_OAUTH_ACCESS_TOKEN"}
//     that KEY=VALUE line of a .env file, updated in place atomically; every
//     other line is kept as it was.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/error.hpp"
#include "core/json.hpp"
#include "store/types.hpp"

namespace tokend::tokens {

// Checks the "sinks" value of a profile body.
Result<std::vector<store::Sink>> validate_sinks(const json::Json& sinks);

// Writes every sink of the profile; the first failure is returned, the
// others are still attempted.
Result<> write_sinks(const store::Profile& profile, const store::Credential& credential);

// The dotenv update on text (exposed for tests): replaces or appends
// `variable=value`, keeping every other line byte for byte.
Result<std::string> update_dotenv(std::string_view existing, std::string_view variable,
                                  std::string_view value);

}  // namespace tokend::tokens

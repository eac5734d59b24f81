// Secrets for tokenctl come from a file, stdin ("-") or a no-echo prompt —
// never from argv.
#pragma once

#include <cstdio>
#include <optional>
#include <string>

#include "core/error.hpp"
#include "core/secret.hpp"

namespace tokend::ctl {

// `source`: a path, or "-" for stdin. Trailing newlines are dropped; an empty
// secret is an error naming `what`.
Result<Secret> read_secret(const std::string& source, std::string_view what, std::FILE* in);

// Prompts on the terminal without echo; unavailable when there is no terminal.
Result<Secret> prompt_secret(std::string_view prompt);

}  // namespace tokend::ctl

// Reading `.env` files (tokenctl import --dotenv).
//
// The dialect is what python-dotenv reads and writes, since the scripts whose
// tokens tokenctl imports keep them with python-dotenv's set_key():
//   - blank lines and lines starting with '#' are skipped; CRLF line endings
//     and a UTF-8 byte order mark are accepted;
//   - `KEY=VALUE`, optionally `export KEY=VALUE`, spaces around '=' tolerated;
//     KEY is [A-Za-z_][A-Za-z0-9_.-]*;
//   - unquoted values run to the end of the line or to a '#' that follows
//     whitespace (an inline comment), surrounding whitespace trimmed;
//   - 'single-quoted' values are literal, except python-dotenv's two escapes
//     \' and \\ (set_key writes a quote inside a value as \');
//   - "double-quoted" values know \n \t \r \" \' \\ (and \a \b \f \v); any
//     other backslash stays as written;
//   - quoted values may span lines; after the closing quote only whitespace
//     and a comment may follow, or another quoted part with no space between,
//     as a shell writes 'it'\''s' (tokend's own dotenv sink does);
//   - a key given twice: the last value wins.
// No variable interpolation (${X} is kept as written).
//
// Errors name the file and line number and never include the line: a value
// may be a secret.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <string_view>

#include "core/error.hpp"
#include "core/secret.hpp"

namespace tokend::ctl {

using DotenvValues = std::map<std::string, Secret, std::less<>>;

// `source` names the text in error messages ("FILE line N: ...").
Result<DotenvValues> parse_dotenv(std::string_view text, std::string_view source);

// Reads and parses `path` (at most 1 MiB). A missing or unreadable file is an
// Errc::io error naming the path and the reason.
Result<DotenvValues> read_dotenv_file(const std::string& path);

}  // namespace tokend::ctl

// tokenctl api: turning the command line into a request to tokend's proxy
// (docs/API.md, "ANY /v1/proxy/{name}/{rest}") and reading its answer. Pure
// functions, unit-tested without a daemon.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "client/client.hpp"
#include "core/error.hpp"

namespace tokend::ctl {

// The METHOD argument in upper case: 1-20 ASCII letters, else
// Errc::invalid_argument.
Result<std::string> normalize_method(std::string_view method);

// client::paths::proxy_prefix(PROFILE) + PATH for the PATH argument (e.g.
// "jira/rest/api/3/search?jql=project = ABC"):
//   - one leading '/' is dropped;
//   - the query string goes through as given, except that bytes which
//     cannot appear in a request target are percent-encoded (space, '"',
//     '<', '>', '\', '^', '`', '{', '|', '}', '#', non-ASCII bytes, and a '%'
//     that does not start a %XX escape); existing %XX escapes stay;
//   - a CR, LF, NUL or other control character, or an empty PATH, is
//     Errc::invalid_argument.
// What the path may name (no "..", no "//") is tokend's decision.
// `profile` must already be a valid profile name.
Result<std::string> proxy_target(std::string_view profile, std::string_view path);

// A -H "Name: value" argument: the name an HTTP token (RFC 9110 §5.6.2) right
// before the colon, the value with the white space around it trimmed, no
// control character other than a tab. Messages name the header but never
// repeat its value (it may be a secret).
Result<std::pair<std::string, std::string>> parse_header_arg(std::string_view arg);

// Headers the caller may not set because tokenctl frames the request itself
// (Host, Content-Length, Transfer-Encoding, Connection, Expect, and the other
// hop-by-hop headers: Keep-Alive, TE, Trailer, Upgrade).
bool is_framing_header(std::string_view name);
// Headers tokend replaces or drops (Authorization, Cookie, Proxy-*,
// X-Tokend-* other than X-Tokend-Retry-Wait): setting them does nothing.
bool is_replaced_header(std::string_view name);

// Where --data comes from: "@FILE" a file, "-" or "@-" standard input,
// anything else the literal string. nullopt without --data.
struct DataArg {
  enum class Kind { literal, file, stdin_stream } kind = Kind::literal;
  std::string value;  // the string, or the file name
};
std::optional<DataArg> parse_data_arg(const std::optional<std::string>& arg);

// tokend's own error answer: a JSON object whose only member is "error", an
// object with string "code" and "message" (docs/API.md, Errors). An
// upstream's error body (Jira's {"errorMessages": [...]}, OAuth's
// {"error": "invalid_token"}) is not one. `command` is the command a
// reauth_required error names.
struct TokendError {
  std::string code;
  std::string message;
  std::string command;
};
std::optional<TokendError> parse_tokend_error(std::string_view body);

// The --include block: "HTTP/1.1 STATUS REASON\n", one "Name: value\n" per
// header, then an empty line.
std::string render_response_head(const client::ResponseHead& head);

}  // namespace tokend::ctl

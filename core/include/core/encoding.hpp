// Small encodings used across modules.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tokend {

std::string hex_encode(std::string_view bytes);
// Accepts upper and lower case; nullopt on odd length or a non-hex character.
std::optional<std::string> hex_decode(std::string_view hex);

std::string base64url_encode(std::string_view bytes);  // no padding
std::string base64_encode(std::string_view bytes);     // with padding
// Standard alphabet with padding (RFC 4648 §4); nullopt when malformed.
std::optional<std::string> base64_decode(std::string_view text);
// RFC 7515 §2 base64url: the URL-safe alphabet, no padding, no white space,
// and the unused bits of the last character zero (one encoding per value);
// nullopt otherwise.
std::optional<std::string> base64url_decode(std::string_view text);

// RFC 3986 unreserved characters (ALPHA DIGIT - . _ ~).
bool is_unreserved(char c);
// Appends "%XX" (upper-case hex, RFC 3986 §2.1) for one byte.
void append_percent_escape(std::string& out, unsigned char byte);
// Unreserved characters kept, every other byte percent-encoded: a path
// segment or a query value.
std::string percent_encode(std::string_view s);
// application/x-www-form-urlencoded: as percent_encode, with space as '+'.
std::string form_encode(std::string_view s);

// ASCII-only case folding, independent of the locale: for header names,
// schemes, hosts and protocol keywords.
std::string ascii_lower(std::string_view s);
bool ascii_iequals(std::string_view a, std::string_view b);
// nullopt on a malformed escape.
std::optional<std::string> percent_decode(std::string_view s, bool plus_is_space);
// Splits "a=b&c=d", percent-decoding; nullopt on malformed escapes.
std::optional<std::vector<std::pair<std::string, std::string>>> parse_query(std::string_view q);

}  // namespace tokend

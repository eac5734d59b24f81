// Small encodings used across modules.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace tokend {

std::string hex_encode(std::string_view bytes);
// Accepts upper and lower case; nullopt on odd length or a non-hex character.
std::optional<std::string> hex_decode(std::string_view hex);

std::string base64url_encode(std::string_view bytes);  // no padding
std::string base64_encode(std::string_view bytes);     // with padding

}  // namespace tokend

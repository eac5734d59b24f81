// JSON helpers on nlohmann::json: parsing that returns Result instead of
// throwing, and typed field access with messages that name the field.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "core/error.hpp"

namespace tokend::json {

using Json = nlohmann::json;

// Parses a whole document; trailing garbage and depth > max_depth are errors.
Result<Json> parse(std::string_view text, std::string_view what, std::size_t max_depth = 64);

// Field accessors: absent → nullopt (or error for required), wrong type →
// invalid_argument naming the field and the expected type.
Result<std::string> required_string(const Json& obj, std::string_view key);
Result<std::optional<std::string>> optional_string(const Json& obj, std::string_view key);
Result<std::optional<std::int64_t>> optional_int(const Json& obj, std::string_view key);
Result<std::optional<bool>> optional_bool(const Json& obj, std::string_view key);

// For documents tokend keeps or receives from providers, where a missing or
// mistyped field simply means "not set": the string, or `fallback`. Never
// throws (nlohmann's value() does on a type mismatch).
std::string string_or(const Json& obj, std::string_view key, std::string fallback = {});

// Appends `s` as a JSON string literal, exactly as Json(s).dump() with
// invalid UTF-8 replaced would. Printable ASCII (the usual case for tokens,
// names and types) is copied straight; anything else goes through nlohmann.
// For answers built without a Json tree, on hot paths.
void append_quoted(std::string& out, std::string_view s);

}  // namespace tokend::json

#include "core/json.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace tokend::json {

Result<Json> parse(std::string_view text, std::string_view what, std::size_t max_depth) {
  // The callback stops nesting before the recursive parser goes deep, so a
  // hostile "[[[[...]]]]" cannot exhaust the stack.
  std::size_t depth = 0;
  bool too_deep = false;
  auto cb = [&](int, Json::parse_event_t ev, Json&) {
    if (ev == Json::parse_event_t::object_start || ev == Json::parse_event_t::array_start) {
      if (++depth > max_depth) too_deep = true;
    } else if (ev == Json::parse_event_t::object_end || ev == Json::parse_event_t::array_end) {
      --depth;
    }
    return !too_deep;
  };
  Json j = Json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/false);
  if (too_deep) {
    return fail(Errc::invalid_argument,
                fmt::format("{} nests deeper than {} levels", what, max_depth));
  }
  if (j.is_discarded()) {
    return fail(Errc::invalid_argument, fmt::format("{} is not valid JSON", what));
  }
  return j;
}

Result<std::string> required_string(const Json& obj, std::string_view key) {
  auto v = optional_string(obj, key);
  if (!v) return std::unexpected(v.error());
  if (!*v) return fail(Errc::invalid_argument, fmt::format("field \"{}\" is required", key));
  return std::move(**v);
}

Result<std::optional<std::string>> optional_string(const Json& obj, std::string_view key) {
  if (!obj.is_object()) return fail(Errc::invalid_argument, "expected a JSON object");
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::optional<std::string>{};
  if (!it->is_string()) {
    return fail(Errc::invalid_argument, fmt::format("field \"{}\" must be a string", key));
  }
  return std::optional<std::string>{it->get<std::string>()};
}

Result<std::optional<std::int64_t>> optional_int(const Json& obj, std::string_view key) {
  if (!obj.is_object()) return fail(Errc::invalid_argument, "expected a JSON object");
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::optional<std::int64_t>{};
  if (!it->is_number_integer()) {
    return fail(Errc::invalid_argument, fmt::format("field \"{}\" must be an integer", key));
  }
  return std::optional<std::int64_t>{it->get<std::int64_t>()};
}

Result<std::optional<bool>> optional_bool(const Json& obj, std::string_view key) {
  if (!obj.is_object()) return fail(Errc::invalid_argument, "expected a JSON object");
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::optional<bool>{};
  if (!it->is_boolean()) {
    return fail(Errc::invalid_argument, fmt::format("field \"{}\" must be true or false", key));
  }
  return std::optional<bool>{it->get<bool>()};
}

namespace {

constexpr bool plain_char(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u >= 0x20 && u < 0x7f && c != '"' && c != '\\';
}

// Whether no byte needs escaping, eight at a time (tokens are long and this
// runs for every token answer): the classic "has a byte less than n / more
// than n / equal to c" tests on a 64-bit word, exact for "any byte".
bool plain_text(std::string_view s) {
  constexpr std::uint64_t k_ones = 0x0101010101010101ULL;
  constexpr std::uint64_t k_highs = 0x8080808080808080ULL;
  std::size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    std::uint64_t w = 0;
    std::memcpy(&w, s.data() + i, 8);
    const std::uint64_t quote = w ^ (k_ones * '"');
    const std::uint64_t backslash = w ^ (k_ones * '\\');
    // High bit of a byte set: a byte >= 0x80 (w), >= 0x7f (w + 1), < 0x20,
    // '"' or '\\' (a zero byte after the XOR). One branch per word.
    const std::uint64_t flagged = w | (w + k_ones) | ((w - k_ones * 0x20) & ~w) |
                                  ((quote - k_ones) & ~quote) | ((backslash - k_ones) & ~backslash);
    if ((flagged & k_highs) != 0) return false;
  }
  return std::all_of(s.begin() + static_cast<std::ptrdiff_t>(i), s.end(), plain_char);
}

}  // namespace

void append_quoted(std::string& out, std::string_view s) {
  if (!plain_text(s)) {
    out += Json(s).dump(-1, ' ', false, Json::error_handler_t::replace);
    return;
  }
  out += '"';
  out.append(s);
  out += '"';
}

std::string string_or(const Json& obj, std::string_view key, std::string fallback) {
  if (!obj.is_object()) return fallback;
  auto it = obj.find(key);
  return it != obj.end() && it->is_string() ? it->get<std::string>() : fallback;
}

}  // namespace tokend::json

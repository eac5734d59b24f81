// An enum's stored names, as a constexpr table of (value, name) pairs, looked
// up both ways. Internal to store/.
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <string_view>
#include <utility>

namespace tokend::store::detail {

template <class E, std::size_t N>
using EnumNames = std::array<std::pair<E, std::string_view>, N>;

// The name of `value`, or `fallback` for a value the table lacks.
template <class E, std::size_t N>
std::string_view name_of(const EnumNames<E, N>& table, E value,
                         std::string_view fallback = "?") noexcept {
  for (const auto& [e, name] : table) {
    if (e == value) return name;
  }
  return fallback;
}

template <class E, std::size_t N>
std::optional<E> value_of(const EnumNames<E, N>& table, std::string_view name) {
  for (const auto& [e, n] : table) {
    if (n == name) return e;
  }
  return std::nullopt;
}

}  // namespace tokend::store::detail

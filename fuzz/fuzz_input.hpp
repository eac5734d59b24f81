// A libFuzzer input taken apart field by field. Targets that need several
// values (a status and a body, a kind and a path) draw them from the front of
// the input and take the rest as the main bytes, so the fuzzer can steer each.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tokend::fuzz {

class Input {
 public:
  Input(const std::uint8_t* data, std::size_t size)
      : m_rest(reinterpret_cast<const char*>(data), size) {}

  // One byte (0 when the input is used up).
  std::uint8_t byte() {
    if (m_rest.empty()) return 0;
    const auto b = static_cast<std::uint8_t>(m_rest.front());
    m_rest.remove_prefix(1);
    return b;
  }
  // Bytes up to the next '\n' (which is consumed), or everything left.
  std::string_view line() {
    const auto nl = m_rest.find('\n');
    const auto out = m_rest.substr(0, nl);
    m_rest.remove_prefix(nl == std::string_view::npos ? m_rest.size() : nl + 1);
    return out;
  }
  [[nodiscard]] std::string_view rest() const { return m_rest; }

 private:
  std::string_view m_rest;
};

}  // namespace tokend::fuzz

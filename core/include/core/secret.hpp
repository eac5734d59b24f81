// Secret: bytes that must never be printed, logged or left in memory.
//
// The buffer is wiped (explicit_bzero) whenever it is released: destruction,
// assignment, clear(). Formatting a Secret with fmt/spdlog or streaming it
// yields a fixed redaction marker, so passing one to a log call by accident
// leaks nothing. The only way to the bytes is the explicitly named reveal().
#pragma once

#include <fmt/format.h>

#include <cstddef>
#include <initializer_list>
#include <iosfwd>
#include <string>
#include <string_view>

namespace tokend {

class Secret {
 public:
  static constexpr std::string_view k_redacted = "[REDACTED]";

  Secret() = default;
  explicit Secret(std::string_view bytes);
  // Takes ownership of the string's buffer and wipes the source's copy.
  static Secret adopt(std::string&& bytes);
  // The parts joined, in one allocation and with no unwiped temporary
  // ("Bearer " and a token, "email:token").
  static Secret concat(std::initializer_list<std::string_view> parts);

  Secret(const Secret& other);
  Secret& operator=(const Secret& other);
  Secret(Secret&& other) noexcept;
  Secret& operator=(Secret&& other) noexcept;
  ~Secret();

  [[nodiscard]] std::string_view reveal() const noexcept { return m_bytes; }
  [[nodiscard]] bool empty() const noexcept { return m_bytes.empty(); }
  [[nodiscard]] std::size_t size() const noexcept { return m_bytes.size(); }
  void clear() noexcept;

  // Constant-time comparison (length is not hidden).
  [[nodiscard]] bool equals(std::string_view other) const noexcept;
  friend bool operator==(const Secret& a, const Secret& b) noexcept { return a.equals(b.m_bytes); }

 private:
  std::string m_bytes;
};

// Overwrites a buffer in a way the optimiser may not remove.
void secure_wipe(void* data, std::size_t size) noexcept;
void secure_wipe(std::string& s) noexcept;

// Constant-time equality of two byte strings (length is not hidden).
bool constant_time_equal(std::string_view a, std::string_view b) noexcept;

std::ostream& operator<<(std::ostream& os, const Secret& s);

}  // namespace tokend

template <>
struct fmt::formatter<tokend::Secret> : fmt::formatter<std::string_view> {
  template <class FormatContext>
  auto format(const tokend::Secret&, FormatContext& ctx) const {
    return fmt::formatter<std::string_view>::format(tokend::Secret::k_redacted, ctx);
  }
};

#include "core/secret.hpp"

#include <string.h>  // explicit_bzero

#include <ostream>

namespace tokend {

void secure_wipe(void* data, std::size_t size) noexcept {
  if (data != nullptr && size > 0) explicit_bzero(data, size);
}

void secure_wipe(std::string& s) noexcept {
  // Wipe the whole capacity: a shrunk string may have held longer content.
  secure_wipe(s.data(), s.capacity());
  s.clear();
}

bool constant_time_equal(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  volatile unsigned char diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = static_cast<unsigned char>(
        diff | (static_cast<unsigned char>(a[i]) ^ static_cast<unsigned char>(b[i])));
  }
  return diff == 0;
}

Secret::Secret(std::string_view bytes) : m_bytes(bytes) {}

Secret Secret::adopt(std::string&& bytes) {
  Secret s;
  s.m_bytes = std::move(bytes);
  // A moved-from short string keeps its SSO buffer; wipe what is left.
  secure_wipe(bytes);
  return s;
}

Secret Secret::concat(std::initializer_list<std::string_view> parts) {
  std::size_t size = 0;
  for (const auto part : parts) size += part.size();
  Secret s;
  s.m_bytes.reserve(size);
  for (const auto part : parts) s.m_bytes.append(part);
  return s;
}

Secret::Secret(const Secret& other) = default;

Secret& Secret::operator=(const Secret& other) {
  if (this != &other) {
    clear();
    m_bytes = other.m_bytes;
  }
  return *this;
}

// A moved std::string hands over its heap buffer, but short (SSO) contents
// are copied and stay in the source's own buffer: wipe that (its capacity).
Secret::Secret(Secret&& other) noexcept : m_bytes(std::move(other.m_bytes)) {
  secure_wipe(other.m_bytes);
}

Secret& Secret::operator=(Secret&& other) noexcept {
  if (this != &other) {
    clear();  // the buffer the source may be handed back is wiped first
    m_bytes = std::move(other.m_bytes);
    secure_wipe(other.m_bytes);
  }
  return *this;
}

Secret::~Secret() {
  clear();
}

void Secret::clear() noexcept {
  secure_wipe(m_bytes);
}

bool Secret::equals(std::string_view other) const noexcept {
  return constant_time_equal(m_bytes, other);
}

std::ostream& operator<<(std::ostream& os, const Secret&) {
  return os << Secret::k_redacted;
}

}  // namespace tokend

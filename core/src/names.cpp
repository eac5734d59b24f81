#include "core/names.hpp"

#include <string>

namespace tokend {

Result<> validate_profile_name(std::string_view name) {
  const auto bad = [&] {
    std::string shown;
    for (const char c : name.substr(0, 64))
      shown += (static_cast<unsigned char>(c) < 0x20) ? '?' : c;
    return fail(Errc::invalid_argument,
                "profile name '" + shown +
                    "' is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
                    "not starting with '.' or '-'");
  };
  if (name.empty() || name.size() > 64 || name.front() == '.' || name.front() == '-') return bad();
  for (const char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) return bad();
  }
  return {};
}

}  // namespace tokend

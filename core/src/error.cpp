#include "core/error.hpp"

#include <cstring>

namespace tokend {

std::string_view errc_name(Errc code) noexcept {
  switch (code) {
    case Errc::invalid_argument:
      return "invalid_argument";
    case Errc::not_found:
      return "not_found";
    case Errc::already_exists:
      return "already_exists";
    case Errc::conflict:
      return "conflict";
    case Errc::permission:
      return "permission";
    case Errc::io:
      return "io";
    case Errc::database:
      return "database";
    case Errc::wrong_key:
      return "wrong_key";
    case Errc::corrupt:
      return "corrupt";
    case Errc::config:
      return "config";
    case Errc::unavailable:
      return "unavailable";
    case Errc::timeout:
      return "timeout";
    case Errc::limit_exceeded:
      return "limit_exceeded";
    case Errc::protocol:
      return "protocol";
    case Errc::transient:
      return "transient";
    case Errc::reauth_required:
      return "reauth_required";
    case Errc::login_failed:
      return "login_failed";
    case Errc::internal:
      return "internal";
  }
  return "internal";
}

Error Error::context(std::string_view what) const {
  return Error{code, std::string(what) + ": " + message};
}

std::string errno_text(int err) {
  char buf[256];
  // GNU strerror_r may return a static string instead of filling buf.
  const char* s = strerror_r(err, buf, sizeof buf);
  return s;
}

}  // namespace tokend

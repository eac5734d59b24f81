// Run-time failures as values: every fallible call returns Result<T>.
//
// The code decides what the caller does next (retry, give up, which HTTP
// status to answer); the message is for a person and says what was wrong and
// what to do. Messages never contain secrets.
#pragma once

#include <expected>
#include <string>
#include <string_view>

namespace tokend {

enum class Errc {
  invalid_argument,  // caller's input is malformed
  not_found,         // the named thing does not exist
  already_exists,
  conflict,     // a concurrent change won (e.g. generation mismatch)
  permission,   // unsafe file permissions, denied peer, ...
  io,           // an OS call failed
  database,     // SQLCipher reported an error
  wrong_key,    // database cannot be decrypted with the key we have
  corrupt,      // a file exists but its content is not what we expect
  config,       // configuration is invalid
  unavailable,  // something we need is not there (daemon, key, ...)
  timeout,
  limit_exceeded,
  protocol,         // peer spoke something we do not understand
  transient,        // temporary upstream failure, retry later
  reauth_required,  // refreshing is no longer possible
  login_failed,     // a login flow ended without a token
  internal,
};

std::string_view errc_name(Errc code) noexcept;

struct Error {
  Errc code = Errc::internal;
  std::string message;

  Error() = default;
  Error(Errc c, std::string m) : code(c), message(std::move(m)) {}

  // Prefix the message with context ("opening /x: ...") keeping the code.
  [[nodiscard]] Error context(std::string_view what) const;
};

template <class T = void>
using Result = std::expected<T, Error>;

inline std::unexpected<Error> fail(Errc code, std::string message) {
  return std::unexpected<Error>(Error{code, std::move(message)});
}

// The error for input that breaks a rule; the message says which and how to fix it.
inline Error bad_input(std::string message) {
  return Error{Errc::invalid_argument, std::move(message)};
}

// errno text for an OS failure, for composing messages.
std::string errno_text(int err);

}  // namespace tokend

// JWS signatures on server mode's ID tokens (RFC 7515 compact form, RFC 7517
// JWK Sets, RFC 7518 / RFC 8037 algorithms), checked with OpenSSL 3's EVP.
//
// Every byte comes from outside (the identity provider's JWKS document, the
// token endpoint's answer): strict base64url, bounded sizes, and an error
// that says what was wrong. Only public-key algorithms: RS256 (required by
// OpenID Connect), PS256, ES256 and EdDSA (Ed25519); `none` and the HMAC
// algorithms are always refused, so a token can never name its own key.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.hpp"

namespace tokend::daemon::jws {

inline constexpr std::size_t k_max_compact_size = 64 * 1024;  // a whole JWS
inline constexpr std::size_t k_max_header_size = 4 * 1024;    // its encoded header
inline constexpr std::size_t k_max_jwks_size = 256 * 1024;    // a JWK Set document
inline constexpr std::size_t k_max_keys = 64;                 // keys in a set
inline constexpr std::size_t k_max_kid_size = 256;

// The algorithms tokend verifies: RS256, PS256, ES256, EdDSA.
bool supported_alg(std::string_view alg);

// A compact JWS taken apart (nothing verified yet).
struct Compact {
  std::string alg;
  std::string kid;            // empty when the header names none
  std::string signing_input;  // "HEADER.PAYLOAD" as received
  std::string payload;        // decoded
  std::string signature;      // decoded
};
// Three base64url parts; a JSON object header with a string `alg` (never
// `none`); `crit` refused (no extension is understood). Errors:
// Errc::protocol.
Result<Compact> parse_compact(std::string_view text);

// A JWK Set: the keys that can verify one of the supported algorithms. Keys
// of other types or curves, for encryption (`use` other than `sig`, or
// `key_ops` without `verify`), or that do not build (a bad base64url field, a
// point off the curve, an RSA modulus under 2048 or over 8192 bits) are left
// out, and the reason kept for the error of a token that names them.
class KeySet {
 public:
  KeySet();
  ~KeySet();
  KeySet(KeySet&&) noexcept;
  KeySet& operator=(KeySet&&) noexcept;
  KeySet(const KeySet&) = delete;
  KeySet& operator=(const KeySet&) = delete;

  // A JWK Set document (`{"keys": [...]}`); Errc::protocol when it is not
  // one, is too large, or holds no usable key.
  static Result<KeySet> parse(std::string_view document);

  [[nodiscard]] std::size_t size() const;
  // Whether the set has a usable key for `alg` with this kid (any kid when
  // `kid` is empty): false means fetch the set again (key rotation).
  [[nodiscard]] bool has_key(std::string_view kid, std::string_view alg) const;

  // Checks the signature. `allowed` are the algorithms the issuer
  // advertises (each must also be supported). The key: the one whose `kid`
  // matches the header's (its type and curve must fit `alg`, and its own
  // `alg`, when set, equal it); without a kid in the header, the only key
  // that fits `alg`. Errors: Errc::not_found when no key has the token's
  // kid, Errc::login_failed for everything else (a bad signature, a refused
  // or unadvertised algorithm, a key of the wrong type).
  [[nodiscard]] Result<> verify(const Compact& jws, const std::vector<std::string>& allowed) const;

  struct Key;

 private:
  std::vector<std::shared_ptr<const Key>> m_keys;
  std::vector<std::pair<std::string, std::string>> m_skipped;  // kid, why
};

}  // namespace tokend::daemon::jws

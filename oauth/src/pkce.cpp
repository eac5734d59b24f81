#include "oauth/pkce.hpp"

#include <openssl/evp.h>

#include <array>
#include <string>

#include "core/encoding.hpp"
#include "core/random.hpp"

namespace tokend::oauth {

std::string pkce_challenge(std::string_view verifier) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int size = 0;
  if (EVP_Digest(verifier.data(), verifier.size(), digest.data(), &size, EVP_sha256(), nullptr) !=
      1) {
    return {};  // never with SHA-256; an empty challenge fails the flow visibly
  }
  return base64url_encode(std::string_view(reinterpret_cast<const char*>(digest.data()), size));
}

Pkce make_pkce(std::string_view entropy) {
  Pkce p;
  p.verifier = Secret::adopt(base64url_encode(entropy));
  p.challenge = pkce_challenge(p.verifier.reveal());
  return p;
}

Result<Secret> random_urlsafe(std::size_t bytes) {
  auto raw = random_secret(bytes);
  if (!raw) return std::unexpected(raw.error());
  return Secret::adopt(base64url_encode(raw->reveal()));
}

}  // namespace tokend::oauth

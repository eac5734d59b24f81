// ID token signatures from a hostile identity provider (daemon/jws.hpp): the
// first input line is the JWK Set document (the issuer's jwks_uri), the rest
// a compact JWS (the token endpoint's id_token). Both are parsed and, when
// they parse, the signature checked: nothing may crash, leak or accept a
// token without a usable key for its algorithm.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/encoding.hpp"
#include "daemon/jws.hpp"
#include "fuzz_input.hpp"

using namespace tokend;
using namespace tokend::daemon;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  const auto document = in.line();
  const auto token = in.rest();
  (void)tokend::base64url_decode(token);
  const auto compact = jws::parse_compact(token);
  if (compact && (compact->alg == "none" || compact->signature.empty())) std::abort();
  const auto keys = jws::KeySet::parse(document);
  if (!keys) return 0;
  if (keys->size() == 0 || keys->size() > jws::k_max_keys) std::abort();
  if (!compact) return 0;
  static const std::vector<std::string> all = {"RS256", "PS256", "ES256", "EdDSA"};
  if (keys->verify(*compact, all)) {
    // Accepted: a supported algorithm and a key of the set that fits it.
    if (!jws::supported_alg(compact->alg) || !keys->has_key(compact->kid, compact->alg)) {
      std::abort();
    }
  }
  return 0;
}

#include "daemon/jws.hpp"

#include <fmt/format.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>

#include <algorithm>
#include <array>
#include <utility>

#include "core/encoding.hpp"
#include "core/json.hpp"

namespace tokend::daemon::jws {

// Named (not anonymous): KeySet::Key, declared in the header, holds them.
namespace detail {
struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;
enum class Kty { rsa, ec_p256, ed25519 };
}  // namespace detail

namespace {

using detail::Kty;
using detail::Pkey;
struct PkeyCtxFree {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
};
struct BnFree {
  void operator()(BIGNUM* p) const { BN_free(p); }
};
struct BldFree {
  void operator()(OSSL_PARAM_BLD* p) const { OSSL_PARAM_BLD_free(p); }
};
struct ParamFree {
  void operator()(OSSL_PARAM* p) const { OSSL_PARAM_free(p); }
};
struct SigFree {
  void operator()(ECDSA_SIG* p) const { ECDSA_SIG_free(p); }
};

std::string_view kty_name(Kty k) {
  switch (k) {
    case Kty::rsa:
      return "an RSA key";
    case Kty::ec_p256:
      return "an EC P-256 key";
    case Kty::ed25519:
      return "an OKP Ed25519 key";
  }
  return "a key";
}

// The key type an algorithm needs.
std::optional<Kty> kty_for(std::string_view alg) {
  if (alg == "RS256" || alg == "PS256") return Kty::rsa;
  if (alg == "ES256") return Kty::ec_p256;
  if (alg == "EdDSA") return Kty::ed25519;
  return std::nullopt;
}

std::string excerpt(std::string_view s) {
  std::string out;
  for (const char c : s.substr(0, 64)) {
    const auto u = static_cast<unsigned char>(c);
    out.push_back(u >= 0x20 && u < 0x7f ? c : '?');
  }
  if (s.size() > 64) out += "...";
  return out;
}

std::unexpected<Error> protocol(std::string message) {
  return std::unexpected(Error{Errc::protocol, std::move(message)});
}

std::unexpected<Error> refused(std::string message) {
  return std::unexpected(Error{Errc::login_failed, std::move(message)});
}

// A base64url member of a JWK, decoded; `size` (when not 0) is the exact
// length it must have.
Result<std::string> member(const json::Json& jwk, const char* name, std::size_t size = 0) {
  auto it = jwk.find(name);
  if (it == jwk.end() || !it->is_string()) return protocol(fmt::format("no string '{}'", name));
  auto bytes = base64url_decode(it->get_ref<const std::string&>());
  if (!bytes) return protocol(fmt::format("'{}' is not base64url", name));
  if (size != 0 && bytes->size() != size) {
    return protocol(fmt::format("'{}' is {} bytes, not {}", name, bytes->size(), size));
  }
  if (bytes->empty()) return protocol(fmt::format("'{}' is empty", name));
  return std::move(*bytes);
}

Result<Pkey> from_params(const char* type, OSSL_PARAM_BLD* bld) {
  std::unique_ptr<OSSL_PARAM, ParamFree> params(OSSL_PARAM_BLD_to_param(bld));
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree> ctx(
      EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  EVP_PKEY* raw = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) != 1 ||
      raw == nullptr) {
    return protocol("OpenSSL does not accept it as a public key");
  }
  Pkey key(raw);
  // A point off the curve, a modulus OpenSSL finds wrong: refused here.
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree> check(
      EVP_PKEY_CTX_new_from_pkey(nullptr, raw, nullptr));
  if (!check || EVP_PKEY_public_check(check.get()) != 1) {
    return protocol("OpenSSL's public key check fails");
  }
  return key;
}

Result<Pkey> rsa_key(const json::Json& jwk) {
  auto n = member(jwk, "n");
  if (!n) return std::unexpected(n.error());
  auto e = member(jwk, "e");
  if (!e) return std::unexpected(e.error());
  if (n->size() > 1024 || e->size() > 8) return protocol("'n' or 'e' is too long");
  std::unique_ptr<BIGNUM, BnFree> bn_n(BN_bin2bn(reinterpret_cast<const unsigned char*>(n->data()),
                                                 static_cast<int>(n->size()), nullptr));
  std::unique_ptr<BIGNUM, BnFree> bn_e(BN_bin2bn(reinterpret_cast<const unsigned char*>(e->data()),
                                                 static_cast<int>(e->size()), nullptr));
  if (!bn_n || !bn_e) return protocol("out of memory building an RSA key");
  // RFC 7518 §6.3.1.1 forbids leading zero octets in 'n'; some providers
  // send them anyway, and they change nothing: the size counts in bits.
  const int bits = BN_num_bits(bn_n.get());
  if (bits < 2048 || bits > 8192) {
    return protocol(fmt::format("the modulus has {} bits, not 2048 to 8192", bits));
  }
  if (!BN_is_odd(bn_e.get()) || BN_num_bits(bn_e.get()) < 2) {
    return protocol("'e' is not an odd exponent above 1");
  }
  std::unique_ptr<OSSL_PARAM_BLD, BldFree> bld(OSSL_PARAM_BLD_new());
  if (!bn_n || !bn_e || !bld ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get()) != 1) {
    return protocol("out of memory building an RSA key");
  }
  return from_params("RSA", bld.get());
}

Result<Pkey> ec_key(const json::Json& jwk) {
  auto x = member(jwk, "x", 32);
  if (!x) return std::unexpected(x.error());
  auto y = member(jwk, "y", 32);
  if (!y) return std::unexpected(y.error());
  std::string point = "\x04" + *x + *y;  // SEC 1 uncompressed
  std::unique_ptr<OSSL_PARAM_BLD, BldFree> bld(OSSL_PARAM_BLD_new());
  char group[] = "prime256v1";
  if (!bld ||
      OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, 0) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                       point.size()) != 1) {
    return protocol("out of memory building an EC key");
  }
  return from_params("EC", bld.get());
}

Result<Pkey> ed25519_key(const json::Json& jwk) {
  auto x = member(jwk, "x", 32);
  if (!x) return std::unexpected(x.error());
  std::unique_ptr<OSSL_PARAM_BLD, BldFree> bld(OSSL_PARAM_BLD_new());
  if (!bld || OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, x->data(),
                                               x->size()) != 1) {
    return protocol("out of memory building an Ed25519 key");
  }
  return from_params("ED25519", bld.get());
}

// R || S (RFC 7518 §3.4) as the DER ECDSA-Sig-Value OpenSSL verifies.
std::optional<std::string> ecdsa_der(std::string_view raw) {
  if (raw.size() != 64) return std::nullopt;
  std::unique_ptr<ECDSA_SIG, SigFree> sig(ECDSA_SIG_new());
  BIGNUM* r = BN_bin2bn(reinterpret_cast<const unsigned char*>(raw.data()), 32, nullptr);
  BIGNUM* s = BN_bin2bn(reinterpret_cast<const unsigned char*>(raw.data() + 32), 32, nullptr);
  if (!sig || r == nullptr || s == nullptr || ECDSA_SIG_set0(sig.get(), r, s) != 1) {
    BN_free(r);
    BN_free(s);
    return std::nullopt;
  }
  unsigned char* der = nullptr;
  const int size = i2d_ECDSA_SIG(sig.get(), &der);
  if (size <= 0) return std::nullopt;
  std::string out(reinterpret_cast<const char*>(der), static_cast<std::size_t>(size));
  OPENSSL_free(der);
  return out;
}

}  // namespace

struct KeySet::Key {
  std::string kid;
  std::string alg;  // the JWK's own `alg`, empty when unset
  detail::Kty kty = detail::Kty::rsa;
  detail::Pkey pkey;
  std::size_t rsa_bytes = 0;

  [[nodiscard]] bool fits(std::string_view token_alg) const {
    const auto need = kty_for(token_alg);
    return need && *need == kty && (alg.empty() || alg == token_alg);
  }
};

bool supported_alg(std::string_view alg) {
  return kty_for(alg).has_value();
}

Result<Compact> parse_compact(std::string_view text) {
  if (text.size() > k_max_compact_size) {
    return protocol(
        fmt::format("the JWS is {} bytes, over the limit of {}", text.size(), k_max_compact_size));
  }
  const auto dot1 = text.find('.');
  const auto dot2 = dot1 == std::string_view::npos ? dot1 : text.find('.', dot1 + 1);
  if (dot2 == std::string_view::npos || text.find('.', dot2 + 1) != std::string_view::npos) {
    return protocol("it is not a compact JWS (three base64url parts separated by '.')");
  }
  const auto header_b64 = text.substr(0, dot1);
  if (header_b64.size() > k_max_header_size) return protocol("its JOSE header is too large");
  auto header_json = base64url_decode(header_b64);
  if (!header_json) return protocol("its JOSE header is not base64url");
  auto header = json::parse(*header_json, "the JOSE header", 8);
  if (!header || !header->is_object()) return protocol("its JOSE header is not a JSON object");
  Compact out;
  const auto alg = header->find("alg");
  if (alg == header->end() || !alg->is_string())
    return protocol("its JOSE header has no string 'alg'");
  out.alg = alg->get<std::string>();
  if (out.alg == "none" || out.alg.empty()) {
    return refused("alg 'none': an unsigned token is refused");
  }
  if (header->contains("crit")) {
    return protocol("its JOSE header has 'crit': tokend understands no JWS extension");
  }
  if (const auto kid = header->find("kid"); kid != header->end()) {
    if (!kid->is_string() || kid->get_ref<const std::string&>().size() > k_max_kid_size) {
      return protocol("its 'kid' is not a string of at most 256 bytes");
    }
    out.kid = kid->get<std::string>();
  }
  auto payload = base64url_decode(text.substr(dot1 + 1, dot2 - dot1 - 1));
  if (!payload) return protocol("its payload is not base64url");
  auto signature = base64url_decode(text.substr(dot2 + 1));
  if (!signature) return protocol("its signature is not base64url");
  if (signature->empty()) return refused("it has no signature");
  out.signing_input = std::string(text.substr(0, dot2));
  out.payload = std::move(*payload);
  out.signature = std::move(*signature);
  return out;
}

KeySet::KeySet() = default;
KeySet::~KeySet() = default;
KeySet::KeySet(KeySet&&) noexcept = default;
KeySet& KeySet::operator=(KeySet&&) noexcept = default;

Result<KeySet> KeySet::parse(std::string_view document) {
  if (document.size() > k_max_jwks_size) {
    return protocol(fmt::format("the JWK Set is {} bytes, over the limit of {}", document.size(),
                                k_max_jwks_size));
  }
  auto doc = json::parse(document, "the JWK Set", 8);
  if (!doc) return protocol("the JWK Set is not JSON: " + doc.error().message);
  if (!doc->is_object()) return protocol("the JWK Set is not a JSON object");
  const auto keys = doc->find("keys");
  if (keys == doc->end() || !keys->is_array()) return protocol("the JWK Set has no 'keys' array");
  if (keys->size() > k_max_keys) {
    return protocol(
        fmt::format("the JWK Set has {} keys, over the limit of {}", keys->size(), k_max_keys));
  }
  KeySet set;
  for (const auto& jwk : *keys) {
    if (!jwk.is_object()) return protocol("the JWK Set holds a key that is not a JSON object");
    std::string kid;
    if (const auto k = jwk.find("kid"); k != jwk.end()) {
      if (!k->is_string() || k->get_ref<const std::string&>().size() > k_max_kid_size) {
        return protocol("the JWK Set holds a 'kid' that is not a string of at most 256 bytes");
      }
      kid = k->get<std::string>();
    }
    const auto skip = [&set, &kid](std::string why) {
      set.m_skipped.emplace_back(kid, std::move(why));
    };
    const std::string kty = json::string_or(jwk, "kty");
    const std::string crv = json::string_or(jwk, "crv");
    const std::string use = json::string_or(jwk, "use");
    if (!use.empty() && use != "sig") {
      skip(fmt::format("its use is '{}', not 'sig'", excerpt(use)));
      continue;
    }
    if (const auto ops = jwk.find("key_ops"); ops != jwk.end()) {
      const bool verify =
          ops->is_array() && std::any_of(ops->begin(), ops->end(), [](const json::Json& o) {
            return o.is_string() && o.get_ref<const std::string&>() == "verify";
          });
      if (!verify) {
        skip("its key_ops lack 'verify'");
        continue;
      }
    }
    if (jwk.contains("d")) {
      skip("it is a private key (has 'd'); a JWK Set publishes public keys");
      continue;
    }
    auto key = std::make_shared<Key>();
    key->kid = kid;
    if (const auto a = jwk.find("alg"); a != jwk.end()) {
      if (!a->is_string()) {
        skip("its 'alg' is not a string");
        continue;
      }
      key->alg = a->get<std::string>();
    }
    Result<Pkey> built = protocol("");
    if (kty == "RSA") {
      key->kty = Kty::rsa;
      built = rsa_key(jwk);
    } else if (kty == "EC" && crv == "P-256") {
      key->kty = Kty::ec_p256;
      built = ec_key(jwk);
    } else if (kty == "OKP" && crv == "Ed25519") {
      key->kty = Kty::ed25519;
      built = ed25519_key(jwk);
    } else {
      skip(fmt::format(
          "kty '{}' crv '{}' is not one tokend verifies with (RSA, EC P-256, OKP Ed25519)",
          excerpt(kty), excerpt(crv)));
      continue;
    }
    if (!built) {
      skip(fmt::format("{} that does not build: {}", kty_name(key->kty), built.error().message));
      continue;
    }
    if (!key->alg.empty() && !key->fits(key->alg)) {
      skip(fmt::format("its alg '{}' is not one tokend verifies with {}", excerpt(key->alg),
                       kty_name(key->kty)));
      continue;
    }
    key->pkey = std::move(*built);
    if (key->kty == Kty::rsa)
      key->rsa_bytes = static_cast<std::size_t>(EVP_PKEY_get_size(key->pkey.get()));
    set.m_keys.push_back(std::move(key));
  }
  if (set.m_keys.empty()) {
    return protocol(set.m_skipped.empty()
                        ? std::string("the JWK Set has no keys")
                        : fmt::format("the JWK Set has no usable key (key '{}': {})",
                                      excerpt(set.m_skipped[0].first), set.m_skipped[0].second));
  }
  return set;
}

std::size_t KeySet::size() const {
  return m_keys.size();
}

bool KeySet::has_key(std::string_view kid, std::string_view alg) const {
  return std::any_of(m_keys.begin(), m_keys.end(),
                     [&](const auto& k) { return (kid.empty() || k->kid == kid) && k->fits(alg); });
}

Result<> KeySet::verify(const Compact& jws, const std::vector<std::string>& allowed) const {
  if (!supported_alg(jws.alg)) {
    return refused(fmt::format("alg '{}' is refused: tokend verifies RS256, PS256, ES256 and EdDSA",
                               excerpt(jws.alg)));
  }
  if (std::find(allowed.begin(), allowed.end(), jws.alg) == allowed.end()) {
    return refused(fmt::format(
        "alg '{}' is not one the issuer advertises (id_token_signing_alg_values_supported)",
        jws.alg));
  }
  const Key* key = nullptr;
  if (!jws.kid.empty()) {
    bool named = false;
    for (const auto& k : m_keys) {
      if (k->kid != jws.kid) continue;
      named = true;
      if (k->fits(jws.alg)) {
        key = k.get();
        break;
      }
    }
    if (key == nullptr && named) {
      const auto it = std::find_if(m_keys.begin(), m_keys.end(),
                                   [&](const auto& k) { return k->kid == jws.kid; });
      return refused(fmt::format("key '{}' is {}{}, which cannot verify alg '{}'", excerpt(jws.kid),
                                 kty_name((*it)->kty),
                                 (*it)->alg.empty() ? "" : " for alg " + (*it)->alg, jws.alg));
    }
    if (key == nullptr) {
      for (const auto& [kid, why] : m_skipped) {
        if (kid == jws.kid)
          return refused(
              fmt::format("key '{}' of the issuer's JWK Set is unusable: {}", excerpt(kid), why));
      }
      return std::unexpected(Error{
          Errc::not_found, fmt::format("no key '{}' in the issuer's JWK Set", excerpt(jws.kid))});
    }
  } else {
    std::size_t fitting = 0;
    for (const auto& k : m_keys) {
      if (k->fits(jws.alg)) {
        key = k.get();
        ++fitting;
      }
    }
    if (fitting == 0) {
      return std::unexpected(Error{
          Errc::not_found, fmt::format("no key for alg '{}' in the issuer's JWK Set", jws.alg)});
    }
    if (fitting > 1) {
      return refused(
          fmt::format("the token names no kid and the issuer's JWK Set has {} keys for alg '{}'",
                      fitting, jws.alg));
    }
  }

  std::string signature = jws.signature;
  const EVP_MD* md = EVP_sha256();
  if (key->kty == Kty::ec_p256) {
    auto der = ecdsa_der(signature);
    if (!der) return refused("the signature is not an ES256 signature (64 bytes)");
    signature = std::move(*der);
  } else if (key->kty == Kty::rsa) {
    if (signature.size() != key->rsa_bytes)
      return refused("the signature's length is not the key's");
  } else {
    md = nullptr;  // EdDSA signs the message itself
    if (signature.size() != 64)
      return refused("the signature is not an Ed25519 signature (64 bytes)");
  }
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> ctx(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), &pctx, md, nullptr, key->pkey.get()) != 1) {
    return refused("OpenSSL could not start verifying");
  }
  if (jws.alg == "PS256" && (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
                             EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1 ||
                             EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_sha256()) != 1)) {
    return refused("OpenSSL could not set up RSASSA-PSS");
  }
  const int ok = EVP_DigestVerify(
      ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()), signature.size(),
      reinterpret_cast<const unsigned char*>(jws.signing_input.data()), jws.signing_input.size());
  if (ok != 1) {
    return refused(fmt::format("its {} signature does not verify with key '{}' of the issuer",
                               jws.alg, excerpt(key->kid)));
  }
  return {};
}

}  // namespace tokend::daemon::jws

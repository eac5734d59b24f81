// JWS signatures (daemon/jws.hpp): the known-answer vectors of RFC 7515
// Appendix A.2 (RS256) and A.3 (ES256) and RFC 8037 A.4 (EdDSA), a PS256
// signature made with the A.2 key (Python's cryptography), and every way a
// token or a JWK Set is refused, with its exact error.
#include "daemon/jws.hpp"

#include <catch2/catch_test_macros.hpp>

#include "core/encoding.hpp"
#include "core/json.hpp"

using namespace tokend;
using namespace tokend::daemon;

namespace {

// RFC 7515 A.2's RSA public key.
const std::string k_a2_n =
    "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4"
    "QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdb"
    "BYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-D"
    "WNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
// The A.1 to A.3 payload: {"iss":"joe",\r\n "exp":1300819380,\r\n
// "http://example.com/is_root":true}
const std::string k_payload =
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlf"
    "Q";
const std::string k_a2_jws =
    "eyJhbGciOiJSUzI1NiJ9." + k_payload +
    ".cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5j"
    "ujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_"
    "nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07"
    "Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-"
    "eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUT"
    "I8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
// PS256 over the same payload with the A.2 private key (salt 32, MGF1 SHA-256).
const std::string k_ps256_jws =
    "eyJhbGciOiJQUzI1NiJ9." + k_payload +
    ".a4LyIGm7oiLWoIW-3-xB7VV05s3flhkt2oYZCboYdxBOyoTzBjz9TeTTFKx5d4zdHPPqzJ4KHEEv2jUmyjnEmmmN6TVym"
    "Z9slMgQUks0-XKwysE18jjcNAQdgCl5iDt44SZbxlphSlsh_XD9lz743KLEL-"
    "TjReuOJ8cmLsBkTvWm3LbH6bB1rY5NUp8v"
    "m0jZX71OAAo74C6Z9ZzQEXVEWPVPnPIxLN386FNq-WWberBx70MGuBZvOpMqMnGnrtACuzmHKiFNJaJSqvPgk4LXk6QCaN"
    "bHxkWgwLW-8MHRhjydjqnQ8mgf9sLkRX7jFSOoR6qckshkMe2YQ45uX2sd1g";
// RFC 7515 A.3 (ES256).
const std::string k_a3_x = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
const std::string k_a3_y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
const std::string k_a3_jws =
    "eyJhbGciOiJFUzI1NiJ9." + k_payload +
    ".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
// RFC 8037 A.2 / A.4 (EdDSA, Ed25519): the payload "Example of Ed25519 signing".
const std::string k_ed_x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
const std::string k_ed_jws =
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc."
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

const std::vector<std::string> k_all = {"RS256", "PS256", "ES256", "EdDSA"};

json::Json rsa_jwk(const std::string& kid) {
  return {{"kty", "RSA"}, {"kid", kid}, {"use", "sig"}, {"n", k_a2_n}, {"e", "AQAB"}};
}
json::Json ec_jwk(const std::string& kid) {
  return {{"kty", "EC"}, {"kid", kid}, {"crv", "P-256"}, {"x", k_a3_x}, {"y", k_a3_y}};
}
json::Json ed_jwk(const std::string& kid) {
  return {{"kty", "OKP"}, {"kid", kid}, {"crv", "Ed25519"}, {"x", k_ed_x}};
}

jws::KeySet set_of(std::vector<json::Json> keys) {
  auto set = jws::KeySet::parse(json::Json{{"keys", keys}}.dump());
  REQUIRE(set);
  return std::move(*set);
}

// The vector with a header of our own (a kid, another alg), its signature kept.
std::string with_header(const std::string& compact, const json::Json& header) {
  const auto dot = compact.find('.');
  return base64url_encode(header.dump()) + compact.substr(dot);
}

jws::Compact parsed(const std::string& text) {
  auto c = jws::parse_compact(text);
  REQUIRE(c);
  return *c;
}

std::string error_of(const Result<>& r) {
  REQUIRE_FALSE(r);
  return r.error().message;
}

}  // namespace

TEST_CASE("jws: strict base64url", "[daemon][jws]") {
  CHECK(base64url_decode("") == "");
  CHECK(base64url_decode("Zg") == "f");
  CHECK(base64url_decode("Zm8") == "fo");
  CHECK(base64url_decode("Zm9v") == "foo");
  CHECK(base64url_decode("-_8") == std::string("\xfb\xff", 2));
  CHECK_FALSE(base64url_decode("Zg=="));   // padding
  CHECK_FALSE(base64url_decode("Zm9v+"));  // the standard alphabet
  CHECK_FALSE(base64url_decode("Zm9/"));
  CHECK_FALSE(base64url_decode("Zm 9v"));  // white space
  CHECK_FALSE(base64url_decode("Z"));      // a length no encoding has
  CHECK_FALSE(base64url_decode("Zh"));     // non-zero unused bits: not canonical
  CHECK_FALSE(base64url_decode("Zm9"));
  CHECK_FALSE(base64url_decode(std::string("Zm\0v", 4)));
}

TEST_CASE("jws: the RFC 7515 and RFC 8037 vectors verify", "[daemon][jws]") {
  const auto keys = set_of({rsa_jwk("r"), ec_jwk("e"), ed_jwk("o")});
  CHECK(keys.size() == 3);
  // Without a kid, the one key that fits the algorithm.
  for (const auto* text : {&k_a2_jws, &k_ps256_jws, &k_a3_jws, &k_ed_jws}) {
    const auto c = parsed(*text);
    INFO(c.alg);
    CHECK(keys.verify(c, k_all));
  }
  CHECK(parsed(k_ed_jws).payload == "Example of Ed25519 signing");
  CHECK(parsed(k_a2_jws).payload.starts_with("{\"iss\":\"joe\""));
  // The header is signed too: a kid added to A.2's header changes the
  // signing input, and its signature no longer verifies.
  CHECK(error_of(
            keys.verify(parsed(with_header(k_a2_jws, {{"alg", "RS256"}, {"kid", "r"}})), k_all)) ==
        "its RS256 signature does not verify with key 'r' of the issuer");
}

TEST_CASE("jws: tampered, unsigned, unknown or confused tokens are refused", "[daemon][jws]") {
  const auto keys = set_of({rsa_jwk("r"), ec_jwk("e"), ed_jwk("o")});
  SECTION("a tampered payload or signature") {
    auto payload = k_a2_jws;
    payload[40] = payload[40] == 'A' ? 'B' : 'A';
    CHECK(error_of(keys.verify(parsed(payload), k_all)) ==
          "its RS256 signature does not verify with key 'r' of the issuer");
    auto sig = k_a3_jws;
    sig[sig.size() - 5] = sig[sig.size() - 5] == 'A' ? 'B' : 'A';
    CHECK(error_of(keys.verify(parsed(sig), k_all)) ==
          "its ES256 signature does not verify with key 'e' of the issuer");
    auto ed = k_ed_jws;
    ed[ed.size() - 10] = ed[ed.size() - 10] == 'A' ? 'B' : 'A';
    CHECK(error_of(keys.verify(parsed(ed), k_all)) ==
          "its EdDSA signature does not verify with key 'o' of the issuer");
    // A truncated signature.
    auto truncated = parsed(k_a2_jws);
    truncated.signature.pop_back();
    CHECK(error_of(keys.verify(truncated, k_all)) == "the signature's length is not the key's");
    // RS256's signature presented as PS256 (same key, other padding).
    CHECK(error_of(keys.verify(parsed(with_header(k_a2_jws, {{"alg", "PS256"}})), k_all)) ==
          "its PS256 signature does not verify with key 'r' of the issuer");
  }
  SECTION("alg none, HMAC and unknown algorithms") {
    auto none = jws::parse_compact(base64url_encode(R"({"alg":"none"})") + "." + k_payload + ".");
    REQUIRE_FALSE(none);
    CHECK(none.error().message == "alg 'none': an unsigned token is refused");
    auto none_signed = jws::parse_compact(with_header(k_a2_jws, {{"alg", "none"}}));
    REQUIRE_FALSE(none_signed);
    CHECK(none_signed.error().message == "alg 'none': an unsigned token is refused");
    // HS256 keyed with the RSA key's bytes (the classic confusion): never.
    CHECK(error_of(keys.verify(parsed(with_header(k_a2_jws, {{"alg", "HS256"}, {"kid", "r"}})),
                               k_all)) ==
          "alg 'HS256' is refused: tokend verifies RS256, PS256, ES256 and EdDSA");
    CHECK(error_of(keys.verify(parsed(with_header(k_a2_jws, {{"alg", "RS512"}})), k_all)) ==
          "alg 'RS512' is refused: tokend verifies RS256, PS256, ES256 and EdDSA");
    // Supported, but not what this issuer advertises.
    CHECK(error_of(keys.verify(parsed(k_a3_jws), {"RS256"})) ==
          "alg 'ES256' is not one the issuer advertises (id_token_signing_alg_values_supported)");
  }
  SECTION("a kid the set does not have: not_found, so the caller fetches the set again") {
    auto r =
        keys.verify(parsed(with_header(k_a2_jws, {{"alg", "RS256"}, {"kid", "rotated"}})), k_all);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::not_found);
    CHECK(r.error().message == "no key 'rotated' in the issuer's JWK Set");
    CHECK_FALSE(keys.has_key("rotated", "RS256"));
    CHECK(keys.has_key("r", "RS256"));
    CHECK(keys.has_key("", "EdDSA"));
  }
  SECTION("alg confusion: a key of another type, or for another alg") {
    CHECK(error_of(keys.verify(parsed(with_header(k_a3_jws, {{"alg", "ES256"}, {"kid", "r"}})),
                               k_all)) == "key 'r' is an RSA key, which cannot verify alg 'ES256'");
    CHECK(error_of(keys.verify(parsed(with_header(k_a2_jws, {{"alg", "RS256"}, {"kid", "e"}})),
                               k_all)) ==
          "key 'e' is an EC P-256 key, which cannot verify alg 'RS256'");
    CHECK(error_of(keys.verify(parsed(with_header(k_ed_jws, {{"alg", "EdDSA"}, {"kid", "e"}})),
                               k_all)) ==
          "key 'e' is an EC P-256 key, which cannot verify alg 'EdDSA'");
    auto ps_only = rsa_jwk("r");
    ps_only["alg"] = "PS256";
    const auto restricted = set_of({ps_only});
    CHECK(error_of(restricted.verify(
              parsed(with_header(k_a2_jws, {{"alg", "RS256"}, {"kid", "r"}})), k_all)) ==
          "key 'r' is an RSA key for alg PS256, which cannot verify alg 'RS256'");
    CHECK(restricted.verify(parsed(k_ps256_jws), k_all));
  }
  SECTION("no kid and more than one key for the algorithm") {
    const auto two = set_of({rsa_jwk("a"), rsa_jwk("b")});
    CHECK(error_of(two.verify(parsed(k_a2_jws), k_all)) ==
          "the token names no kid and the issuer's JWK Set has 2 keys for alg 'RS256'");
    auto r = two.verify(parsed(k_a3_jws), k_all);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::not_found);
  }
}

TEST_CASE("jws: malformed compact tokens", "[daemon][jws]") {
  const auto message = [](std::string_view text) {
    auto c = jws::parse_compact(text);
    REQUIRE_FALSE(c);
    return c.error().message;
  };
  const std::string three = "it is not a compact JWS (three base64url parts separated by '.')";
  CHECK(message("abc") == three);
  CHECK(message("a.b") == three);
  CHECK(message("a.b.c.d") == three);
  CHECK(message("eyJhbGciOiJSUzI1NiJ9=." + k_payload + ".AAAA") ==
        "its JOSE header is not base64url");
  CHECK(message(base64url_encode("[1]") + ".e30.AAAA") == "its JOSE header is not a JSON object");
  CHECK(message(base64url_encode(R"({"alg":7})") + ".e30.AAAA") ==
        "its JOSE header has no string 'alg'");
  CHECK(message(base64url_encode(R"({"alg":"RS256","crit":["exp"]})") + ".e30.AAAA") ==
        "its JOSE header has 'crit': tokend understands no JWS extension");
  CHECK(message(base64url_encode(R"({"alg":"RS256","kid":1})") + ".e30.AAAA") ==
        "its 'kid' is not a string of at most 256 bytes");
  CHECK(message(base64url_encode(R"({"alg":"RS256"})") + ".e30=.AAAA") ==
        "its payload is not base64url");
  CHECK(message(base64url_encode(R"({"alg":"RS256"})") + ".e30.AA+A") ==
        "its signature is not base64url");
  CHECK(message(base64url_encode(R"({"alg":"RS256"})") + ".e30.") == "it has no signature");
  CHECK(message(std::string(jws::k_max_compact_size + 1, 'A')) ==
        "the JWS is 65537 bytes, over the limit of 65536");
}

TEST_CASE("jws: JWK Sets, usable keys and refused ones", "[daemon][jws]") {
  const auto message = [](const std::string& doc) {
    auto s = jws::KeySet::parse(doc);
    REQUIRE_FALSE(s);
    return s.error().message;
  };
  CHECK(message("not json").starts_with("the JWK Set is not JSON"));
  CHECK(message("[]") == "the JWK Set is not a JSON object");
  CHECK(message("{}") == "the JWK Set has no 'keys' array");
  CHECK(message(R"({"keys":[]})") == "the JWK Set has no keys");
  CHECK(message(R"({"keys":[1]})") == "the JWK Set holds a key that is not a JSON object");
  CHECK(message(json::Json{{"keys", std::vector<json::Json>(65, ed_jwk("o"))}}.dump()) ==
        "the JWK Set has 65 keys, over the limit of 64");
  CHECK(message(std::string(jws::k_max_jwks_size + 1, ' ')) ==
        "the JWK Set is 262145 bytes, over the limit of 262144");
  CHECK(message(R"({"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]})") ==
        "the JWK Set has no usable key (key 'h': kty 'oct' crv '' is not one tokend verifies with "
        "(RSA, EC P-256, OKP Ed25519))");

  // Unusable keys are left out, the reason kept for a token naming them.
  auto small = rsa_jwk("small");
  small["n"] = base64url_encode(std::string(128, '\xff'));
  auto off_curve = ec_jwk("off");
  off_curve["y"] = k_a3_x;
  auto short_x = ed_jwk("short");
  short_x["x"] = k_ed_x.substr(0, 40);
  auto padded = rsa_jwk("padded");
  padded["n"] = k_a2_n + "==";
  auto enc = rsa_jwk("enc");
  enc["use"] = "enc";
  auto priv = ed_jwk("priv");
  priv["d"] = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
  auto p384 = ec_jwk("p384");
  p384["crv"] = "P-384";
  const auto keys = set_of({small, off_curve, short_x, padded, enc, priv, p384, ed_jwk("good")});
  CHECK(keys.size() == 1);
  const auto unusable = [&keys](const std::string& kid, const std::string& alg,
                                const std::string& compact) {
    return error_of(keys.verify(parsed(with_header(compact, {{"alg", alg}, {"kid", kid}})), k_all));
  };
  CHECK(unusable("small", "RS256", k_a2_jws) ==
        "key 'small' of the issuer's JWK Set is unusable: an RSA key that does not build: the "
        "modulus has 1024 bits, not 2048 to 8192");
  CHECK(unusable("off", "ES256", k_a3_jws)
            .starts_with("key 'off' of the issuer's JWK Set is unusable: an EC P-256 key that does "
                         "not build: OpenSSL"));
  CHECK(unusable("short", "EdDSA", k_ed_jws) ==
        "key 'short' of the issuer's JWK Set is unusable: an OKP Ed25519 key that does not build: "
        "'x' is 30 bytes, not 32");
  CHECK(unusable("padded", "RS256", k_a2_jws) ==
        "key 'padded' of the issuer's JWK Set is unusable: an RSA key that does not build: 'n' is "
        "not base64url");
  CHECK(unusable("enc", "RS256", k_a2_jws) ==
        "key 'enc' of the issuer's JWK Set is unusable: its use is 'enc', not 'sig'");
  CHECK(unusable("priv", "EdDSA", k_ed_jws) ==
        "key 'priv' of the issuer's JWK Set is unusable: it is a private key (has 'd'); a JWK Set "
        "publishes public keys");
  CHECK(unusable("p384", "ES256", k_a3_jws) ==
        "key 'p384' of the issuer's JWK Set is unusable: kty 'EC' crv 'P-384' is not one tokend "
        "verifies with (RSA, EC P-256, OKP Ed25519)");
  CHECK(keys.verify(parsed(k_ed_jws), k_all));
}

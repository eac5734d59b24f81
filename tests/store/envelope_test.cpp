// AES-256-GCM envelopes of the PostgreSQL store.
#include "store/detail/envelope.hpp"

#include <catch2/catch_test_macros.hpp>

#include "core/encoding.hpp"
#include "core/random.hpp"

using namespace tokend;
namespace envelope = tokend::store::detail;
using envelope::associated_data;
using envelope::k_envelope_overhead;
using envelope::k_gcm_nonce_bytes;
using envelope::seal;
using envelope::seal_with_nonce;

namespace {

std::string unhex(std::string_view hex) {
  auto bytes = hex_decode(hex);
  REQUIRE(bytes);
  return *bytes;
}

Secret random_key() {
  return *random_secret(32);
}

}  // namespace

// The GCM specification's test case 16 (McGrew and Viega, "The Galois/Counter
// Mode of Operation", 256-bit key, with additional data).
TEST_CASE("AES-256-GCM known answer: GCM test case 16", "[store][envelope]") {
  const Secret key(unhex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"));
  const std::string nonce = unhex("cafebabefacedbaddecaf888");
  const std::string plaintext = unhex(
      "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e24"
      "49a6b525b16aedf5aa0de657ba637b39");
  const std::string aad = unhex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
  const std::string ciphertext =
      "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b10"
      "56828838c5f61e6393ba7a0abcc9f662";
  const std::string tag = "76fc6ece0f4e1768cddf8853bb2d551b";

  auto sealed = seal_with_nonce(key, nonce, plaintext, aad);
  REQUIRE(sealed);
  CHECK(hex_encode(*sealed) == "01" + hex_encode(nonce) + ciphertext + tag);
  auto opened = envelope::open(key, *sealed, aad);
  REQUIRE(opened);
  CHECK(opened->reveal() == plaintext);
}

TEST_CASE("an envelope opens only with its key and its additional data, unaltered",
          "[store][envelope]") {
  const Secret key = random_key();
  const std::string aad = associated_data({"tokend-pg-v1", "credentials", "alice", "jira"});
  auto sealed = seal(key, "the token", aad);
  REQUIRE(sealed);
  REQUIRE(sealed->size() == k_envelope_overhead + 9);
  CHECK(sealed->find("the token") == std::string::npos);
  CHECK(envelope::open(key, *sealed, aad)->reveal() == "the token");

  // A fresh nonce every time.
  auto again = seal(key, "the token", aad);
  REQUIRE(again);
  CHECK(again->substr(1, k_gcm_nonce_bytes) != sealed->substr(1, k_gcm_nonce_bytes));

  const auto refused = [](const Result<Secret>& r) {
    return !r && r.error().code == Errc::corrupt;
  };
  CHECK(refused(envelope::open(random_key(), *sealed, aad)));
  CHECK(refused(envelope::open(key, *sealed,
                               associated_data({"tokend-pg-v1", "credentials", "bob", "jira"}))));
  CHECK(refused(envelope::open(key, *sealed, "")));
  for (std::size_t i = 0; i < sealed->size(); ++i) {
    std::string altered = *sealed;
    altered[i] = static_cast<char>(altered[i] ^ 0x01);
    INFO(i);
    CHECK(refused(envelope::open(key, altered, aad)));
  }
  CHECK(refused(envelope::open(key, sealed->substr(0, k_envelope_overhead - 1), aad)));
  CHECK(refused(envelope::open(key, sealed->substr(0, sealed->size() - 1), aad)));
  CHECK(refused(envelope::open(key, "", aad)));

  // An empty plaintext is an envelope too.
  auto empty = seal(key, "", aad);
  REQUIRE(empty);
  CHECK(envelope::open(key, *empty, aad)->empty());
}

TEST_CASE("additional data: length-prefixed parts never run together", "[store][envelope]") {
  CHECK(associated_data({"ab", "c"}) != associated_data({"a", "bc"}));
  CHECK(associated_data({"a", ""}) != associated_data({"a"}));
  CHECK(associated_data({"ab"}) == std::string("\0\0\0\x02"
                                               "ab",
                                               6));
}

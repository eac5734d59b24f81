// AES-256-GCM envelopes (OpenSSL libcrypto). Internal to store/ and its tests.
//
// An envelope is one byte string:
//
//   0x01 | nonce (12 bytes, random) | ciphertext (as long as the plaintext) | tag (16 bytes)
//
// The first byte is the format version. The additional data (AAD) is not in
// the envelope: the reader rebuilds it from what the envelope is for (the
// row and column it sits in), so an envelope moved anywhere else fails to
// open.
#pragma once

#include <cstddef>
#include <initializer_list>
#include <string>
#include <string_view>

#include "core/error.hpp"
#include "core/secret.hpp"

namespace tokend::store::detail {

inline constexpr std::size_t k_aes256_key_bytes = 32;
inline constexpr std::size_t k_gcm_nonce_bytes = 12;
inline constexpr std::size_t k_gcm_tag_bytes = 16;
inline constexpr char k_envelope_v1 = 0x01;
inline constexpr std::size_t k_envelope_overhead = 1 + k_gcm_nonce_bytes + k_gcm_tag_bytes;

// Encrypts under `key` (32 bytes) with a fresh random nonce.
Result<std::string> seal(const Secret& key, std::string_view plaintext, std::string_view aad);
// The same with a given 12-byte nonce: for known-answer tests only (a nonce
// must never repeat under one key).
Result<std::string> seal_with_nonce(const Secret& key, std::string_view nonce,
                                    std::string_view plaintext, std::string_view aad);
// Decrypts and authenticates. Any failure (another key, other additional
// data, altered or truncated bytes, an unknown version) is Errc::corrupt
// with a message that names no bytes; the caller adds which value it was.
Result<Secret> open(const Secret& key, std::string_view envelope, std::string_view aad);

// Additional data from parts, each prefixed with its length (4 bytes, big
// endian), so no two different part lists give the same bytes.
std::string associated_data(std::initializer_list<std::string_view> parts);

}  // namespace tokend::store::detail

// AES-256-GCM through OpenSSL's EVP interface. libcrypto is already loaded
// by the SQLCipher library (its own cipher provider) and by libcurl, so the
// PostgreSQL store adds no new library to the process.
#include "store/detail/envelope.hpp"

#include <openssl/evp.h>

#include <climits>
#include <cstdint>
#include <memory>

#include "core/random.hpp"

namespace tokend::store::detail {

namespace {

struct CipherCtxFree {
  void operator()(EVP_CIPHER_CTX* ctx) const noexcept { EVP_CIPHER_CTX_free(ctx); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree>;

const unsigned char* bytes_of(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

unsigned char* bytes_of(std::string& s) {
  return reinterpret_cast<unsigned char*>(s.data());
}

Error envelope_error(std::string message) {
  return Error{Errc::corrupt, std::move(message)};
}

bool fits_int(std::size_t n) {
  return n <= static_cast<std::size_t>(INT_MAX);
}

}  // namespace

std::string associated_data(std::initializer_list<std::string_view> parts) {
  std::string out;
  for (const std::string_view part : parts) {
    const auto n = static_cast<std::uint32_t>(part.size());
    out.push_back(static_cast<char>((n >> 24U) & 0xffU));
    out.push_back(static_cast<char>((n >> 16U) & 0xffU));
    out.push_back(static_cast<char>((n >> 8U) & 0xffU));
    out.push_back(static_cast<char>(n & 0xffU));
    out.append(part);
  }
  return out;
}

Result<std::string> seal_with_nonce(const Secret& key, std::string_view nonce,
                                    std::string_view plaintext, std::string_view aad) {
  if (key.size() != k_aes256_key_bytes || nonce.size() != k_gcm_nonce_bytes) {
    return fail(Errc::internal, "AES-256-GCM needs a 32-byte key and a 12-byte nonce");
  }
  if (!fits_int(plaintext.size()) || !fits_int(aad.size())) {
    return fail(Errc::invalid_argument, "a value to encrypt is too large");
  }
  const CipherCtx ctx(EVP_CIPHER_CTX_new());
  std::string out(k_envelope_overhead + plaintext.size(), '\0');
  out[0] = k_envelope_v1;
  out.replace(1, k_gcm_nonce_bytes, nonce);
  unsigned char* const cipher_out = bytes_of(out) + 1 + k_gcm_nonce_bytes;
  int len = 0;
  const bool ok =
      ctx && EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) == 1 &&
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, static_cast<int>(k_gcm_nonce_bytes),
                          nullptr) == 1 &&
      EVP_EncryptInit_ex(ctx.get(), nullptr, nullptr, bytes_of(key.reveal()), bytes_of(nonce)) ==
          1 &&
      (aad.empty() || EVP_EncryptUpdate(ctx.get(), nullptr, &len, bytes_of(aad),
                                        static_cast<int>(aad.size())) == 1) &&
      EVP_EncryptUpdate(ctx.get(), cipher_out, &len, bytes_of(plaintext),
                        static_cast<int>(plaintext.size())) == 1 &&
      EVP_EncryptFinal_ex(ctx.get(), cipher_out + len, &len) == 1 &&
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, static_cast<int>(k_gcm_tag_bytes),
                          cipher_out + plaintext.size()) == 1;
  if (!ok) return fail(Errc::internal, "AES-256-GCM encryption failed in libcrypto");
  return out;
}

Result<std::string> seal(const Secret& key, std::string_view plaintext, std::string_view aad) {
  std::string nonce(k_gcm_nonce_bytes, '\0');
  if (auto r = fill_random(nonce.data(), nonce.size()); !r) return std::unexpected(r.error());
  return seal_with_nonce(key, nonce, plaintext, aad);
}

Result<Secret> open(const Secret& key, std::string_view envelope, std::string_view aad) {
  if (key.size() != k_aes256_key_bytes) {
    return fail(Errc::internal, "AES-256-GCM needs a 32-byte key");
  }
  if (envelope.size() < k_envelope_overhead) {
    return std::unexpected(envelope_error("the encrypted value is truncated"));
  }
  if (envelope[0] != k_envelope_v1) {
    return std::unexpected(envelope_error("the encrypted value has an unknown format version"));
  }
  if (!fits_int(envelope.size()) || !fits_int(aad.size())) {
    return std::unexpected(envelope_error("the encrypted value is too large"));
  }
  const std::string_view nonce = envelope.substr(1, k_gcm_nonce_bytes);
  const std::string_view ciphertext =
      envelope.substr(1 + k_gcm_nonce_bytes, envelope.size() - k_envelope_overhead);
  std::string tag(envelope.substr(envelope.size() - k_gcm_tag_bytes));
  // The plaintext is written into the buffer the Secret adopts, and wiped
  // if the tag does not match.
  std::string plain(ciphertext.size(), '\0');
  unsigned char* const plain_out = bytes_of(plain);
  const CipherCtx ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  const bool ready =
      ctx && EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) == 1 &&
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, static_cast<int>(k_gcm_nonce_bytes),
                          nullptr) == 1 &&
      EVP_DecryptInit_ex(ctx.get(), nullptr, nullptr, bytes_of(key.reveal()), bytes_of(nonce)) ==
          1 &&
      (aad.empty() || EVP_DecryptUpdate(ctx.get(), nullptr, &len, bytes_of(aad),
                                        static_cast<int>(aad.size())) == 1) &&
      EVP_DecryptUpdate(ctx.get(), plain_out, &len, bytes_of(ciphertext),
                        static_cast<int>(ciphertext.size())) == 1 &&
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, static_cast<int>(k_gcm_tag_bytes),
                          bytes_of(tag)) == 1;
  if (!ready) return fail(Errc::internal, "AES-256-GCM decryption failed in libcrypto");
  if (EVP_DecryptFinal_ex(ctx.get(), plain_out + len, &len) != 1) {
    secure_wipe(plain);
    return std::unexpected(envelope_error(
        "the encrypted value does not authenticate: another key, another place, or altered "
        "bytes"));
  }
  return Secret::adopt(std::move(plain));
}

}  // namespace tokend::store::detail

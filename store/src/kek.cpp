#include "store/kek.hpp"

#include <fmt/format.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <array>

#include "core/encoding.hpp"
#include "core/fs.hpp"
#include "store/key.hpp"

namespace tokend::store {

namespace {

constexpr std::size_t k_max_kek_file_bytes = 4096;
constexpr std::size_t k_kek_bytes = 32;
constexpr std::size_t k_max_kek_id = 64;
constexpr std::size_t k_derived_id_bytes = 8;

Result<Kek> kek_from_file(const std::filesystem::path& file, std::string source, std::string id) {
  auto contents = fs::read_private_file(file, k_max_kek_file_bytes);
  if (!contents) {
    return std::unexpected(contents.error().context("reading the key-encryption key"));
  }
  return kek_from_contents(*contents, std::move(source), std::move(id));
}

}  // namespace

std::string derived_kek_id(const Secret& material) {
  static constexpr std::string_view k_label = "tokend key id";
  std::array<unsigned char, EVP_MAX_MD_SIZE> mac{};
  unsigned int size = 0;
  if (HMAC(EVP_sha256(), material.reveal().data(), static_cast<int>(material.size()),
           reinterpret_cast<const unsigned char*>(k_label.data()), k_label.size(), mac.data(),
           &size) == nullptr ||
      size < k_derived_id_bytes) {
    return "kek-unknown";  // never with SHA-256; the key check then reports the key
  }
  return "kek-" + hex_encode(std::string_view(reinterpret_cast<const char*>(mac.data()),
                                              k_derived_id_bytes));
}

Result<> validate_kek_id(std::string_view id) {
  const bool ok = !id.empty() && id.size() <= k_max_kek_id &&
                  id.find_first_not_of(
                      "abcdefghijklmnopqrstuvwxyz"
                      "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                      "0123456789._-") == std::string_view::npos;
  if (ok) return {};
  return fail(Errc::config,
              "a key-encryption key id is 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-'");
}

Result<Kek> kek_from_contents(const Secret& contents, std::string source, std::string id) {
  // The database key's reader knows raw and hex keys; a passphrase is not a
  // KEK (there is no KDF on this path).
  auto key = key_from_contents(contents, source);
  if (!key) return std::unexpected(key.error());
  if (key->kind != KeyKind::raw || key->material.size() != k_kek_bytes) {
    return fail(Errc::config,
                fmt::format("the key-encryption key from {} must be 32 bytes, raw or as 64 "
                            "hexadecimal characters; make one with: openssl rand -hex 32",
                            source));
  }
  if (id.empty()) {
    id = derived_kek_id(key->material);
  } else if (auto r = validate_kek_id(id); !r) {
    return std::unexpected(r.error());
  }
  return Kek{std::move(key->material), std::move(id), std::move(source)};
}

Result<Kek> resolve_kek(const KekOptions& options, const EnvLookup& env) {
  std::string id = options.key_id;
  if (id.empty()) {
    if (auto e = env(k_kek_id_env); e) id = *e;
  }

  std::filesystem::path file = options.key_file;
  if (file.empty()) {
    if (auto e = env(k_kek_file_env); e && !e->empty()) file = *e;
  }
  if (!file.empty()) {
    if (!fs::exists_nofollow(file)) {
      return fail(Errc::unavailable,
                  fmt::format("key-encryption key file {} does not exist; create it (openssl "
                              "rand -hex 32, mode 0600) or name another with --kek-file/{}",
                              file.string(), k_kek_file_env));
    }
    return kek_from_file(file, "KEK file " + file.string(), std::move(id));
  }

  if (auto dir = env("CREDENTIALS_DIRECTORY"); dir && !dir->empty()) {
    const std::filesystem::path cred = std::filesystem::path(*dir) / k_kek_credential;
    if (fs::exists_nofollow(cred)) {
      return kek_from_file(cred, "systemd credential " + cred.string(), std::move(id));
    }
  }

  if (auto hex = env(k_kek_env); hex && !hex->empty()) {
    const Secret text = Secret::adopt(std::move(*hex));
    const std::string_view digits = text.reveal();
    if (digits.size() != 2 * k_kek_bytes ||
        digits.find_first_not_of("0123456789abcdefABCDEF") != std::string_view::npos) {
      return fail(Errc::config, fmt::format("{} must be 64 hexadecimal characters (a 32-byte "
                                            "key); make one with: openssl rand -hex 32",
                                            k_kek_env));
    }
    return kek_from_contents(text, k_kek_env, std::move(id));
  }

  return fail(Errc::unavailable,
              fmt::format("no key-encryption key: looked for --kek-file/{}, "
                          "$CREDENTIALS_DIRECTORY/{} and {}. Make one with: openssl rand -hex 32",
                          k_kek_file_env, k_kek_credential, k_kek_env));
}

}  // namespace tokend::store

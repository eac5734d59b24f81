#include "store/key.hpp"

#include <fmt/format.h>
#include <sys/stat.h>

#include "core/encoding.hpp"
#include "core/fs.hpp"
#include "core/random.hpp"

namespace tokend::store {

namespace {

constexpr std::size_t k_max_key_file_bytes = 4096;

bool is_hex_key(std::string_view s) {
  if (s.size() != 2 * k_raw_key_bytes) return false;
  for (const char c : s) {
    const bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
    if (!hex) return false;
  }
  return true;
}

std::string_view trim_trailing_space(std::string_view s) {
  while (!s.empty() &&
         (s.back() == '\n' || s.back() == '\r' || s.back() == ' ' || s.back() == '\t')) {
    s.remove_suffix(1);
  }
  return s;
}

Result<DbKey> from_file(const std::filesystem::path& file, std::string source) {
  auto contents = fs::read_private_file(file, k_max_key_file_bytes);
  if (!contents) return std::unexpected(contents.error().context("reading the database key"));
  return key_from_contents(*contents, std::move(source));
}

bool database_has_content(const std::filesystem::path& db) {
  struct stat st{};
  if (::lstat(db.c_str(), &st) != 0) return false;
  return st.st_size > 0;
}

}  // namespace

Result<DbKey> key_from_contents(const Secret& contents, std::string source) {
  const std::string_view raw = contents.reveal();
  if (raw.size() == k_raw_key_bytes) {
    return DbKey{Secret(raw), KeyKind::raw, std::move(source)};
  }
  const std::string_view text = trim_trailing_space(raw);
  if (text.empty()) {
    return fail(Errc::config, fmt::format("the database key from {} is empty", source));
  }
  if (is_hex_key(text)) {
    auto bytes = hex_decode(text);
    Secret key = Secret::adopt(std::move(*bytes));
    return DbKey{std::move(key), KeyKind::raw, std::move(source)};
  }
  return DbKey{Secret(text), KeyKind::passphrase, std::move(source)};
}

Result<DbKey> resolve_key(const KeyOptions& options, const EnvLookup& env) {
  if (options.key_file_explicit) {
    if (!fs::exists_nofollow(options.key_file)) {
      return fail(Errc::unavailable,
                  fmt::format("key file {} does not exist; create it (32 random bytes, mode 0600) "
                              "or drop --key-file/TOKEND_KEY_FILE to use the default",
                              options.key_file.string()));
    }
    return from_file(options.key_file, "key file " + options.key_file.string());
  }

  if (auto dir = env("CREDENTIALS_DIRECTORY"); dir && !dir->empty()) {
    const std::filesystem::path cred = std::filesystem::path(*dir) / "tokend.key";
    if (fs::exists_nofollow(cred)) return from_file(cred, "systemd credential " + cred.string());
  }

  if (auto hex = env("TOKEND_KEY"); hex && !hex->empty()) {
    if (!is_hex_key(*hex)) {
      return fail(Errc::config,
                  "TOKEND_KEY must be 64 hexadecimal characters (a 32-byte key); "
                  "generate one with: openssl rand -hex 32");
    }
    auto bytes = hex_decode(*hex);
    return DbKey{Secret::adopt(std::move(*bytes)), KeyKind::raw, "TOKEND_KEY"};
  }

  if (fs::exists_nofollow(options.key_file)) {
    return from_file(options.key_file, "key file " + options.key_file.string());
  }

  if (database_has_content(options.database)) {
    return fail(Errc::unavailable,
                fmt::format("database {} exists but its key was not found (looked for "
                            "--key-file/TOKEND_KEY_FILE, $CREDENTIALS_DIRECTORY/tokend.key, "
                            "TOKEND_KEY and {}); restore the key file — a new key cannot "
                            "open the existing database",
                            options.database.string(), options.key_file.string()));
  }

  // First start: generate the key.
  if (auto r = fs::ensure_private_dir(options.key_file.parent_path()); !r) {
    return std::unexpected(r.error());
  }
  auto key = random_secret(k_raw_key_bytes);
  if (!key) return std::unexpected(key.error());
  if (auto r = fs::write_file_atomic(options.key_file, key->reveal(), 0600, /*exclusive=*/true);
      !r) {
    return std::unexpected(r.error().context("writing the generated database key"));
  }
  return DbKey{std::move(*key), KeyKind::raw, "generated key file " + options.key_file.string()};
}

}  // namespace tokend::store

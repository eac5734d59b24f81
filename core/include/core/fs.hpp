// File-system helpers with the safety rules of README.md ("Running tokend"): our directories are
// 0700, our secret files 0600, and we refuse paths that are symlinks, owned by
// another uid, or group/other accessible — the way ssh refuses a loose key.
// Every refusal says which path is wrong and the command that fixes it.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "core/error.hpp"
#include "core/secret.hpp"

namespace tokend::fs {

namespace stdfs = std::filesystem;

// Creates `dir` and missing parents with mode 0700, then checks `dir` itself
// with check_private_dir. Existing parents are left as they are.
Result<> ensure_private_dir(const stdfs::path& dir);

// `dir` must be a real directory (not a symlink), owned by us, mode & 077 == 0.
Result<> check_private_dir(const stdfs::path& dir);

// `file` must be a regular file (not a symlink), owned by us, mode & 077 == 0.
Result<> check_private_file(const stdfs::path& file);

// Reads a file that holds a secret after check_private_file; refuses files
// larger than max_bytes.
Result<Secret> read_private_file(const stdfs::path& file, std::size_t max_bytes);

// Writes `data` to `path` atomically: temp file in the same directory with
// `mode`, fsync, rename, fsync of the directory. With exclusive=true the call
// fails with already_exists if `path` exists (no overwrite).
Result<> write_file_atomic(const stdfs::path& path, std::string_view data, unsigned mode,
                           bool exclusive = false);

bool exists_nofollow(const stdfs::path& p);

}  // namespace tokend::fs

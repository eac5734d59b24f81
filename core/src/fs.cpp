#include "core/fs.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "core/encoding.hpp"
#include "core/fd.hpp"
#include "core/random.hpp"

namespace tokend::fs {

namespace {

std::string mode_text(mode_t m) {
  return fmt::format("{:04o}", m & 07777);
}

Result<struct stat> lstat_of(const stdfs::path& p) {
  struct stat st{};
  if (::lstat(p.c_str(), &st) != 0) {
    const int err = errno;
    return fail(err == ENOENT ? Errc::not_found : Errc::io,
                fmt::format("{}: {}", p.string(), errno_text(err)));
  }
  return st;
}

Result<> check_owner_and_mode(const stdfs::path& p, const struct stat& st, bool is_dir) {
  const char* what = is_dir ? "directory" : "file";
  if (st.st_uid != ::geteuid()) {
    return fail(Errc::permission,
                fmt::format("{} {} is owned by uid {}, not by you (uid {}); "
                            "fix with: chown {} {}",
                            what, p.string(), st.st_uid, ::geteuid(), ::geteuid(), p.string()));
  }
  if ((st.st_mode & 077) != 0) {
    return fail(Errc::permission, fmt::format("{} {} is accessible by group or others (mode {}); "
                                              "fix with: chmod {} {}",
                                              what, p.string(), mode_text(st.st_mode),
                                              is_dir ? "700" : "600", p.string()));
  }
  return {};
}

Result<> fsync_dir(const stdfs::path& dir) {
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0 || ::fsync(fd.get()) != 0) {
    return fail(Errc::io, fmt::format("syncing directory {}: {}", dir.string(), errno_text(errno)));
  }
  return {};
}

}  // namespace

bool exists_nofollow(const stdfs::path& p) {
  struct stat st{};
  return ::lstat(p.c_str(), &st) == 0;
}

Result<> check_private_dir(const stdfs::path& dir) {
  auto st = lstat_of(dir);
  if (!st) return std::unexpected(st.error());
  if (S_ISLNK(st->st_mode)) {
    return fail(Errc::permission,
                fmt::format("directory {} is a symbolic link; tokend only uses a real directory "
                            "there — replace the link with a directory (mkdir -m 700 {})",
                            dir.string(), dir.string()));
  }
  if (!S_ISDIR(st->st_mode)) {
    return fail(Errc::permission, fmt::format("{} is not a directory", dir.string()));
  }
  return check_owner_and_mode(dir, *st, true);
}

Result<> check_private_file(const stdfs::path& file) {
  auto st = lstat_of(file);
  if (!st) return std::unexpected(st.error());
  if (S_ISLNK(st->st_mode)) {
    return fail(Errc::permission,
                fmt::format("file {} is a symbolic link; tokend refuses to follow it — "
                            "put the real file there (chmod 600)",
                            file.string()));
  }
  if (!S_ISREG(st->st_mode)) {
    return fail(Errc::permission, fmt::format("{} is not a regular file", file.string()));
  }
  return check_owner_and_mode(file, *st, false);
}

Result<> ensure_private_dir(const stdfs::path& dir) {
  if (dir.empty()) return fail(Errc::invalid_argument, "empty directory path");
  if (!exists_nofollow(dir)) {
    // Create missing components one by one so each new one gets 0700 even
    // under a permissive umask.
    stdfs::path partial;
    for (const auto& part : dir) {
      partial /= part;
      if (exists_nofollow(partial)) continue;
      if (::mkdir(partial.c_str(), 0700) != 0 && errno != EEXIST) {
        return fail(Errc::io,
                    fmt::format("creating directory {}: {}", partial.string(), errno_text(errno)));
      }
      ::chmod(partial.c_str(), 0700);
    }
  }
  return check_private_dir(dir);
}

Result<Secret> read_private_file(const stdfs::path& file, std::size_t max_bytes) {
  if (auto r = check_private_file(file); !r) return std::unexpected(r.error());
  Fd fd(::open(file.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (fd.get() < 0) {
    return fail(Errc::io, fmt::format("opening {}: {}", file.string(), errno_text(errno)));
  }
  std::string buf;
  buf.reserve(max_bytes + 1);
  char chunk[4096];
  for (;;) {
    const ssize_t n = ::read(fd.get(), chunk, sizeof chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      secure_wipe(buf);
      secure_wipe(chunk, sizeof chunk);
      return fail(Errc::io, fmt::format("reading {}: {}", file.string(), errno_text(errno)));
    }
    if (n == 0) break;
    if (buf.size() + static_cast<std::size_t>(n) > max_bytes) {
      secure_wipe(buf);
      secure_wipe(chunk, sizeof chunk);
      return fail(Errc::corrupt, fmt::format("{} is larger than {} bytes; it is not a key or "
                                             "secret file tokend can use",
                                             file.string(), max_bytes));
    }
    buf.append(chunk, static_cast<std::size_t>(n));
  }
  secure_wipe(chunk, sizeof chunk);
  return Secret::adopt(std::move(buf));
}

Result<> write_file_atomic(const stdfs::path& path, std::string_view data, unsigned mode,
                           bool exclusive) {
  const stdfs::path dir = path.has_parent_path() ? path.parent_path() : stdfs::path(".");
  std::string suffix(6, '\0');
  if (auto r = fill_random(suffix.data(), suffix.size()); !r) return r;
  const stdfs::path tmp =
      dir / fmt::format(".{}.tmp-{}", path.filename().string(), hex_encode(suffix));

  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
  if (fd.get() < 0) {
    return fail(Errc::io, fmt::format("creating {}: {}", tmp.string(), errno_text(errno)));
  }
  auto cleanup_fail = [&](std::string what) -> Result<> {
    const int err = errno;
    fd.reset();
    ::unlink(tmp.c_str());
    return fail(Errc::io, fmt::format("{} {}: {}", what, path.string(), errno_text(err)));
  };
  // The umask may have narrowed the mode; set it exactly.
  if (::fchmod(fd.get(), static_cast<mode_t>(mode)) != 0) return cleanup_fail("setting mode of");
  std::size_t off = 0;
  while (off < data.size()) {
    const ssize_t n = ::write(fd.get(), data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return cleanup_fail("writing");
    }
    off += static_cast<std::size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return cleanup_fail("syncing");
  fd.reset();
  if (exclusive) {
    // link() fails if the target exists, giving create-if-absent atomically.
    if (::link(tmp.c_str(), path.c_str()) != 0) {
      const int err = errno;
      ::unlink(tmp.c_str());
      if (err == EEXIST) {
        return fail(Errc::already_exists, fmt::format("{} already exists", path.string()));
      }
      return fail(Errc::io, fmt::format("creating {}: {}", path.string(), errno_text(err)));
    }
    ::unlink(tmp.c_str());
  } else if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return cleanup_fail("replacing");
  }
  return fsync_dir(dir);
}

}  // namespace tokend::fs

// Atomic files: temporary name, fsync, rename, fsync of the directory.
#include "proteus/detail/atomic_file.hpp"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "proteus/error.hpp"

namespace proteus::detail {

namespace {
void sync_path(std::string const& path, int flags) {
  int const fd = ::open(path.c_str(), flags);
  require(fd >= 0, path, std::string("cannot open to sync: ") + std::strerror(errno));
  int const rc = ::fsync(fd);
  int const err = errno;
  ::close(fd);
  // Some file systems (and /proc-like mounts) refuse fsync of a directory: not a data loss.
  require(rc == 0 || err == EINVAL || err == EROFS, path, std::string("fsync failed: ") + std::strerror(err));
}
}  // namespace

std::string temporary_name(std::string const& path) { return path + ".tmp"; }

void commit_file(std::string const& tmp, std::string const& path) {
  sync_path(tmp, O_RDONLY);
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  require(!ec, path, "cannot rename " + tmp + " into place: " + ec.message());
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  sync_path(dir.empty() ? "." : dir.string(), O_RDONLY | O_DIRECTORY);
}

void write_atomically(std::string const& path, std::function<void(std::string const&)> const& writer) {
  std::string const tmp = temporary_name(path);
  try {
    writer(tmp);
    commit_file(tmp, path);
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    throw;
  }
}

void write_file(std::string const& path, std::string const& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  require(out.is_open(), path, std::string("cannot create the file: ") + std::strerror(errno));
  errno = 0;
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.flush();  // the stream state says whether the data reached the file system
  int const err = errno;
  require(out.good(), path,
          "write failed: " + std::string(err != 0 ? std::strerror(err) : "disk full?") + " (" +
              std::to_string(bytes.size()) + " bytes)");
  out.close();
  require(!out.fail(), path, "closing the file failed");
}

void require_free_space(std::string const& path, long long bytes, std::string const& what) {
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (dir.empty()) dir = ".";
  struct statvfs fs {};
  if (::statvfs(dir.c_str(), &fs) != 0) return;  // nothing to say: the write itself will tell
  long long const free = static_cast<long long>(fs.f_bavail) * static_cast<long long>(fs.f_frsize);
  auto mb = [](long long b) {
    char text[32];
    if (b < 10000000)
      std::snprintf(text, sizeof text, "%.0f kB", static_cast<double>(b) / 1e3);
    else
      std::snprintf(text, sizeof text, "%.1f MB", static_cast<double>(b) / 1e6);
    return std::string(text);
  };
  require(free >= bytes, dir.string(),
          "no room for " + what + ": it needs about " + mb(bytes) + " and the file system has " + mb(free) +
              " free");
}

void write_text_atomically(std::string const& path, std::string const& text) {
  write_atomically(path, [&](std::string const& tmp) { write_file(tmp, text); });
}

}  // namespace proteus::detail

// Atomic files: temporary name, fsync, rename, fsync of the directory.
#include "proteus/detail/atomic_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
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

void write_text_atomically(std::string const& path, std::string const& text) {
  write_atomically(path, [&](std::string const& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    require(out.is_open(), tmp, "cannot create the file");
    out << text;
    out.flush();  // the stream state says whether the data reached the file system
    require(out.good(), tmp, "write failed (disk full?)");
    out.close();
    require(!out.fail(), tmp, "closing the file failed");
  });
}

}  // namespace proteus::detail

// Advisory directory locks (flock), released by the kernel when the process ends.
#include "proteus/detail/directory_lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "proteus/error.hpp"

namespace proteus::detail {

DirectoryLock::DirectoryLock(std::string const& dir, std::string const& key) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  require(!ec, key, "cannot create the directory '" + dir + "': " + ec.message());
  std::string const path = (std::filesystem::path(dir) / ".proteus.lock").string();
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  require(fd_ >= 0, key, "cannot open the lock file " + path + ": " + std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    int const err = errno;
    ::close(fd_);
    fd_ = -1;
    fail(key, err == EWOULDBLOCK ? "another run is using the directory '" + dir +
                                       "' (it holds " + path + "): give this run its own directory"
                                 : "cannot lock " + path + ": " + std::strerror(err));
  }
}

DirectoryLock::~DirectoryLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the descriptor drops the lock
}

DirectoryLock& DirectoryLock::operator=(DirectoryLock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

}  // namespace proteus::detail

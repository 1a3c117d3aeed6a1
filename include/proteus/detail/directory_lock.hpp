// One run per output directory: an advisory lock (flock) on `<dir>/.proteus.lock`, held for the
// lifetime of the object. The kernel drops it when the process ends, however it ends, so a
// killed run leaves no stale lock; a second run into the same directory is refused at once
// instead of colliding on the temporary names of its files.
#pragma once

#include <string>

namespace proteus::detail {

class DirectoryLock {
 public:
  DirectoryLock() = default;
  // Creates `dir` if needed and locks it; throws Error naming `key` (the deck key of the
  // directory) when another process holds the lock.
  DirectoryLock(std::string const& dir, std::string const& key);
  ~DirectoryLock();
  DirectoryLock(DirectoryLock&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  DirectoryLock& operator=(DirectoryLock&& other) noexcept;
  DirectoryLock(DirectoryLock const&) = delete;
  DirectoryLock& operator=(DirectoryLock const&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace proteus::detail

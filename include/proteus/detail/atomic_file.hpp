// Files that appear whole or not at all: every file proteus writes (checkpoints, outputs, the
// summary, the resolved deck) goes through a temporary name and is renamed into place only once
// its contents are on disk, so a crash or a failed write never leaves a half-written file under
// the final name, and an earlier file of that name stays intact.
#pragma once

#include <functional>
#include <string>

namespace proteus::detail {

// The temporary name a file is written under before commit_file moves it into place.
std::string temporary_name(std::string const& path);

// Makes `tmp` durable and gives it the name `path`: fsync of the file, rename, fsync of the
// directory (so that after a power loss the new name points at the complete contents).
void commit_file(std::string const& tmp, std::string const& path);

// writer(tmp) fills the temporary file; then it is committed. If the writer or the commit fails,
// the temporary is removed and the error rethrown, leaving `path` as it was.
void write_atomically(std::string const& path, std::function<void(std::string const& tmp)> const& writer);

// Writes `bytes` to `path` (created or truncated), flushed and checked: a full disk or a file-size
// limit is an error naming the file. Not atomic by itself: use it inside write_atomically.
void write_file(std::string const& path, std::string const& bytes);

// Fails, naming `path`'s file system and both sizes, unless it has `bytes` free (checked before a
// large write, so that a full disk is refused before anything is written; the write's own checks
// still catch a disk that fills meanwhile).
void require_free_space(std::string const& path, long long bytes, std::string const& what);

// The same for a text file (flushed and checked before the commit).
void write_text_atomically(std::string const& path, std::string const& text);

}  // namespace proteus::detail

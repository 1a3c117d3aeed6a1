// The project's one exception type. It carries where the problem is (file, line, key, argument or
// tensor name) so that a driver can print one line a user can act on.
#pragma once

#include <stdexcept>
#include <string>

namespace proteus {

class Error : public std::runtime_error {
 public:
  explicit Error(std::string const& message) : std::runtime_error(message) {}
};

// An error every rank of a communicator raised together (so all can exit cleanly, no abort).
// Only rank 0's copy carries the message; the others are empty.
class CollectiveError : public Error {
 public:
  explicit CollectiveError(std::string const& message) : Error(message) {}
};

// Every rank stopped on a signal (SIGTERM, SIGINT) after writing a checkpoint; rank 0's message
// says where the checkpoint is and how to resume.
class StopRequested : public CollectiveError {
 public:
  StopRequested(std::string const& message, int signum) : CollectiveError(message), signal_(signum) {}
  int signal() const { return signal_; }

 private:
  int signal_;
};

// "what: detail" with an optional location prefix, e.g. "deck.in:12: [model] embed_dim: ...".
[[noreturn]] inline void fail(std::string const& where, std::string const& what) {
  throw Error(where.empty() ? what : where + ": " + what);
}

inline void require(bool ok, std::string const& where, std::string const& what) {
  if (!ok) fail(where, what);
}

}  // namespace proteus

// The project's one exception type. It carries where the problem is (file, line, key, argument or
// tensor name) so that a driver can print one line a user can act on.
#pragma once

#include <stdexcept>
#include <string>

namespace proteus {

// `text` with control characters and bytes that are not UTF-8 written as \xNN (newlines and tabs
// kept), so that a damaged input never puts raw binary on a terminal or into a log.
inline std::string printable(std::string const& text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    unsigned char const c = static_cast<unsigned char>(text[i]);
    size_t const len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    bool ok = len > 0 && i + len <= text.size();
    for (size_t k = 1; ok && k < len; ++k) ok = (static_cast<unsigned char>(text[i + k]) >> 6) == 0x2;
    if (len == 1 && ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7F)) ok = false;
    if (ok) {
      out.append(text, i, len);
      i += len;
    } else {
      char const* const hex = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 0xF];
      ++i;
    }
  }
  return out;
}

class Error : public std::runtime_error {
 public:
  explicit Error(std::string const& message) : std::runtime_error(printable(message)) {}
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

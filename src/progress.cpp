// Progress lines with rate and ETA.
#include "proteus/progress.hpp"

#include <unistd.h>

#include <cstdio>

namespace proteus::detail {

std::string format_duration(double s) {
  char buf[64];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%dh%02dm", int(s / 3600), int(s / 60) % 60);
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, "%dm%02ds", int(s / 60), int(s) % 60);
  else if (s >= 1 || s == 0)
    std::snprintf(buf, sizeof buf, "%.1fs", s);
  else  // under a second: three decimals (a fast stage would read 0.0s)
    std::snprintf(buf, sizeof buf, "%.3fs", s);
  return buf;
}

Progress::Progress(std::string label, long total, double interval_seconds, bool enabled, double warn_seconds)
    : label_(std::move(label)), total_(total), interval_(interval_seconds), warn_(warn_seconds), enabled_(enabled),
      terminal_(isatty(fileno(stderr)) != 0), start_(std::chrono::steady_clock::now()), last_(start_) {}

void Progress::update(long done, long tokens) {
  if (!enabled_) return;
  auto const now = std::chrono::steady_clock::now();
  if (!estimated_ && done > 0) {  // a long run says so at once, not after the first interval
    estimated_ = true;
    double const first = std::chrono::duration<double>(now - start_).count();
    double const all = first * total_ / done;
    if (all > warn_)
      std::fprintf(stderr,
                   "warning: %s: about %s for all %ld at the rate of the first %ld (%s); SIGTERM or Ctrl-C "
                   "stops the run after the one at hand\n",
                   label_.c_str(), format_duration(all).c_str(), total_, done, format_duration(first).c_str());
  }
  double const since = std::chrono::duration<double>(now - last_).count();
  bool const last = done >= total_;
  if (!last && since < (terminal_ ? 0.2 : interval_)) return;
  last_ = now;
  double const elapsed = std::chrono::duration<double>(now - start_).count();
  double const rate = elapsed > 0 ? tokens / elapsed : 0.0;
  double const eta = done > 0 ? elapsed * (total_ - done) / done : 0.0;
  std::fprintf(stderr, "%s%s %ld/%ld (%.0f%%)  %.3g tokens/s  elapsed %s  ETA %s%s", terminal_ ? "\r" : "",
               label_.c_str(), done, total_, total_ > 0 ? 100.0 * done / total_ : 100.0, rate,
               format_duration(elapsed).c_str(), format_duration(eta).c_str(), terminal_ ? "   " : "\n");
  std::fflush(stderr);
  printed_ = true;
}

void Progress::finish() {
  if (enabled_ && terminal_ && printed_) std::fprintf(stderr, "\n");
}

}  // namespace proteus::detail

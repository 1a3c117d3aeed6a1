// Progress of long runs on rank 0: a live line with rate and ETA on a terminal, plain periodic
// lines otherwise (logs, batch jobs).
#pragma once

#include <chrono>
#include <string>

namespace proteus::detail {

class Progress {
 public:
  Progress(std::string label, long total, double interval_seconds, bool enabled, double warn_seconds = 3600);
  // `done` units of `total` finished, `tokens` processed so far (for the rate). At the first unit
  // done, a warning when all of them would take more than warn_seconds at that rate.
  void update(long done, long tokens);
  void finish();

 private:
  std::string label_;
  long total_;
  double interval_, warn_;
  bool enabled_, terminal_, estimated_ = false;
  std::chrono::steady_clock::time_point start_, last_;
  bool printed_ = false;
};

// "1h02m", "3m05s", "12.3s".
std::string format_duration(double seconds);

}  // namespace proteus::detail

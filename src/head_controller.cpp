// The sparse-head controller: upstream's decision rule, with the shortlist nudge applied.
#include "proteus/head_controller.hpp"

#include <algorithm>
#include <numeric>

#include "proteus/error.hpp"

namespace proteus {

HeadController::HeadController(HeadControllerSpec const& spec, int num_heads, int heads_min, int heads_max,
                               double scale_floor)
    : spec_(spec), heads_(num_heads), min_(heads_min), max_(heads_max), scale_floor_(std::min(1.0, scale_floor)) {
  require(spec.target_density >= 0 && spec.target_density <= 1, "Config.head_target_density", "must lie in [0, 1]");
  require(spec.tolerance >= 0, "Config.head_tolerance", "must be >= 0");
  require(spec.cooldown >= 1, "Config.head_cooldown", "must be at least 1");
  require(spec.min_heads >= 0 && spec.max_heads >= 0, "Config.head_controller_min", "bounds must be >= 0");
  require(spec.max_heads == 0 || spec.min_heads <= spec.max_heads, "Config.head_controller_min",
          "exceeds head_controller_max");
  // The global bounds apply from the start (upstream's constructor does the same).
  if (spec_.min_heads > 0) min_ = std::clamp(spec_.min_heads, 1, heads_);
  if (spec_.max_heads > 0) max_ = std::max(min_, std::min(spec_.max_heads, heads_));
  min_ = std::min(min_, max_);
}

std::optional<HeadDecision> HeadController::observe(double density) {
  ++step_;
  window_.push_back(density);
  if (static_cast<int>(window_.size()) < spec_.cooldown) return std::nullopt;
  HeadDecision d;
  d.step = step_;
  d.density = std::accumulate(window_.begin(), window_.end(), 0.0) / static_cast<double>(window_.size());
  window_.clear();
  double const upper = spec_.target_density + spec_.tolerance;
  double const lower = std::max(0.0, spec_.target_density - spec_.tolerance);
  d.action = d.density > upper ? "decrease" : d.density < lower ? "increase" : "steady";
  if (d.action != "steady") {
    int const delta = d.action == "decrease" ? -1 : 1;
    if (move(delta)) scale_ = std::clamp(scale_ * (delta < 0 ? spec_.shrink : spec_.growth), scale_floor_, 1.0);
  }
  d.heads_min = min_;
  d.heads_max = max_;
  d.shortlist_scale = scale_;
  return d;
}

bool HeadController::move(int delta) {
  int new_max = std::clamp(max_ + delta, 1, heads_);
  if (spec_.max_heads > 0) new_max = std::min(new_max, spec_.max_heads);
  // The global minimum is a floor for both ends (upstream lets the maximum fall below it).
  if (spec_.min_heads > 0) new_max = std::max(new_max, std::min(spec_.min_heads, heads_));
  int const new_min = spec_.min_heads > 0 ? std::max(1, std::min(spec_.min_heads, new_max)) : std::min(min_, new_max);
  bool const changed = new_max != max_ || new_min != min_;
  min_ = new_min;
  max_ = new_max;
  return changed;
}

}  // namespace proteus

// The sparse-head controller (upstream's SparseHeadController, ../shared/UPSTREAM_NOTES.md
// section 5): it watches the head density of the forwards and, every `cooldown` observations,
// moves the allowed range of active heads per token by one toward a target band; the shortlist
// length moves with it (x0.8 when the range shrinks, x1.05 when it grows, clamped), the nudge
// upstream intends but never applies (its bounds helper returns None, so the nudge's condition is
// never true). Host-side arithmetic only: the module applies the decisions to its Config.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace proteus {

struct HeadControllerSpec {
  double target_density = 0.28;  // target of the busiest head's fraction of active rows
  double tolerance = 0.03;       // no change while the mean lies in [target - tol, target + tol]
  int cooldown = 4;              // observations averaged per decision
  int min_heads = 0, max_heads = 0;  // global bounds of both ends of the range; 0: 1 and num_heads
  double shrink = 0.8, growth = 1.05;  // shortlist scale factors when the range shrinks / grows
};

struct HeadDecision {
  long step = 0;                // observations so far
  double density = 0.0;         // mean of the window the decision was taken on
  std::string action;           // "decrease" | "increase" | "steady"
  int heads_min = 0, heads_max = 0;
  double shortlist_scale = 1.0;  // multiplier of the shortlist length (Config::linear_L)
};

class HeadController {
 public:
  // heads_min / heads_max: the module's range to start from; scale_floor: the smallest shortlist
  // scale (upstream: max(0.05, L_min / L)). Throws proteus::Error naming the bad field.
  HeadController(HeadControllerSpec const& spec, int num_heads, int heads_min, int heads_max, double scale_floor);

  // One observation; a decision every `cooldown` observations, nothing in between.
  std::optional<HeadDecision> observe(double density);

  int heads_min() const { return min_; }
  int heads_max() const { return max_; }
  double shortlist_scale() const { return scale_; }

 private:
  HeadControllerSpec spec_;
  int heads_, min_, max_;
  double scale_ = 1.0, scale_floor_;
  long step_ = 0;
  std::vector<double> window_;
  bool move(int delta);  // true when the range changed
};

}  // namespace proteus

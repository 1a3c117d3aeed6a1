// The sparse-head controller (issue 19): every decision on a known density sequence (upstream's
// rule: a mean over `cooldown` observations against target +- tolerance, the range moved by one,
// global bounds, the minimum following the maximum), the shortlist nudge upstream intends (x0.8 /
// x1.05 when the range moves, clamped to [floor, 1]), and the module applying the decisions.
#include <cmath>
#include <vector>

#include "proteus/error.hpp"
#include "proteus/head_controller.hpp"
#include "proteus/multihead_attention.hpp"
#include "test_space.hpp"

using namespace proteus;

namespace {
struct Expect {
  double density;
  char const* action;  // nullptr: no decision at this observation
  int heads_min, heads_max;
  double scale;
};

void drive(HeadController& c, std::vector<Expect> const& script) {
  for (size_t i = 0; i < script.size(); ++i) {
    INFO("observation " << i + 1 << ", density " << script[i].density);
    auto const d = c.observe(script[i].density);
    if (!script[i].action) {
      CHECK_FALSE(d.has_value());
      continue;
    }
    REQUIRE(d.has_value());
    CHECK(d->action == script[i].action);
    CHECK(d->heads_min == script[i].heads_min);
    CHECK(d->heads_max == script[i].heads_max);
    CHECK(d->shortlist_scale == Approx(script[i].scale).epsilon(1e-12));
    CHECK(d->step == static_cast<long>(i + 1));
  }
}
}  // namespace

TEST_CASE("the head controller decides every cooldown observations by the mean density", "[controller]") {
  HeadControllerSpec spec;  // upstream's defaults: target 0.28, tolerance 0.03, cooldown 4
  HeadController c(spec, 8, 2, 6, 0.125);
  drive(c, {
                {0.50, nullptr, 0, 0, 0},       {0.40, nullptr, 0, 0, 0},
                {0.30, nullptr, 0, 0, 0},       {0.40, "decrease", 2, 5, 0.8},  // mean 0.40 > 0.31
                {0.30, nullptr, 0, 0, 0},       {0.30, nullptr, 0, 0, 0},
                {0.28, nullptr, 0, 0, 0},       {0.26, "steady", 2, 5, 0.8},    // mean 0.285 in band
                {0.10, nullptr, 0, 0, 0},       {0.20, nullptr, 0, 0, 0},
                {0.24, nullptr, 0, 0, 0},       {0.26, "increase", 2, 6, 0.84}, // mean 0.20 < 0.25
                {0.31, nullptr, 0, 0, 0},       {0.31, nullptr, 0, 0, 0},
                {0.31, nullptr, 0, 0, 0},       {0.31, "steady", 2, 6, 0.84},   // the band's edge
            });
}

TEST_CASE("the head range stops at its bounds and the minimum follows the maximum down", "[controller]") {
  HeadControllerSpec spec;
  spec.cooldown = 1;
  HeadController c(spec, 4, 3, 4, 0.5);
  // Down from max 4: min follows when max drops below it; at max 1 nothing moves, nor the scale.
  drive(c, {{0.9, "decrease", 3, 3, 0.8},
            {0.9, "decrease", 2, 2, 0.64},
            {0.9, "decrease", 1, 1, 0.512},
            {0.9, "decrease", 1, 1, 0.512},
            {0.0, "increase", 1, 2, 0.5376},
            {0.0, "increase", 1, 3, 0.56448},
            {0.0, "increase", 1, 4, 0.592704},
            {0.0, "increase", 1, 4, 0.592704}});  // at H: unchanged
  // The scale is clamped to [floor, 1].
  HeadController low(spec, 64, 1, 64, 0.3);
  double expected = 1.0;
  for (int i = 0; i < 8; ++i) {
    expected = std::max(0.3, expected * 0.8);
    auto const d = low.observe(1.0);
    REQUIRE(d);
    CHECK(d->shortlist_scale == Approx(expected));
  }
  CHECK(low.shortlist_scale() == Approx(0.3));
  HeadController high(spec, 8, 1, 4, 0.1);
  for (int i = 0; i < 4; ++i) CHECK(high.observe(0.0)->shortlist_scale == Approx(1.0));  // never above 1
}

TEST_CASE("global bounds hold from the start and through every move", "[controller]") {
  HeadControllerSpec spec;
  spec.cooldown = 2;
  spec.min_heads = 2;
  spec.max_heads = 5;
  HeadController c(spec, 8, 1, 8, 0.1);
  CHECK(c.heads_min() == 2);
  CHECK(c.heads_max() == 5);
  drive(c, {{0.0, nullptr, 0, 0, 0}, {0.0, "increase", 2, 5, 1.0},     // at the global max: unchanged
            {0.9, nullptr, 0, 0, 0}, {0.9, "decrease", 2, 4, 0.8},
            {0.9, nullptr, 0, 0, 0}, {0.9, "decrease", 2, 3, 0.64},
            {0.9, nullptr, 0, 0, 0}, {0.9, "decrease", 2, 2, 0.512},
            {0.9, nullptr, 0, 0, 0}, {0.9, "decrease", 2, 2, 0.512}});  // min 2 holds
  HeadControllerSpec bad;
  bad.cooldown = 0;
  CHECK_THROWS_WITH(HeadController(bad, 8, 1, 8, 0.1), PROTEUS_CONTAINS("Config.head_cooldown"));
  bad = HeadControllerSpec{};
  bad.min_heads = 5;
  bad.max_heads = 3;
  CHECK_THROWS_WITH(HeadController(bad, 8, 1, 8, 0.1), PROTEUS_CONTAINS("Config.head_controller_min"));
}

PROTEUS_TEST_CASE("the module applies the controller's decisions to its head range and shortlist", "[controller]") {
  TEST_EXECSPACE space;
  Config c;
  c.embed_dim = 32;
  c.num_heads = 8;
  c.seed = 3;
  c.mode = AlphaMode::fixed;
  c.alpha = 1.0f;            // shortlist: linear_head_k heads per token
  c.linear_head_k = 4;
  c.force_dense_threshold = 0.0f;
  c.head_controller = true;
  c.head_target_density = 0.05f;  // far below what 4 heads of 8 give: every decision decreases
  c.head_cooldown = 2;
  c.linear_L = 100;
  c.seq_low = 128;  // T below seq_low: the length rule allows the whole range (K = min(4, max))
  c.seq_high = 512;
  CausalGeneticMultiheadAttention m(space, c);
  long const T = 96;
  TokenMatrix x("x", T, 32), y("y", T, 32);
  Kokkos::parallel_for(
      "test::fill", Kokkos::RangePolicy<ExecSpace>(space, 0, T * 32),
      KOKKOS_LAMBDA(long i) { x(i / 32, i % 32) = static_cast<float>(std::sin(0.37 * i)); });
  PositionVector pos("pos", T);
  Kokkos::parallel_for(
      "test::positions", Kokkos::RangePolicy<ExecSpace>(space, 0, T), KOKKOS_LAMBDA(long t) { pos(t) = t; });
  ForwardStats const first = m.run(space, x, 1, pos, y);
  CHECK(first.heads_k == 4);
  CHECK(first.max_head_density > 0.3);  // 4 of 8 heads per token: some head serves >= half the rows
  CHECK_FALSE(first.controller.has_value());
  ForwardStats const second = m.run(space, x, 1, pos, y);
  REQUIRE(second.controller.has_value());
  CHECK(second.controller->action == "decrease");
  CHECK(second.controller->density == Approx((first.max_head_density + second.max_head_density) / 2));
  CHECK(m.config().heads_active_max == 7);
  CHECK(m.config().linear_L == 80);
  RunOptions frozen;
  frozen.adapt_heads = false;
  for (int i = 0; i < 4; ++i) CHECK_FALSE(m.run(space, x, 1, pos, y, frozen).controller.has_value());
  CHECK(m.config().heads_active_max == 7);
  for (int i = 0; i < 8; ++i) m.run(space, x, 1, pos, y);  // four more decisions, each a decrease
  CHECK(m.config().heads_active_max == 3);
  ForwardStats const later = m.run(space, x, 1, pos, y);
  CHECK(later.heads_k == 3);  // K = min(linear_head_k, the allowed range)
  CHECK(later.max_head_density < first.max_head_density);
}

// Validation and derived defaults of proteus::Config.
#include "proteus/config.hpp"

#include <algorithm>
#include <cmath>

#include "proteus/error.hpp"
#include "proteus/projection.hpp"

namespace proteus {

namespace {
void check(bool ok, char const* field, std::string const& why) {
  require(ok, std::string("Config.") + field, why);
}
}  // namespace

Config Config::resolved() const {
  Config c = *this;
  check(c.embed_dim > 0, "embed_dim", "must be positive, got " + std::to_string(c.embed_dim));
  check(c.num_heads > 0 && c.num_heads <= 128, "num_heads", "must lie in [1, 128], got " + std::to_string(c.num_heads));
  check(c.embed_dim % c.num_heads == 0, "embed_dim",
        "embed_dim " + std::to_string(c.embed_dim) + " is not divisible by num_heads " +
            std::to_string(c.num_heads));
  int const d = c.embed_dim / c.num_heads;
  check(c.query_block_rows >= 1, "query_block_rows", "must be positive, got " + std::to_string(c.query_block_rows));
  check(c.kv_stage_rows >= 1, "kv_stage_rows", "must be positive, got " + std::to_string(c.kv_stage_rows));
  check(d <= 256, "num_heads",
        "head width embed_dim / num_heads = " + std::to_string(d) + " exceeds 256 (use more heads)");
  check(!c.rope || d % 2 == 0, "rope",
        "RoPE rotates pairs and needs an even head width, got " + std::to_string(d) +
            " (set rope = false or change num_heads)");
  if (c.heads_active_max <= 0) c.heads_active_max = c.num_heads;
  c.heads_active_max = std::min(c.heads_active_max, c.num_heads);
  check(c.heads_active_min >= 1, "heads_active_min", "must be at least 1");
  c.heads_active_min = std::min(c.heads_active_min, c.heads_active_max);
  if (c.num_gates <= 0) c.num_gates = 2 * std::max(c.num_heads, c.heads_active_max);
  check(c.num_gates >= c.num_heads, "num_gates",
        "needs at least one gate per head (" + std::to_string(c.num_heads) + ")");
  if (c.gate_to_head.empty()) {
    c.gate_to_head.resize(c.num_gates);
    for (int g = 0; g < c.num_gates; ++g)
      c.gate_to_head[g] = std::min(c.num_heads - 1,
                                   static_cast<int>((static_cast<long long>(g) * c.num_heads) / c.num_gates));
  }
  check(static_cast<int>(c.gate_to_head.size()) == c.num_gates, "gate_to_head",
        "has " + std::to_string(c.gate_to_head.size()) + " entries, expected num_gates = " +
            std::to_string(c.num_gates));
  for (int h : c.gate_to_head)
    check(h >= 0 && h < c.num_heads, "gate_to_head", "entry " + std::to_string(h) + " is not a head");
  if (c.seq_low <= 0) c.seq_low = std::max(64, d);
  if (c.seq_high <= 0) c.seq_high = 4 * c.seq_low;
  check(c.seq_high > c.seq_low, "seq_high", "must be greater than seq_low");
  check(c.alpha >= 0.0f && c.alpha <= 1.0f, "alpha",
        "must lie in [0, 1], got " + std::to_string(c.alpha));
  check(c.dna_decay >= 0.0f && c.dna_decay < 1.0f, "dna_decay", "must lie in [0, 1)");
  check(c.dna_threshold < 1.0f, "dna_threshold", "must be below 1");
  check(c.dna_temperature > 0.0f, "dna_temperature", "must be positive");
  check(c.dna_blend >= 0.0f && c.dna_blend <= 1.0f, "dna_blend", "must lie in [0, 1]");
  check(c.token_keep_ratio > 0.0f && c.token_keep_ratio <= 1.0f, "token_keep_ratio",
        "must lie in (0, 1]");
  check(c.token_keep_guard >= 0, "token_keep_guard", "must be >= 0");
  check(c.router_top_p >= 0.0f && c.router_top_p <= 1.0f, "router_top_p", "must lie in [0, 1]");
  check(c.linear_head_k >= 1, "linear_head_k", "must be at least 1");
  check(c.linear_L >= 1, "linear_L", "must be at least 1");
  check(c.L_min >= 1, "L_min", "must be at least 1");
  check(c.L_max == 0 || c.L_max >= c.L_min, "L_max", "must be 0 (no cap) or >= L_min");
  check(c.window >= 1, "window", "must be at least 1");
  check(c.anchor_stride >= 0, "anchor_stride", "must be >= 0");
  check(c.use_local || c.use_anchors || c.use_dna_candidates, "use_local",
        "at least one shortlist piece (local, anchors, dna) must be enabled");
  check(!c.use_dna_candidates || c.dna_enable, "use_dna_candidates", "needs dna_enable");
  check(c.rope_base > 1.0, "rope_base", "must be > 1");
  check(!(c.tf32_projections && c.bf16_projections), "bf16_projections",
        "excludes tf32_projections: choose one precision for the projection GEMMs");
  check(!c.tf32_projections || tf32_available(), "tf32_projections",
        "TF32 needs a CUDA build whose Kokkos Kernels calls cuBLAS; this build runs on " +
            std::string(ExecSpace::name()));
  check(c.switch_ctx > c.seq_low, "switch_ctx", "must exceed seq_low");
  return c;
}

AlphaMode parse_alpha_mode(std::string const& text) {
  if (text == "auto" || text == "automatic") return AlphaMode::automatic;
  if (text == "linear") return AlphaMode::linear;
  if (text == "subquad") return AlphaMode::subquad;
  if (text == "fixed") return AlphaMode::fixed;
  fail("mode", "unknown alpha mode '" + text + "' (expected auto, linear, subquad or fixed)");
}

std::string to_string(AlphaMode mode) {
  switch (mode) {
    case AlphaMode::automatic: return "auto";
    case AlphaMode::linear: return "linear";
    case AlphaMode::subquad: return "subquad";
    case AlphaMode::fixed: return "fixed";
  }
  return "?";
}

}  // namespace proteus

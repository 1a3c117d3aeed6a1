// Stage 6a: alpha, the candidate budget law, and the DNA candidate lists per query block.
#include "proteus/shortlist.hpp"

#include <algorithm>
#include <cmath>

#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/detail/sort_keys.hpp"

namespace proteus {

double resolve_alpha(Config const& cfg, long tokens) {
  switch (cfg.mode) {
    case AlphaMode::linear: return 1.0;
    case AlphaMode::subquad: return 0.0;
    case AlphaMode::fixed: return cfg.alpha;
    case AlphaMode::automatic: break;
  }
  double const a = static_cast<double>(tokens - cfg.seq_low) / (cfg.switch_ctx - cfg.seq_low);
  return std::clamp(a, 0.0, 1.0);
}

ShortlistPlan dense_plan(long tokens) {
  ShortlistPlan p;
  p.dense = true;
  p.budget = tokens;
  p.window = tokens;
  p.local_width = std::max(1L, tokens);
  return p;
}

ShortlistPlan plan_call_shortlist(Config const& cfg, long tokens, double alpha, double head_fraction) {
  ShortlistPlan plan = plan_shortlist(cfg, tokens, alpha);
  if (!plan.dense && cfg.force_dense_threshold > 0.0f && head_fraction >= cfg.force_dense_threshold &&
      alpha < 0.95) {
    plan = dense_plan(tokens);
    plan.alpha = alpha;
  }
  return plan;
}

ShortlistPlan plan_shortlist(Config const& cfg, long tokens, double alpha) {
  if (alpha <= cfg.dense_alpha_cutoff) {
    ShortlistPlan p = dense_plan(tokens);
    p.alpha = alpha;
    return p;
  }
  ShortlistPlan p;
  p.alpha = alpha;
  long const l_min = cfg.L_min;
  long const l_max = cfg.L_max > 0 ? cfg.L_max : std::max(tokens, l_min);
  long const eff_lin = std::clamp<long>(cfg.linear_L, l_min, l_max);
  long const dense_cap =
      std::clamp<long>(std::min<long>(tokens, std::max<long>(l_min, cfg.window + tokens / 32)), l_min, l_max);
  p.budget = std::clamp<long>(static_cast<long>(alpha * eff_lin + (1.0 - alpha) * dense_cap), l_min, l_max);
  long const win_lin = std::min<long>(cfg.window, eff_lin);
  long const win_dense = std::max<long>(1, std::min<long>(tokens, std::max<long>(cfg.window, tokens / 8)));
  p.window = std::clamp<long>(static_cast<long>(alpha * win_lin + (1.0 - alpha) * win_dense), 1, p.budget);

  // Piece weights: the alpha = 0 split with disabled pieces zeroed (not renormalised, as
  // upstream), blended with the configured split renormalised over the enabled pieces.
  bool const on[3] = {cfg.use_local, cfg.use_anchors && cfg.anchor_stride > 0, cfg.use_dna_candidates};
  double base[3] = {0.85, 0.10, 0.05};
  double target[3] = {cfg.frac_local, cfg.frac_anchor, cfg.frac_dna};
  double tsum = 0.0;
  for (int i = 0; i < 3; ++i) {
    if (!on[i]) base[i] = target[i] = 0.0;
    tsum += target[i];
  }
  double w[3], wsum = 0.0;
  for (int i = 0; i < 3; ++i) {
    w[i] = (1.0 - alpha) * base[i] + alpha * (tsum > 0 ? target[i] / tsum : 0.0);
    wsum += w[i];
  }
  long caps[3], total = 0;
  for (int i = 0; i < 3; ++i) {
    caps[i] = on[i] && wsum > 0 ? round_half_even(p.budget * w[i] / wsum) : 0;
    total += caps[i];
  }
  if (total > p.budget) {
    long const over = total;
    total = 0;
    for (int i = 0; i < 3; ++i) total += (caps[i] = caps[i] * p.budget / over);
  }
  for (int i = 0; i < 3; ++i)
    if (on[i]) {
      caps[i] += p.budget - total;
      break;
    }
  // The row itself is always a candidate: it takes one slot of the local piece.
  p.local_width = std::max(1L, std::min({caps[0], p.window, p.budget}));
  if (!on[0]) p.local_width = 1;
  p.anchor_cap = on[1] ? caps[1] : 0;
  p.anchor_stride = on[1] ? cfg.anchor_stride : 0;
  p.dna_cap = on[2] ? caps[2] : 0;
  if (!on[0]) {
    // Without a local piece the row's own slot comes out of the largest other piece.
    long& biggest = p.anchor_cap >= p.dna_cap ? p.anchor_cap : p.dna_cap;
    biggest = std::max(0L, biggest - 1);
  }
  return p;
}

CandidateLists dna_candidate_lists(ExecSpace const& space, ShortlistPlan const& plan,
                                   TokenVector const& salience, int batch, long tokens) {
  long const block = plan.dna_block;
  long const blocks = (tokens + block - 1) / block;
  long const cap = plan.dna_cap;
  // Without a DNA piece (the default) nothing reads the lists: no allocation on every forward.
  if (cap == 0) return CandidateLists();
  CandidateLists lists("proteus::shortlist::dna_lists", batch * blocks, cap);
  Kokkos::deep_copy(space, lists, Position(-1));
  Kokkos::View<std::uint64_t*, MemSpace> keys("proteus::shortlist::salience_keys", tokens);
  for (int b = 0; b < batch; ++b) {
    long const offset = b * tokens;
    Kokkos::parallel_for(
        "proteus::shortlist::salience_keys", RangePolicy(space, 0, tokens),
        KOKKOS_LAMBDA(long t) { keys(t) = detail::descending_score_key(salience(offset + t), t); });
    detail::sort(space, keys);
    // Block k takes the first `cap` rows (by salience) that precede its first row. The expected
    // scan length is cap * T / start, so the whole pass costs about cap * blocks * log(blocks).
    Kokkos::parallel_for(
        "proteus::shortlist::dna_lists", RangePolicy(space, 0, blocks),
        KOKKOS_LAMBDA(long k) {
          long const start = k * block;
          long n = 0;
          for (long i = 0; i < tokens && n < cap && start > 0; ++i) {
            long const t = static_cast<long>(detail::key_position(keys(i)));
            if (t < start) lists(b * blocks + k, n++) = t;
          }
        });
  }
  return lists;
}

}  // namespace proteus

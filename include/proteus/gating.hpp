// Stages 3 and 4: token sparsity from importance, gates mapped to heads, head count K and the
// per-token choice of active heads.
#pragma once

#include <vector>

#include "proteus/config.hpp"
#include "proteus/types.hpp"

namespace proteus {

// Largest head count the per-token head selection supports (a register array per token).
inline constexpr int max_heads = 128;

// r(T, alpha) = (1 - alpha) r0 + alpha r_lin(T), r_lin = r0 sqrt(ref / T) clamped to [min_ratio, r0].
double token_keep_ratio(Config const& cfg, long tokens, double alpha);

// Number of tokens kept per batch row: max(round(r T), keep_min, guard), at most T (ties to even).
long tokens_to_keep(Config const& cfg, long tokens, double alpha);

// keep [B*T]: 1 for the kept tokens of each batch row: the top-n by importance (ties: lower
// position first), every token with importance >= threshold (if > 0), and the first `guard`
// tokens. With token sparsity off every token is kept. Returns the total number kept.
long select_tokens(ExecSpace const& space, Config const& cfg, TokenVector const& importance,
                   int batch, long tokens, double alpha, MaskVector const& keep);
// The token selection's sort keys and its sort's scratch memory, each grown when too short.
// After a selection of one batch row with token sparsity, `ranked` is set and the first T keys
// rank the row's tokens: descending_score_key(importance, t), ascending (the nucleus reuses them).
struct TokenKeyBuffers {
  Kokkos::View<std::uint64_t*, MemSpace> keys;
  Kokkos::View<unsigned char*, MemSpace> sort_scratch;
  bool ranked = false;
  // The keys when they rank a row's tokens, else an empty view (start_nucleus' `ranked`).
  Kokkos::View<std::uint64_t*, MemSpace> ranking() const { return ranked ? keys : Kokkos::View<std::uint64_t*, MemSpace>(); }
};
// The same with the sort's memory in buffers kept by callers that select again and again.
long select_tokens(ExecSpace const& space, Config const& cfg, TokenVector const& importance,
                   int batch, long tokens, double alpha, MaskVector const& keep, TokenKeyBuffers& buffers);
// select_tokens' keep mask without counting it (nothing waits for the device). Returns how many
// tokens are kept at most (exact with token sparsity off): the top n and the guard over the batch,
// every token when an importance threshold may add more.
long mark_kept_tokens(ExecSpace const& space, Config const& cfg, TokenVector const& importance, int batch,
                      long tokens, double alpha, MaskVector const& keep, TokenKeyBuffers& buffers);
// count = the number of kept tokens, computed on the device (nothing waits for it).
void count_kept_tokens(ExecSpace const& space, MaskVector const& keep, Kokkos::View<long, MemSpace> const& count);

// The gates of each head in gate order (gate_to_head inverted): head h owns
// gates(first(h)), ..., gates(first(h + 1) - 1).
struct HeadGates {
  IndexVector first;  // [heads + 1]
  IndexVector gates;  // [gates]
  static HeadGates from(std::vector<int> const& gate_to_head, int heads);
};

// head_probs[t, h] = sum of gate_probs[t, g] over the gates g of head h, in gate order.
void head_probabilities(ExecSpace const& space, GateMatrix const& gate_probs, HeadGates const& head_gates,
                        GateMatrix const& head_probs);

// K before the nucleus rule: heads_active_max for T <= seq_low, heads_active_min for
// T >= seq_high, floor(kmax - ((T - seq_low) / (seq_high - seq_low))^curve (kmax - kmin)) between.
int heads_for_length(Config const& cfg, long tokens);

// Nucleus count on the mean head probabilities (sorted descending): #(cumsum < p total) + 1.
int nucleus_head_count(std::vector<double> const& mean_head_probs, double top_p);

struct HeadCount {
  int k = 0;           // heads per token used
  int adaptive = 0;    // K from the length schedule and the nucleus rule
  int by_length = 0;   // K from the length schedule alone
  int nucleus = 0;     // nucleus count (0 when off)
};
// SPEC stage 4: K = round((1 - alpha) K_adaptive + alpha K_linear), with the nucleus rule.
HeadCount choose_head_count(ExecSpace const& space, Config const& cfg, long tokens, double alpha,
                            GateMatrix const& head_probs);

// head_mask[t, h] = 1 for the top-k heads of token t by head_probs (ties: lower head first),
// only where keep[t] is set. With cfg.nucleus_per_token, k is chosen per token by the rule of
// choose_head_count applied to that token's own head probabilities (hc.by_length caps it);
// otherwise k = hc.k for every token. Returns the number of active (token, head) pairs.
// Router gradient (Config::router_gradient): weight(t, h) = head_probs(t, h) / total(t) for the
// active heads of kept token t (total = their sum), 0 elsewhere; every_head: every head active.
void head_weights(ExecSpace const& space, GateMatrix const& head_probs, MaskMatrix const& head_mask,
                  MaskVector const& keep, bool every_head, GateMatrix const& weight, TokenVector const& total);
// Its backward to the gate probabilities: for active heads
// dhead(t, h) = (dweight(t, h) - sum_h' weight(t, h') dweight(t, h')) / total(t), and
// dgate_probs(t, g) = dhead(t, gate_to_head(g)).
void head_weights_backward(ExecSpace const& space, GateMatrix const& dweight, GateMatrix const& weight,
                           TokenVector const& total, IndexVector const& gate_to_head, GateMatrix const& dgate_probs);

void select_heads(ExecSpace const& space, Config const& cfg, GateMatrix const& head_probs,
                  HeadCount const& hc, double alpha, MaskVector const& keep,
                  MaskMatrix const& head_mask);
// Active (token, head) pairs of a head mask: returned (waits for the device), or written into
// `pairs` on the device (nothing waits).
long count_active_pairs(ExecSpace const& space, MaskMatrix const& head_mask);
void count_active_pairs(ExecSpace const& space, MaskMatrix const& head_mask, Kokkos::View<long, MemSpace> const& pairs);

// The busiest (batch row, head)'s fraction of the T rows that attend with that head (kept tokens
// with the head active; every kept token when every_head): upstream's max_active_density, what the
// sparse-head controller watches.
double busiest_head_fraction(ExecSpace const& space, MaskMatrix const& head_mask, MaskVector const& keep,
                             bool every_head, int batch);

// The head count of the SPEC rule for one nucleus count n (n = 0: nucleus off).
KOKKOS_INLINE_FUNCTION int mixed_head_count(int by_length, int kmin, int nucleus, int linear_head_k,
                                            double alpha) {
  int adaptive = by_length;
  if (nucleus > 0) {
    int const n = nucleus < by_length ? nucleus : by_length;
    adaptive = kmin > n ? kmin : n;
  }
  int const lin = linear_head_k < adaptive ? linear_head_k : adaptive;
  int const linear_k = lin > 1 ? lin : 1;
  int mixed = static_cast<int>(round_half_even((1.0 - alpha) * adaptive + alpha * linear_k));
  mixed = mixed > 1 ? mixed : 1;
  return adaptive < mixed ? adaptive : mixed;
}

}  // namespace proteus

// Stage 6a: the alpha slider and the shortlist (candidate set) of every query row.
//
// The candidate set of row i (index in the current call) is the union of
//   local   the `local_width` rows up to and including i,
//   anchors max(0, i - j * stride) for j = 1 .. anchor_cap,
//   dna     up to dna_cap of the most salient rows before the start of i's query block
//           (blocks of dna_block rows; our rule, so that lists are shared by a block),
// every candidate <= i, deduplicated. Sizes follow SPEC.md's budget law (plan_shortlist).
#pragma once

#include "proteus/config.hpp"
#include "proteus/types.hpp"

namespace proteus {

// alpha for a call of T tokens: linear -> 1, subquad -> 0, fixed -> cfg.alpha,
// auto -> clip((T - seq_low) / (switch_ctx - seq_low), 0, 1).
double resolve_alpha(Config const& cfg, long tokens);

struct ShortlistPlan {
  double alpha = 0.0;
  bool dense = false;     // exact causal attention over every earlier row
  long budget = 0;        // L_eff
  long window = 0;        // local window before the piece caps
  long local_width = 0;   // rows of the local piece (includes the row itself), >= 1
  long anchor_cap = 0;
  long anchor_stride = 0;
  long dna_cap = 0;
  int dna_block = 64;
  long prefix = 0;        // rows [0, prefix) are candidates of every row (global rows; second pass)
  long local_floor = 0;   // local windows never reach below this row (the global rows)
  // When set, row i's global prefix is [0, prefix_of_row(i)) instead (device memory; the second
  // pass uses it to give each query exactly the buffer rows before its window).
  Kokkos::View<long const*, MemSpace> prefix_of_row;
};

// Budget law (SPEC stage 6): L = alpha L_lin + (1 - alpha) dense_cap,
// dense_cap = clamp(min(T, window + T/32), L_min, L_max); window slides from max(window, T/8) to
// min(window, L_lin); the split slides from (0.85, 0.10, 0.05) to the configured fractions.
// L_max = 0 means no cap. dense = alpha <= dense_alpha_cutoff.
ShortlistPlan plan_shortlist(Config const& cfg, long tokens, double alpha);

// A plan that makes every earlier row a candidate (exact causal attention).
ShortlistPlan dense_plan(long tokens);

// The plan of one forward call: plan_shortlist, switched to dense_plan when the length schedule
// allows at least cfg.force_dense_threshold of the heads (head_fraction = K / H) and alpha < 0.95.
// The switch looks only at the head fraction, never at the tokens themselves, so that it cannot
// make earlier outputs depend on later tokens.
ShortlistPlan plan_call_shortlist(Config const& cfg, long tokens, double alpha, double head_fraction);

// alpha at or below the dense cutoff means every head of every kept token attends, whatever the
// plan (also a plan given from outside, such as the second pass's window plan).
inline bool attends_every_head(Config const& cfg, double alpha) { return alpha <= cfg.dense_alpha_cutoff; }

// Per (batch row, query block) lists of DNA candidates: [batch * blocks x dna_cap], -1 padded;
// an empty View when dna_cap == 0.
using CandidateLists = Kokkos::View<Position**, Kokkos::LayoutRight, MemSpace>;
CandidateLists dna_candidate_lists(ExecSpace const& space, ShortlistPlan const& plan,
                                   TokenVector const& salience, int batch, long tokens);

// First row of the local piece of row i.
KOKKOS_INLINE_FUNCTION long local_begin(ShortlistPlan const& p, long i) {
  long const lo = i - p.local_width + 1;
  return lo > p.local_floor ? lo : p.local_floor;
}

// Whether a block of rows of one head, tokens first .. last, walks the union of its local windows
// in step: when the union is short, every row steps through all of it together (the threads of a
// warp read the same key at once, and keys can be staged in team scratch). Rows far apart (sparse
// heads, dropped tokens) would idle through most of a long union: those walk their own windows.
// A step of the second kind measured ~4x the cost of one of the first on an H100, hence 4.
KOKKOS_INLINE_FUNCTION bool walks_union(ShortlistPlan const& p, long first, long last) {
  return last - local_begin(p, first) + 1 <= 4 * p.local_width;
}

// Whether j is one of row i's anchors: i - k s for k = 1..anchor_cap, or 0 where an anchor below 0
// is clamped to it.
KOKKOS_INLINE_FUNCTION bool is_anchor(ShortlistPlan const& p, long i, long j) {
  long const s = p.anchor_stride, a = p.anchor_cap;
  if (s <= 0 || a <= 0) return false;
  long const gap = i - j;
  bool const exact = gap % s == 0 && gap / s >= 1 && gap / s <= a;
  bool const zero = j == 0 && i - a * s < 0;
  return exact || zero;
}

// The end of row i's global prefix rows that are not already in its local piece (which starts at lo).
KOKKOS_INLINE_FUNCTION long prefix_before_window(ShortlistPlan const& p, long i, long lo) {
  long const pre = p.prefix_of_row.extent(0) > 0 ? p.prefix_of_row(i) : p.prefix;
  return pre < lo ? pre : lo;
}

// The candidates of row i that lie before its local piece, one at a time: anchors, the global
// prefix rows, then DNA candidates, without duplicates. `dna` points at the row's block list of
// plan.dna_cap entries (may be null when dna_cap == 0). Anchors i - j s for j = 1..a below 0 are
// clamped to 0 (one copy).
class ExtraCandidates {
 public:
  KOKKOS_INLINE_FUNCTION ExtraCandidates(ShortlistPlan const& p, long i, Position const* dna)
      : p_(p), dna_(dna), i_(i), lo_(local_begin(p, i)), shared_(prefix_before_window(p, i, lo_)) {
    bool const anchors = p.anchor_stride > 0 && p.anchor_cap > 0;
    clamped_zero_ = anchors && i - p.anchor_cap * p.anchor_stride < 0;
    phase_ = anchors ? anchor_rows : prefix_rows;
    step_ = anchors ? 1 : 0;
  }

  // The next candidate in c; false when there is none left.
  KOKKOS_INLINE_FUNCTION bool next(long& c) {
    long const s = p_.anchor_stride;
    while (true) {
      switch (phase_) {
        case anchor_rows:
          c = i_ - step_ * s;
          if (step_ > p_.anchor_cap || c < 0) {
            phase_ = zero_row;
            break;
          }
          ++step_;
          if (c == 0) clamped_zero_ = false;  // 0 is already an exact anchor
          if (c < lo_) return true;
          break;
        case zero_row:
          phase_ = prefix_rows;
          step_ = 0;
          if (clamped_zero_ && lo_ > 0) {
            c = 0;
            return true;
          }
          break;
        case prefix_rows:
          if (step_ >= shared_) {
            phase_ = dna_rows;
            step_ = 0;
            break;
          }
          c = step_++;
          if (!is_anchor(p_, i_, c)) return true;
          break;
        case dna_rows:
          if (p_.dna_cap == 0 || dna_ == nullptr || step_ >= p_.dna_cap || dna_[step_] < 0) {
            phase_ = done;
            break;
          }
          c = dna_[step_++];
          if (c < lo_ && c >= shared_ && !is_anchor(p_, i_, c)) return true;
          break;
        default:
          return false;
      }
    }
  }

  // Passes over the next n candidates; false when fewer were left.
  KOKKOS_INLINE_FUNCTION bool skip(int n) {
    long c;
    for (int k = 0; k < n; ++k)
      if (!next(c)) return false;
    return true;
  }

 private:
  enum Phase : int { anchor_rows, zero_row, prefix_rows, dna_rows, done };

  ShortlistPlan const& p_;
  Position const* dna_;
  long i_, lo_;
  long shared_;    // global prefix rows [0, shared_) not already local
  long step_ = 0;  // the phase's next anchor k, prefix row or DNA entry
  bool clamped_zero_ = false;
  int phase_ = anchor_rows;
};

// Calls f(j) once for each candidate j of row i that lies before its local piece, in
// ExtraCandidates' order.
template <class F>
KOKKOS_INLINE_FUNCTION void for_each_extra_candidate(ShortlistPlan const& p, long i, Position const* dna, F&& f) {
  ExtraCandidates extras(p, i, dna);
  long c;
  while (extras.next(c)) f(c);
}

// Lane `lane` of `lanes` taking its share of row i's extra candidates: the k-th goes to lane
// k % lanes, and each lane gets its own in that order. The lanes of a row call f together, from
// one place in one loop (the last round may leave some lanes out). Calling f the moment a lane's
// own extra comes up would run f once per extra with one lane of the row active: on a GPU the
// row's lanes would take the extras one after another instead of `lanes` at a time.
template <class F>
KOKKOS_INLINE_FUNCTION void for_each_extra_of_lane(ShortlistPlan const& p, long i, Position const* dna, int lane,
                                                   int lanes, F&& f) {
  ExtraCandidates extras(p, i, dna);
  long c;
  bool more = extras.skip(lane);
  while (more && extras.next(c)) {
    f(c);
    more = extras.skip(lanes - 1);
  }
}

// The piece through which j is a candidate of row i, as for_each_candidate lists it (each
// candidate once, by the first piece that holds it), or none, for query rows i >= local_floor
// (the global prefix rows are never queries). The backward pass walks the
// candidate sets from the key side and counts a (row, key) pair only under this piece.
enum CandidatePiece : int { piece_none = 0, piece_local, piece_anchor, piece_prefix, piece_dna };
KOKKOS_INLINE_FUNCTION int candidate_piece(ShortlistPlan const& p, long i, long j, Position const* dna) {
  if (j < 0 || j > i) return piece_none;
  long const lo = local_begin(p, i);
  if (j >= lo) return piece_local;
  if (is_anchor(p, i, j)) return piece_anchor;
  if (j < prefix_before_window(p, i, lo)) return piece_prefix;
  if (p.dna_cap > 0 && dna != nullptr)
    for (long n = 0; n < p.dna_cap && dna[n] >= 0; ++n)
      if (dna[n] == j) return piece_dna;
  return piece_none;
}

// Calls f(j) for every candidate of row i: the local piece, then the extra candidates.
template <class F>
KOKKOS_INLINE_FUNCTION void for_each_candidate(ShortlistPlan const& p, long i, Position const* dna,
                                               F&& f) {
  for (long j = local_begin(p, i); j <= i; ++j) f(j);
  for_each_extra_candidate(p, i, dna, f);
}

}  // namespace proteus

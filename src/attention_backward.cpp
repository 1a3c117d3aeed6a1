// Stage 6b backward: gradients of the shortlist attention with respect to queries, keys, values
// and the value bias, for the rows, plan and candidate lists the forward used. With the forward's
// softmax statistics m_i, l_i of each active (head, row) i and its context O_i (value bias b
// included), D_i = dO_i.(O_i - b) = sum_c p_c dO_i.v_c first, then two passes, each element owned
// by one thread (deterministic, no atomics):
//   rows: per active (head, row) i, over its candidates c (the forward's rule), in one pass:
//         p_c = exp(s_c - m_i) / l_i, s_c = (q_i / sqrt(D)).k_c (the forward's score);
//         dq_i = sum_c p_c (dO_i.v_c - D_i) k_c / sqrt(D);
//   keys: per (head, key) j, over the rows i whose candidate set holds j (walked from the key
//         side: the local window after j, the rows j anchors, every row after a global prefix
//         key, the blocks whose DNA list names j; each pair counted under candidate_piece only):
//         dv_j = sum_i p_ij dO_i;  dk_j = sum_i p_ij (dO_i.v_j - D_i) q_i / sqrt(D).
// For head widths 8-64 the rows pass keeps a row's vectors in registers and stages the union of a
// block's windows in team scratch where its rows lie close together (rows_pass_union), and the
// keys pass stages the local piece's rows in team scratch (keys_pass_tiled), and reads a key's own
// k and v only, before it writes its dk and dv: those may overwrite k and v (in place). Other
// widths run plain loops over global memory. Every version adds the same terms in the same order.
#include <algorithm>
#include <cmath>
#include <vector>

#include "proteus/attention.hpp"
#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/detail/softmax_state.hpp"
#include "proteus/detail/workspace.hpp"
#include "proteus/error.hpp"

namespace proteus::detail {

namespace {

using LongVector = Kokkos::View<long*, MemSpace>;

// What both passes read.
struct Grad {
  ShortlistPlan p;
  TokenMatrix q, kv, dctx, dq, dkv;
  CandidateLists dna_lists;
  LongVector row_token, row_query, head_start;
  IndexVector row_head;
  TokenVector m, l, dsum;  // per active row: softmax max and sum, D_i
  // Each head's active rows grouped by token modulo the anchor stride s, in token order: the rows
  // of (bh, residue q) are residue_rows[residue_start(bh s + q) .. residue_start(bh s + q + 1)).
  LongVector residue_start, residue_rows;
  LongVector dna_start, dna_block;  // blocks whose list names key (b, j): [dna_start(b T + j), dna_start(.. + 1))
  int heads, embed, d;
  long tokens, dna_blocks;
  float scale;

  KOKKOS_INLINE_FUNCTION Position const* dna_of(long b, long t) const {
    return p.dna_cap > 0 ? &dna_lists(b * dna_blocks + t / p.dna_block, 0) : nullptr;
  }
  // The forward's score: the query scaled first.
  KOKKOS_INLINE_FUNCTION float score(long qrow, long h, long key_row) const {
    float s = 0.0f;
    for (int j = 0; j < d; ++j) s += q(qrow, h * d + j) * scale * kv(key_row, h * d + j);
    return s;
  }
  // dO_i . v_c
  KOKKOS_INLINE_FUNCTION float dout_value(long qrow, long h, long key_row) const {
    float s = 0.0f;
    for (int j = 0; j < d; ++j) s += dctx(qrow, h * d + j) * kv(key_row, embed + h * d + j);
    return s;
  }
};

// D_i = dO_i.(O_i - b) over the head's columns of every active row.
void row_dots(ExecSpace const& space, Grad const& g, AttendedRows const& out, long rows) {
  auto ctx = out.ctx;
  auto bias = out.value_bias;
  bool const biased = bias.extent(0) > 0;
  Kokkos::parallel_for(
      "proteus::attention::backward::row_dots", RangePolicy(space, 0, rows),
      KOKKOS_LAMBDA(long r) {
        long const qrow = g.row_query(r), h = g.row_head(r) % g.heads;
        float sum = 0.0f;
        for (int j = 0; j < g.d; ++j) {
          long const col = h * g.d + j;
          sum += g.dctx(qrow, col) * (ctx(qrow, col) - (biased ? bias(col) : 0.0f));
        }
        g.dsum(r) = sum;
      });
}

// dq of every active row.
void rows_pass(ExecSpace const& space, Grad const& g, long rows) {
  Kokkos::parallel_for(
      "proteus::attention::backward::rows", RangePolicy(space, 0, rows), KOKKOS_LAMBDA(long r) {
        long const t = g.row_token(r), qrow = g.row_query(r);
        int const bh = g.row_head(r);
        long const b = bh / g.heads, h = bh % g.heads, base = b * g.tokens;
        float const m = g.m(r), l = g.l(r), dsum = g.dsum(r);
        for_each_candidate(g.p, t, g.dna_of(b, t), [&](long c) {
          float const p = kmath::exp(g.score(qrow, h, base + c) - m) / l;
          float const w = p * (g.dout_value(qrow, h, base + c) - dsum) * g.scale;
          for (int j = 0; j < g.d; ++j) g.dq(qrow, h * g.d + j) += w * g.kv(base + c, h * g.d + j);
        });
      });
}

// One candidate of a row for the register passes: with the row's scaled query qi, its dO and its
// m, l, D_i, and the key's k(j) and v(j): dq += exp(qi.k - m) / l (dO.v - D_i) k / sqrt(D).
template <int D, class Key, class Value>
KOKKOS_INLINE_FUNCTION void add_key_to_row(float const (&qi)[D], float const (&doi)[D], float m, float l, float dsum,
                                           float scale, Key const& k, Value const& v, LaneSum<D>& part) {
  float s = 0.0f, dv = 0.0f;
  for (int j = 0; j < D; ++j) s += qi[j] * k(j);
  for (int j = 0; j < D; ++j) dv += doi[j] * v(j);
  float const w = kmath::exp(s - m) / l * (dv - dsum) * scale;
  for (int j = 0; j < D; ++j) part.v[j] += w * k(j);
}

// A row's query (scaled) and dO into registers.
template <int D>
KOKKOS_INLINE_FUNCTION void load_row(Grad const& g, long qrow, long h, float (&qi)[D], float (&doi)[D]) {
  for (int j = 0; j < D; ++j) {
    qi[j] = g.q(qrow, h * D + j) * g.scale;
    doi[j] = g.dctx(qrow, h * D + j);
  }
}

// Lane `lane`'s extra candidates of row r (anchors, DNA: every lanes-th in turn), from global memory.
template <int D>
KOKKOS_INLINE_FUNCTION void add_extra_candidates(Grad const& g, long r, int lane, int lanes, float const (&qi)[D],
                                                 float const (&doi)[D], LaneSum<D>& part) {
  long const t = g.row_token(r), b = g.row_head(r) / g.heads, h = g.row_head(r) % g.heads, base = b * g.tokens;
  for_each_extra_of_lane(g.p, t, g.dna_of(b, t), lane, lanes, [&](long c) {
    add_key_to_row(
        qi, doi, g.m(r), g.l(r), g.dsum(r), g.scale, [&](int j) { return g.kv(base + c, h * D + j); },
        [&](int j) { return g.kv(base + c, g.embed + h * D + j); }, part);
  });
}

// Row r's dq written out: lane by lane, `own(lane, part)` adds the lane's window keys, then the
// lane's extra candidates follow and the lanes merge (a fixed tree).
template <int D, class Member, class Own>
KOKKOS_INLINE_FUNCTION void finish_row(Member const& team, Grad const& g, long r, long h, int lanes,
                                       float const (&qi)[D], float const (&doi)[D], Own const& own) {
  LaneSum<D> dq;
  Kokkos::parallel_reduce(
      Kokkos::ThreadVectorRange(team, lanes),
      [&](int lane, LaneSum<D>& part) {
        own(lane, part);
        add_extra_candidates(g, r, lane, lanes, qi, doi, part);
      },
      MergeLanes<LaneSum<D>>(dq));
  long const qrow = g.row_query(r);
  Kokkos::single(Kokkos::PerThread(team), [&]() {
    for (int j = 0; j < D; ++j) g.dq(qrow, h * D + j) = dq.v[j];
  });
}

// rows_pass for head width D known at compile time, laid out as the forward's attention: a team
// takes a block of rows of one head, and each row deals its candidates out to a vector of `lanes`
// lanes (window key c to lane c % lanes, the extra candidates in turn), whose parts of dq are
// summed at the end; the row's query and dO and each lane's dq live in registers. This kernel
// takes the blocks whose rows walk their own windows (from global memory); rows_pass_union the
// others. Host backends run one lane: the generic pass's operations in its order, bit for bit its
// results.
template <int D>
void rows_pass_own_windows(ExecSpace const& space, Grad const& g, ActiveRows const& rows) {
  constexpr int lanes = lanes_per_row<D>();
  using Policy = TeamPolicy<>;
  using Member = typename Policy::member_type;
  auto block_start = rows.block_start;
  Kokkos::parallel_for(
      "proteus::attention::backward::rows",
      Policy(space, rows.blocks, on_host ? 1 : attention_block_rows, lanes),
      KOKKOS_LAMBDA(Member const& team) {
        long const r0 = block_start(team.league_rank());
        int const n = static_cast<int>(block_start(team.league_rank() + 1) - r0);
        if (walks_union(g.p, g.row_token(r0), g.row_token(r0 + n - 1))) return;
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, n), [&](int i) {
          long const r = r0 + i, t = g.row_token(r), qrow = g.row_query(r);
          long const h = g.row_head(r) % g.heads, base = (g.row_head(r) / g.heads) * g.tokens;
          long const from = local_begin(g.p, t);
          float qi[D], doi[D];
          load_row(g, qrow, h, qi, doi);
          finish_row(team, g, r, h, lanes, qi, doi, [&](int lane, LaneSum<D>& part) {
            for (long c = first_of_lane(from, lane, lanes); c <= t; c += lanes)
              add_key_to_row(
                  qi, doi, g.m(r), g.l(r), g.dsum(r), g.scale, [&](int j) { return g.kv(base + c, h * D + j); },
                  [&](int j) { return g.kv(base + c, g.embed + h * D + j); }, part);
          });
        });
      });
}

// The blocks whose rows walk the union of their windows (walks_union: rows close together), with
// the union's keys and values staged in team scratch tile by tile, as the forward's attend_union:
// each row reads its window's keys from there (neighbouring rows, neighbouring keys: other banks,
// the pitch being odd). A lane's part of dq waits in scratch between tiles; then each lane adds its
// extra candidates from global memory and the lanes merge. Per lane the keys and their order are
// rows_pass_own_windows's: bit for bit its results.
template <int D>
void rows_pass_union(ExecSpace const& space, Grad const& g, ActiveRows const& rows) {
  constexpr int lanes = lanes_per_row<D>();
  constexpr int tile = 1024 / D;  // keys per tile: 8 KB of keys and values
  constexpr int pitch = D + 1;    // odd: neighbouring keys in other banks
  using Floats = Kokkos::View<float*, ExecSpace::scratch_memory_space, Kokkos::MemoryUnmanaged>;
  using Parts = Kokkos::View<LaneSum<D>*, ExecSpace::scratch_memory_space, Kokkos::MemoryUnmanaged>;
  using Policy = TeamPolicy<>;
  using Member = typename Policy::member_type;
  Policy policy(space, rows.blocks, on_host ? 1 : attention_block_rows, lanes);
  policy.set_scratch_size(
      0, Kokkos::PerTeam(2 * Floats::shmem_size(tile * pitch) + Parts::shmem_size(attention_block_rows * lanes)));
  auto block_start = rows.block_start;
  Kokkos::parallel_for(
      "proteus::attention::backward::rows_union", policy, KOKKOS_LAMBDA(Member const& team) {
        long const r0 = block_start(team.league_rank());
        int const n = static_cast<int>(block_start(team.league_rank() + 1) - r0);
        long const lo = local_begin(g.p, g.row_token(r0)), hi = g.row_token(r0 + n - 1);
        if (!walks_union(g.p, g.row_token(r0), hi)) return;
        long const h = g.row_head(r0) % g.heads, base = (g.row_head(r0) / g.heads) * g.tokens;
        Floats tile_k(team.team_scratch(0), tile * pitch), tile_v(team.team_scratch(0), tile * pitch);
        Parts parts(team.team_scratch(0), attention_block_rows * lanes);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, n), [&](int i) {
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, lanes),
                               [&](int lane) { parts(i * lanes + lane).clear(); });
        });
        for (long c0 = lo; c0 <= hi; c0 += tile) {
          int const len = static_cast<int>(hi - c0 + 1 < tile ? hi - c0 + 1 : tile);
          team.team_barrier();  // every lane is done with the previous tile
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, len), [&](int k) {
            Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, D), [&](int j) {
              tile_k(k * pitch + j) = g.kv(base + c0 + k, h * D + j);
              tile_v(k * pitch + j) = g.kv(base + c0 + k, g.embed + h * D + j);
            });
          });
          team.team_barrier();
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, n), [&](int i) {
            long const r = r0 + i, t = g.row_token(r), from = local_begin(g.p, t);
            float qi[D], doi[D];
            load_row(g, g.row_query(r), h, qi, doi);
            Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, lanes), [&](int lane) {
              // The row's window within the tile: keys [max(from, c0), min(t, c0 + len - 1)].
              LaneSum<D> part = parts(i * lanes + lane);
              int const end = static_cast<int>(t - c0 + 1 < len ? t - c0 + 1 : len);
              for (int k = static_cast<int>(first_of_lane(from > c0 ? from : c0, lane, lanes) - c0); k < end;
                   k += lanes) {
                add_key_to_row(
                    qi, doi, g.m(r), g.l(r), g.dsum(r), g.scale, [&](int j) { return tile_k(k * pitch + j); },
                    [&](int j) { return tile_v(k * pitch + j); }, part);
              }
              parts(i * lanes + lane) = part;
            });
          });
        }
        team.team_barrier();
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, n), [&](int i) {
          long const r = r0 + i;
          float qi[D], doi[D];
          load_row(g, g.row_query(r), h, qi, doi);
          finish_row(team, g, r, h, lanes, qi, doi,
                     [&](int lane, LaneSum<D>& part) { part.merge(parts(i * lanes + lane)); });
        });
      });
}

// First active row of head bh (rows sorted by token) whose token is at least j.
KOKKOS_INLINE_FUNCTION long first_row_from(Grad const& g, long bh, long j) {
  long lo = g.head_start(bh), hi = g.head_start(bh + 1);
  while (lo < hi) {
    long const mid = (lo + hi) / 2;
    if (g.row_token(mid) < j)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// Calls f(i, r) for the active rows r of head bh whose tokens i lie in [lo, hi), in token order.
template <class F>
KOKKOS_INLINE_FUNCTION void for_each_active_row(Grad const& g, long bh, long lo, long hi, F&& f) {
  for (long r = first_row_from(g, bh, lo); r < g.head_start(bh + 1) && g.row_token(r) < hi; ++r)
    f(g.row_token(r), static_cast<int>(r));
}

// Calls f(i, r) for the active rows r of head bh whose token i is an exact anchor of key j (i = j +
// k s, k = 1 .. a, i < T), in token order: a range of the rows with j's residue modulo s.
template <class F>
KOKKOS_INLINE_FUNCTION void for_each_anchor_row(Grad const& g, long bh, long j, F&& f) {
  long const s = g.p.anchor_stride, bucket = bh * s + j % s, last = j + g.p.anchor_cap * s;
  long lo = g.residue_start(bucket), hi = g.residue_start(bucket + 1);
  while (lo < hi) {  // the first row of the bucket from token j + s on
    long const mid = (lo + hi) / 2;
    if (g.row_token(g.residue_rows(mid)) < j + s)
      lo = mid + 1;
    else
      hi = mid;
  }
  for (long n = lo; n < g.residue_start(bucket + 1); ++n) {
    long const r = g.residue_rows(n), i = g.row_token(r);
    if (i > last) break;
    f(i, static_cast<int>(r));
  }
}

// Calls f(i, r) for every row i whose candidate set holds key j of batch row b and that is active
// (as row r) for head bh, once each, except key 0's clamped-anchor rows (clamped_partials); the
// local piece's rows first, in token order, unless with_local is false. Every piece walks the
// head's active rows only (K of H heads are active per token, so most rows of a range are inactive
// for a given head).
template <class F>
KOKKOS_INLINE_FUNCTION void for_each_row_of_key(Grad const& g, long b, long bh, long j, F&& f, bool with_local = true) {
  ShortlistPlan const& p = g.p;
  long const T = g.tokens;
  auto in_piece = [&](int piece) {
    return [&, piece](long i, int r) {
      if (candidate_piece(p, i, j, g.dna_of(b, i)) == piece) f(i, r);
    };
  };
  if (with_local && j >= p.local_floor) for_each_active_row(g, bh, j, j + p.local_width, in_piece(piece_local));
  long const s = p.anchor_stride, a = p.anchor_cap;
  // (Key 0 is also the clamped anchor of up to T rows: clamped_partials sums those.)
  if (s > 0 && a > 0) for_each_anchor_row(g, bh, j, in_piece(piece_anchor));
  if (j < p.prefix) for_each_active_row(g, bh, j + 1, T, in_piece(piece_prefix));
  if (p.dna_cap > 0)
    for (long n = g.dna_start(b * T + j); n < g.dna_start(b * T + j + 1); ++n) {
      long const first = g.dna_block(n) * p.dna_block;
      for_each_active_row(g, bh, first, first + p.dna_block, in_piece(piece_dna));
    }
}

// Key 0's clamped-anchor rows: every row i < a s other than the exact anchors (i = k s) whose
// anchors run below 0 and are clamped to key 0, whose candidate piece is the anchors. Up to T rows
// for the one thread that owns key 0, so threads of their own sum them in chunks of clamp_chunk
// tokens beforehand (k and v are intact then: the keys pass may overwrite them), and
// add_clamped_partials adds the chunks to key 0's gradients in order after the keys pass. Same
// operations per row as keys_pass.
constexpr long clamp_chunk = 64;

// Key 0's clamped-anchor rows summed chunk by chunk: row bh * chunks + c of `part` holds chunk c's
// dk (columns [0, d)) and dv (columns [d, 2 d)) for head bh.
struct ClampedPartials {
  TokenMatrix part;
  long chunks = 0;
};

ClampedPartials clamped_partials(ExecSpace const& space, Grad const& g, long bh_count, BackwardBuffers& buffers) {
  long const s = g.p.anchor_stride, a = g.p.anchor_cap, end = std::min(a * s, g.tokens);
  long const chunks = s > 0 && a > 0 && end > 1 ? (end - 1 + clamp_chunk - 1) / clamp_chunk : 0;
  if (chunks == 0) return {};
  auto part = first_rows(buffers.clamp_part, "proteus::attention::backward::clamp_part", bh_count * chunks, 2 * g.d);
  Kokkos::parallel_for(
      "proteus::attention::backward::clamped_anchors",
      RangePolicy(space, 0, bh_count * chunks),
      KOKKOS_LAMBDA(long item) {
        long const bh = item / chunks, lo = 1 + (item % chunks) * clamp_chunk;
        long const b = bh / g.heads, h = bh % g.heads, key_row = b * g.tokens;
        int const d = g.d;
        for (int c = 0; c < 2 * d; ++c) part(item, c) = 0.0f;
        for_each_active_row(g, bh, lo, lo + clamp_chunk < end ? lo + clamp_chunk : end, [&](long i, int r) {
          if (i % s == 0 && i / s >= 1 && i / s <= a) return;  // an exact anchor: for_each_anchor_row's
          if (candidate_piece(g.p, i, 0, g.dna_of(b, i)) != piece_anchor) return;
          long const qrow = g.row_query(r);
          float const p = kmath::exp(g.score(qrow, h, key_row) - g.m(r)) / g.l(r);
          float const w = p * (g.dout_value(qrow, h, key_row) - g.dsum(r)) * g.scale;
          for (int c = 0; c < d; ++c) {
            part(item, c) += w * g.q(qrow, h * d + c);
            part(item, d + c) += p * g.dctx(qrow, h * d + c);
          }
        });
      });
  return {part, chunks};
}

// After the keys pass: key 0's dk and dv of every head plus its clamped chunks, in chunk order.
void add_clamped_partials(ExecSpace const& space, Grad const& g, ClampedPartials const& clamped, long bh_count) {
  long const chunks = clamped.chunks;
  if (chunks == 0) return;
  auto part = clamped.part;
  Kokkos::parallel_for(
      "proteus::attention::backward::add_clamped",
      RangePolicy(space, 0, bh_count * g.d),
      KOKKOS_LAMBDA(long item) {
        long const bh = item / g.d, c = item % g.d;
        long const key_row = (bh / g.heads) * g.tokens, col = (bh % g.heads) * g.d + c;
        float dk = g.dkv(key_row, col), dv = g.dkv(key_row, g.embed + col);
        for (long n = bh * chunks; n < (bh + 1) * chunks; ++n) {
          dk += part(n, c);
          dv += part(n, g.d + c);
        }
        g.dkv(key_row, col) = dk;
        g.dkv(key_row, g.embed + col) = dv;
      });
}

// dk and dv of every (head, key).
void keys_pass(ExecSpace const& space, Grad const& g, long batch) {
  long const T = g.tokens;
  Kokkos::parallel_for(
      "proteus::attention::backward::keys", RangePolicy(space, 0, batch * g.heads * T),
      KOKKOS_LAMBDA(long item) {
        long const bh = item / T, j = item % T, b = bh / g.heads, h = bh % g.heads;
        long const key_row = b * T + j;
        int const d = g.d, e = g.embed;
        for (int c = 0; c < d; ++c) g.dkv(key_row, h * d + c) = g.dkv(key_row, e + h * d + c) = 0.0f;
        for_each_row_of_key(g, b, bh, j, [&](long, int r) {
          long const qrow = g.row_query(r);
          float const p = kmath::exp(g.score(qrow, h, key_row) - g.m(r)) / g.l(r);
          float const w = p * (g.dout_value(qrow, h, key_row) - g.dsum(r)) * g.scale;
          for (int c = 0; c < d; ++c) {
            g.dkv(key_row, h * d + c) += w * g.q(qrow, h * d + c);
            g.dkv(key_row, e + h * d + c) += p * g.dctx(qrow, h * d + c);
          }
        });
      });
}

// keys_pass for head width D known at compile time, tiled for the local piece (the dense plan's
// whole causal prefix, the sparse plans' windows), where a key meets most of its rows: a team
// takes `key_tile` keys of one head and stages the head's active rows that reach them in scratch,
// key_tile rows at a time (query, dO, m, l, D_i), so that every key reads a row from there instead
// of global memory (one thread per key on GPUs; host backends run a team as one thread that takes
// the keys in turn). The keys' dk and dv wait in scratch between tiles; then each key adds its
// other pieces (anchors, prefix, DNA) from global memory. Per key, the operations and their order
// are keys_pass's: bit for bit its results.
constexpr int key_tile = 32;

// A key's k and v (global) and its running dk and dv (scratch) into registers.
template <int D, class Scratch>
KOKKOS_INLINE_FUNCTION void load_key(Grad const& g, long key_row, long h, Scratch const& acc_k, Scratch const& acc_v,
                                     int slot, float (&kj)[D], float (&vj)[D], float (&dk)[D], float (&dv)[D]) {
  for (int c = 0; c < D; ++c) {
    kj[c] = g.kv(key_row, h * D + c);
    vj[c] = g.kv(key_row, g.embed + h * D + c);
    dk[c] = acc_k(slot + c);
    dv[c] = acc_v(slot + c);
  }
}

// One row of a key: with the row's query q and dO (D contiguous floats) and its m, l, D_i,
// p = exp((q / sqrt(D)).k - m) / l;  dk += p (dO.v - D_i) q / sqrt(D);  dv += p dO.
template <int D>
KOKKOS_INLINE_FUNCTION void add_row_to_key(float const* q, float const* dout, float m, float l, float dsum,
                                           float scale, float const (&kj)[D], float const (&vj)[D], float (&dk)[D],
                                           float (&dv)[D]) {
  float s = 0.0f, dov = 0.0f;
  for (int c = 0; c < D; ++c) s += q[c] * scale * kj[c];
  for (int c = 0; c < D; ++c) dov += dout[c] * vj[c];
  float const pr = kmath::exp(s - m) / l;
  float const w = pr * (dov - dsum) * scale;
  for (int c = 0; c < D; ++c) {
    dk[c] += w * q[c];
    dv[c] += pr * dout[c];
  }
}

template <int D>
void keys_pass_tiled(ExecSpace const& space, Grad const& g, long batch) {
  constexpr int pitch = D + 1;  // odd: neighbouring rows in other banks
  using Floats = Kokkos::View<float*, ExecSpace::scratch_memory_space, Kokkos::MemoryUnmanaged>;
  using Longs = Kokkos::View<long*, ExecSpace::scratch_memory_space, Kokkos::MemoryUnmanaged>;
  using Policy = TeamPolicy<>;
  using Member = typename Policy::member_type;
  long const T = g.tokens, key_blocks = (T + key_tile - 1) / key_tile;
  Policy policy(space, batch * g.heads * key_blocks, on_host ? 1 : key_tile);
  policy.set_scratch_size(
      0, Kokkos::PerTeam(4 * Floats::shmem_size(key_tile * pitch) + Floats::shmem_size(3 * key_tile) +
                         Longs::shmem_size(key_tile)));
  Kokkos::parallel_for(
      "proteus::attention::backward::keys", policy, KOKKOS_LAMBDA(Member const& team) {
        long const bh = team.league_rank() / key_blocks, j0 = (team.league_rank() % key_blocks) * key_tile;
        long const b = bh / g.heads, h = bh % g.heads;
        int const keys = static_cast<int>(T - j0 < key_tile ? T - j0 : key_tile), e = g.embed;
        ShortlistPlan const& p = g.p;
        Floats row_q(team.team_scratch(0), key_tile * pitch), row_do(team.team_scratch(0), key_tile * pitch);
        Floats acc_k(team.team_scratch(0), key_tile * pitch), acc_v(team.team_scratch(0), key_tile * pitch);
        Floats stats(team.team_scratch(0), 3 * key_tile);
        Longs tokens(team.team_scratch(0), key_tile);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, keys), [&](int k) {
          for (int c = 0; c < D; ++c) acc_k(k * pitch + c) = acc_v(k * pitch + c) = 0.0f;
        });
        long const last = j0 + keys - 1, first = j0 > p.local_floor ? j0 : p.local_floor;
        long const end = g.head_start(bh + 1), stop = last + p.local_width;  // rows with token < stop
        for (long r0 = last >= p.local_floor ? first_row_from(g, bh, first) : end; r0 < end && g.row_token(r0) < stop;
             r0 += key_tile) {
          int const n = static_cast<int>(end - r0 < key_tile ? end - r0 : key_tile);
          team.team_barrier();  // every key is done with the previous tile
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, n), [&](int i) {
            long const r = r0 + i, qrow = g.row_query(r);
            tokens(i) = g.row_token(r);
            for (int c = 0; c < D; ++c) {
              row_q(i * pitch + c) = g.q(qrow, h * D + c);
              row_do(i * pitch + c) = g.dctx(qrow, h * D + c);
            }
            stats(3 * i) = g.m(r);
            stats(3 * i + 1) = g.l(r);
            stats(3 * i + 2) = g.dsum(r);
          });
          team.team_barrier();
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, keys), [&](int k) {
            long const j = j0 + k;
            if (j < p.local_floor) return;
            float kj[D], vj[D], dk[D], dv[D];
            load_key(g, b * T + j, h, acc_k, acc_v, k * pitch, kj, vj, dk, dv);
            for (int i = 0; i < n; ++i) {
              long const t = tokens(i);
              if (t < j || t >= j + p.local_width) continue;  // the local piece of row t holds j
              add_row_to_key(&row_q(i * pitch), &row_do(i * pitch), stats(3 * i), stats(3 * i + 1), stats(3 * i + 2),
                             g.scale, kj, vj, dk, dv);
            }
            for (int c = 0; c < D; ++c) {
              acc_k(k * pitch + c) = dk[c];
              acc_v(k * pitch + c) = dv[c];
            }
          });
        }
        team.team_barrier();
        // The other pieces, from global memory; then the key's gradients out.
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, keys), [&](int k) {
          long const j = j0 + k, key_row = b * T + j;
          float kj[D], vj[D], dk[D], dv[D];
          load_key(g, key_row, h, acc_k, acc_v, k * pitch, kj, vj, dk, dv);
          for_each_row_of_key(
              g, b, bh, j,
              [&](long, int r) {
                long const qrow = g.row_query(r);
                add_row_to_key(&g.q(qrow, h * D), &g.dctx(qrow, h * D), g.m(r), g.l(r), g.dsum(r), g.scale, kj, vj,
                               dk, dv);
              },
              false);
          for (int c = 0; c < D; ++c) {
            g.dkv(key_row, h * D + c) = dk[c];
            g.dkv(key_row, e + h * D + c) = dv[c];
          }
        });
      });
}

// The passes for the head width: register versions for common widths, the generic loops otherwise.
void both_passes(ExecSpace const& space, Grad const& g, ActiveRows const& rows, long batch) {
  switch (g.d) {
#define PROTEUS_BACKWARD_WIDTH(D)             \
  case D:                                     \
    rows_pass_union<D>(space, g, rows);       \
    rows_pass_own_windows<D>(space, g, rows); \
    keys_pass_tiled<D>(space, g, batch);      \
    return;
    PROTEUS_BACKWARD_WIDTH(8)
    PROTEUS_BACKWARD_WIDTH(16)
    PROTEUS_BACKWARD_WIDTH(24)
    PROTEUS_BACKWARD_WIDTH(32)
    PROTEUS_BACKWARD_WIDTH(48)
    PROTEUS_BACKWARD_WIDTH(64)
#undef PROTEUS_BACKWARD_WIDTH
    default:
      rows_pass(space, g, rows.rows);
      keys_pass(space, g, batch);
  }
}

// Grad::residue_start and residue_rows (anchors only): each head's rows ordered by (token mod s,
// token), a compaction over slots laid out residue by residue (token t of head bh in slot
// (bh s + t mod s) per + t / s, per = ceil(T / s)): the rows scatter their index to their slot, and
// one scan over the slots places them and marks where each (head, residue) starts.
void group_by_residue(ExecSpace const& space, long bh_count, long rows, Grad& g, BackwardBuffers& buffers) {
  long const s = g.p.anchor_stride > 0 && g.p.anchor_cap > 0 ? g.p.anchor_stride : 0;
  if (s == 0) return;
  long const per = (g.tokens + s - 1) / s, slots = bh_count * s * per;
  g.residue_start = first_rows(buffers.residue_start, "proteus::attention::backward::residue_start", bh_count * s + 1);
  g.residue_rows = first_rows(buffers.residue_rows, "proteus::attention::backward::residue_rows", rows);
  auto slot_row = first_rows(buffers.residue_slot, "proteus::attention::backward::residue_slot", slots);
  auto start = g.residue_start;
  auto placed = g.residue_rows;
  auto row_token = g.row_token;
  auto row_head = g.row_head;
  Kokkos::deep_copy(space, slot_row, -1);
  Kokkos::parallel_for(
      "proteus::attention::backward::residue_slots", RangePolicy(space, 0, rows),
      KOKKOS_LAMBDA(long r) {
        long const t = row_token(r);
        slot_row((row_head(r) * s + t % s) * per + t / s) = static_cast<int>(r);
      });
  Kokkos::parallel_scan(
      "proteus::attention::backward::residue_rows", RangePolicy(space, 0, slots),
      KOKKOS_LAMBDA(long i, long& before, bool final) {
        int const r = slot_row(i);
        if (final && i % per == 0) start(i / per) = before;
        if (final && r >= 0) placed(before) = r;
        before += r >= 0 ? 1 : 0;
        if (final && i == slots - 1) start(slots / per) = before;
      });
}

// The DNA lists inverted: for each key (b, j), the blocks of batch row b whose list names it, in
// block order (built on the host: the lists hold batch * blocks * dna_cap entries).
void invert_dna_lists(ExecSpace const& space, CandidateLists const& lists, long batch, long tokens, Grad& g,
                      BackwardBuffers& buffers) {
  if (g.p.dna_cap == 0) return;  // nothing reads them
  g.dna_start = first_rows(buffers.dna_start, "proteus::attention::backward::dna_start", batch * tokens + 1);
  auto h = Kokkos::create_mirror_view_and_copy(HostSpace(), lists);
  long const blocks = g.dna_blocks;
  std::vector<long> count(batch * tokens + 1, 0);
  for (long b = 0; b < batch; ++b)
    for (long k = 0; k < blocks; ++k)
      for (size_t n = 0; n < h.extent(1) && h(b * blocks + k, n) >= 0; ++n) ++count[b * tokens + h(b * blocks + k, n) + 1];
  for (size_t i = 1; i < count.size(); ++i) count[i] += count[i - 1];
  auto start = Kokkos::create_mirror_view(g.dna_start);
  for (size_t i = 0; i < count.size(); ++i) start(i) = count[i];
  g.dna_block = first_rows(buffers.dna_block, "proteus::attention::backward::dna_block", count.back());
  auto block = Kokkos::create_mirror_view(g.dna_block);
  for (long b = 0; b < batch; ++b)
    for (long k = 0; k < blocks; ++k)
      for (size_t n = 0; n < h.extent(1) && h(b * blocks + k, n) >= 0; ++n) block(count[b * tokens + h(b * blocks + k, n)]++) = k;
  Kokkos::deep_copy(space, g.dna_start, start);
  Kokkos::deep_copy(space, g.dna_block, block);
  space.fence();  // the host mirrors are freed on return
}

}  // namespace

bool backward_in_place(int head_dim) {
  switch (head_dim) {
    case 8: case 16: case 24: case 32: case 48: case 64: return true;
    default: return false;
  }
}

void attend_backward(ExecSpace const& space, ShortlistPlan const& plan, TokenMatrix const& q, TokenMatrix const& kv,
                     ActiveRows const& rows, CandidateLists const& dna_lists, int heads, AttendedRows const& out,
                     TokenMatrix const& dctx, TokenMatrix const& dq, TokenMatrix const& dkv,
                     BackwardBuffers& buffers) {
  ScopedRegion region("proteus::attention::backward");
  require(dkv.data() != kv.data() || backward_in_place(static_cast<int>(q.extent(1)) / heads), "dkv",
          "may be kv itself only for head widths 8, 16, 24, 32, 48 and 64");
  require(out.softmax.max.extent(0) == static_cast<size_t>(rows.rows) &&
              out.softmax.sum.extent(0) == static_cast<size_t>(rows.rows),
          "out.softmax", "needs one entry per active row (attend's statistics)");
  long const batch = static_cast<long>(rows.head_start.extent(0) - 1) / heads;
  Grad g{};
  g.p = plan;
  g.q = q;
  g.kv = kv;
  g.dctx = dctx;
  g.dq = dq;
  g.dkv = dkv;
  g.dna_lists = dna_lists;
  g.row_token = rows.token;
  g.row_query = rows.query;
  g.head_start = rows.head_start;
  g.row_head = rows.head;
  g.heads = heads;
  g.embed = static_cast<int>(q.extent(1));
  g.d = g.embed / heads;
  g.tokens = static_cast<long>(kv.extent(0)) / batch;
  g.dna_blocks = (g.tokens + plan.dna_block - 1) / plan.dna_block;
  g.scale = 1.0f / std::sqrt(static_cast<float>(g.d));
  g.m = out.softmax.max;
  g.l = out.softmax.sum;
  g.dsum = first_rows(buffers.row_dot, "proteus::attention::backward::row_dot", rows.rows);
  row_dots(space, g, out, rows.rows);
  group_by_residue(space, batch * heads, rows.rows, g, buffers);
  invert_dna_lists(space, dna_lists, batch, g.tokens, g, buffers);
  ClampedPartials const clamped = clamped_partials(space, g, batch * heads, buffers);
  Kokkos::deep_copy(space, dq, 0.0f);  // columns of inactive heads stay zero
  both_passes(space, g, rows, batch);
  add_clamped_partials(space, g, clamped, batch * heads);
}

}  // namespace proteus::detail

// Stage 6b: active-row compaction (Kokkos scans) and the shortlist attention team kernel.
#include "proteus/attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/detail/softmax_state.hpp"
#include "proteus/detail/workspace.hpp"

namespace proteus {

ActiveRows compact_active_rows(ExecSpace const& space, MaskMatrix const& head_mask, MaskVector const& keep,
                               bool all_heads, int batch, long tokens, long row_begin, long row_end) {
  ActiveRowsBuffers buffers;
  return compact_active_rows(space, head_mask, keep, all_heads, batch, tokens, row_begin, row_end, buffers);
}

ActiveRows compact_active_rows(ExecSpace const& space, MaskMatrix const& head_mask, MaskVector const& keep,
                               bool all_heads, int batch, long tokens, long row_begin, long row_end,
                               ActiveRowsBuffers& buf) {
  using detail::first_rows;
  int const heads = static_cast<int>(head_mask.extent(1));
  // Slot i stands for (batch*head bh, token row_begin + i % span): only the rows asked for.
  long const span = std::max(0L, row_end - row_begin);
  long const slots = static_cast<long>(batch) * heads * span;
  ActiveRows r;
  r.head_start = first_rows(buf.head_start, "proteus::attention::head_start", batch * heads + 1);
  if (span == 0) {
    r.head = first_rows(buf.head, "proteus::attention::row_head", 0);
    r.token = first_rows(buf.token, "proteus::attention::row_token", 0);
    r.query = first_rows(buf.query, "proteus::attention::row_query", 0);
    r.query_source = first_rows(buf.query_source, "proteus::attention::query_source", 0);
    r.query_of = first_rows(buf.query_of, "proteus::attention::query_of", 0);
    r.block_start = first_rows(buf.block_start, "proteus::attention::block_start", 1);
    Kokkos::deep_copy(space, r.head_start, 0L);
    Kokkos::deep_copy(space, r.block_start, 0L);
    return r;
  }
  // Query rows: the kept tokens of the range, in (batch, token) order.
  long const range = static_cast<long>(batch) * span;
  auto token_row = KOKKOS_LAMBDA(long i)->long { return (i / span) * tokens + row_begin + i % span; };
  Kokkos::parallel_reduce(
      "proteus::attention::count_queries", Kokkos::RangePolicy<ExecSpace>(space, 0, range),
      KOKKOS_LAMBDA(long i, long& n) { n += keep(token_row(i)) ? 1 : 0; }, r.queries);
  r.query_source = first_rows(buf.query_source, "proteus::attention::query_source", r.queries);
  r.query_of = first_rows(buf.query_of, "proteus::attention::query_of", range);
  auto query_source = r.query_source;
  auto query_of = r.query_of;
  Kokkos::parallel_scan(
      "proteus::attention::pack_queries", Kokkos::RangePolicy<ExecSpace>(space, 0, range),
      KOKKOS_LAMBDA(long i, long& offset, bool final) {
        bool const kept = keep(token_row(i)) != 0;
        if (final) {
          query_of(i) = kept ? offset : -1;
          if (kept) query_source(offset) = token_row(i);
        }
        offset += kept ? 1 : 0;
      });
  auto head_start = r.head_start;
  auto active = KOKKOS_LAMBDA(long i)->bool {
    long const bh = i / span, t = row_begin + i % span;
    long const row = (bh / heads) * tokens + t;
    if (!keep(row)) return false;
    return all_heads || head_mask(row, bh % heads) != 0;
  };
  long total = 0;
  Kokkos::parallel_scan(
      "proteus::attention::count_rows", Kokkos::RangePolicy<ExecSpace>(space, 0, slots),
      KOKKOS_LAMBDA(long i, long& offset, bool final) {
        if (final && i % span == 0) head_start(i / span) = offset;
        offset += active(i) ? 1 : 0;
      },
      total);
  r.rows = total;
  Kokkos::deep_copy(space, Kokkos::subview(head_start, batch * heads), total);
  r.head = first_rows(buf.head, "proteus::attention::row_head", total);
  r.token = first_rows(buf.token, "proteus::attention::row_token", total);
  r.query = first_rows(buf.query, "proteus::attention::row_query", total);
  auto row_head = r.head;
  auto row_token = r.token;
  auto row_query = r.query;
  Kokkos::parallel_scan(
      "proteus::attention::pack_rows", Kokkos::RangePolicy<ExecSpace>(space, 0, slots),
      KOKKOS_LAMBDA(long i, long& offset, bool final) {
        bool const a = active(i);
        if (final && a) {
          row_head(offset) = static_cast<int>(i / span);
          row_token(offset) = row_begin + i % span;
          row_query(offset) = query_of((i / span / heads) * span + i % span);
        }
        offset += a ? 1 : 0;
      });
  // Blocks: runs of up to attention_block_rows rows of one head.
  constexpr long block_rows = attention_block_rows;
  auto starts_block = KOKKOS_LAMBDA(long row)->bool { return (row - head_start(row_head(row))) % block_rows == 0; };
  long blocks = 0;
  Kokkos::parallel_scan(
      "proteus::attention::count_blocks", Kokkos::RangePolicy<ExecSpace>(space, 0, total),
      KOKKOS_LAMBDA(long row, long& n, bool) { n += starts_block(row) ? 1 : 0; }, blocks);
  r.blocks = blocks;
  r.block_start = first_rows(buf.block_start, "proteus::attention::block_start", blocks + 1);
  auto block_start = r.block_start;
  Kokkos::parallel_scan(
      "proteus::attention::pack_blocks", Kokkos::RangePolicy<ExecSpace>(space, 0, total),
      KOKKOS_LAMBDA(long row, long& n, bool final) {
        bool const s = starts_block(row);
        if (final && s) block_start(n) = row;
        n += s ? 1 : 0;
      });
  Kokkos::deep_copy(space, Kokkos::subview(block_start, blocks), total);
  return r;
}

namespace {

// D floats of a key or value row into registers: four at a time (16-byte loads) when the row is
// D wide and 16-byte aligned, otherwise one at a time with zeros past d.
struct alignas(16) Float4 {
  float x, y, z, w;
};

template <int D, bool Wide>
KOKKOS_INLINE_FUNCTION void load_row(float const* src, int d, float (&dst)[D]) {
  if constexpr (Wide) {
    for (int j = 0; j < D; j += 4) {
      Float4 const v = reinterpret_cast<Float4 const*>(src)[j / 4];
      dst[j] = v.x;
      dst[j + 1] = v.y;
      dst[j + 2] = v.z;
      dst[j + 3] = v.w;
    }
  } else {
    for (int j = 0; j < D; ++j) dst[j] = j < d ? src[j] : 0.0f;
  }
}

// Lanes per row: on GPUs a row's candidates are dealt out to a vector of lanes, so that a block
// of 32 rows keeps 32 x lanes threads busy (rows alone are too few below ~1M tokens); the wider
// the row state, the fewer lanes. Host backends use one lane.
template <int D>
constexpr int lanes_per_row() {
  if (Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible) return 1;
  return D <= 32 ? 8 : D <= 64 ? 4 : 1;
}

// The attention of one block of up to attention_block_rows rows of one head; D >= d is the
// compile-time width of the per-row state (query and accumulator live in registers on GPUs).
// Wide: d == D and every key, value and query row is 16-byte aligned.
template <int D, bool Wide>
void attend_blocks(ExecSpace const& space, ShortlistPlan const& p, TokenMatrix const& q, TokenMatrix const& kv,
                   ActiveRows const& rows, CandidateLists const& dna_lists, int heads,
                   TokenMatrix const& ctx, Kokkos::View<int*, MemSpace> const& candidate_count) {
  int const embed = static_cast<int>(q.extent(1));
  int const d = embed / heads;
  long const batch = static_cast<long>(rows.head_start.extent(0) - 1) / heads;
  long const tokens = static_cast<long>(kv.extent(0)) / batch;
  long const q_stride = static_cast<long>(q.stride(0)), stride = static_cast<long>(kv.stride(0));
  float const scale = 1.0f / std::sqrt(static_cast<float>(d));
  long const dna_blocks = (tokens + p.dna_block - 1) / p.dna_block;
  bool const count = candidate_count.extent(0) > 0;
  auto row_head = rows.head;
  auto row_token = rows.token;
  auto row_query = rows.query;
  auto block_start = rows.block_start;
  using Policy = Kokkos::TeamPolicy<ExecSpace>;
  using Member = Policy::member_type;
  constexpr int lanes = lanes_per_row<D>();
  // One thread (a vector of `lanes` lanes) per row of the block on GPUs; host backends run a team
  // as one thread that takes the rows in turn.
  int const team_size =
      Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible ? 1 : attention_block_rows;
  Kokkos::parallel_for(
      "proteus::attention::shortlist", Policy(space, rows.blocks, team_size, lanes),
      KOKKOS_LAMBDA(Member const& team) {
        long const r0 = block_start(team.league_rank());
        int const n = static_cast<int>(block_start(team.league_rank() + 1) - r0);
        int const bh = row_head(r0);
        long const b = bh / heads, h = bh % heads;
        // This head's query of active row r starts at qh + row_query(r) * q_stride (the row's
        // context row is the same), its key and value of token t at k + t * stride and v + t * stride.
        float const* qh = q.data() + h * d;
        float const* k = kv.data() + b * tokens * stride + h * d;
        float const* v = k + embed;
        // The union of the block's local windows: when it is short enough, every row walks all of
        // it in the same order, so that the threads of a warp read the same key row at once (one
        // broadcast). Rows far apart (sparse heads, dropped tokens) would idle through most of a
        // long union: then each row walks only its own window, reading its own keys. A step of
        // the second kind measured ~4x the cost of one of the first on an H100, hence the bound.
        // Lane i of a row takes the window's candidates c with c % lanes == i and every lanes-th
        // extra candidate, in ascending order either way (the same result from both walks).
        long const span_lo = local_begin(p, row_token(r0)), span_hi = row_token(r0 + n - 1);
        bool const in_step = span_hi - span_lo + 1 <= 4 * p.local_width;
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, n), [&](int r) {
          long const t = row_token(r0 + r), qrow = row_query(r0 + r);
          long const from = local_begin(p, t);
          Position const* dna = p.dna_cap > 0 ? &dna_lists(b * dna_blocks + t / p.dna_block, 0) : nullptr;
          float qr[D];
          load_row<D, Wide>(qh + qrow * q_stride, d, qr);
          for (int j = 0; j < D; ++j) qr[j] *= scale;
          detail::SoftmaxState<D> row;
          Kokkos::parallel_reduce(
              Kokkos::ThreadVectorRange(team, lanes),
              [&](int lane, detail::SoftmaxState<D>& s) {
                auto add = [&](long c) {
                  float kc[D], vc[D];
                  load_row<D, Wide>(k + c * stride, d, kc);
                  float dot = 0.0f;
                  for (int j = 0; j < D; ++j) dot += qr[j] * kc[j];
                  load_row<D, Wide>(v + c * stride, d, vc);
                  s.add(dot, vc);
                };
                // The first candidate at or after c0 that belongs to this lane.
                auto first_of_lane = [&](long c0) { return c0 + ((lane - c0 % lanes) % lanes + lanes) % lanes; };
                if (in_step) {
                  for (long c = first_of_lane(span_lo); c <= span_hi; c += lanes)
                    if (c >= from && c <= t) add(c);
                } else {
                  for (long c = first_of_lane(from); c <= t; c += lanes) add(c);
                }
                // Anchors and DNA candidates outside the window, gathered from global memory.
                int extra = 0;
                for_each_extra_candidate(p, t, dna, [&](long c) {
                  if (extra++ % lanes == lane) add(c);
                });
              },
              detail::MergeSoftmax<D>(row));
          Kokkos::single(Kokkos::PerThread(team), [&]() {
            if (count) candidate_count(r0 + r) = row.seen;
            float const inv = 1.0f / row.l;
            for (int j = 0; j < D; ++j)
              if (j < d) ctx(qrow, h * d + j) = row.acc[j] * inv;
          });
        });
      });
}

}  // namespace

void attend(ExecSpace const& space, ShortlistPlan const& plan, TokenMatrix const& q, TokenMatrix const& kv,
            ActiveRows const& rows, CandidateLists const& dna_lists, int heads,
            TokenMatrix const& ctx, Kokkos::View<int*, MemSpace> const& candidate_count) {
  if (rows.blocks == 0) return;
  int const d = static_cast<int>(q.extent(1)) / heads;
  // 16-byte loads need rows of exactly D floats at 16-byte aligned addresses.
  auto aligned = [](TokenMatrix const& m) {
    return reinterpret_cast<std::uintptr_t>(m.data()) % 16 == 0 && m.stride(0) % 4 == 0;
  };
  bool const aligned_rows = d % 4 == 0 && aligned(q) && aligned(kv);
  auto run = [&](auto width) {
    constexpr int D = decltype(width)::value;
    if (aligned_rows && d == D)
      attend_blocks<D, true>(space, plan, q, kv, rows, dna_lists, heads, ctx, candidate_count);
    else
      attend_blocks<D, false>(space, plan, q, kv, rows, dna_lists, heads, ctx, candidate_count);
  };
  // The smallest supported width that holds d (Config::resolved() refuses d > 256).
  if (d <= 8) run(std::integral_constant<int, 8>());
  else if (d <= 16) run(std::integral_constant<int, 16>());
  else if (d <= 32) run(std::integral_constant<int, 32>());
  else if (d <= 64) run(std::integral_constant<int, 64>());
  else if (d <= 128) run(std::integral_constant<int, 128>());
  else run(std::integral_constant<int, 256>());
}

}  // namespace proteus

// Stage 6b: active-row compaction (Kokkos scans) and the shortlist attention team kernel.
#include "proteus/attention.hpp"

#include <cmath>

#include "proteus/detail/kokkos_compat.hpp"

namespace proteus {

namespace km = detail::kmath;

ActiveRows compact_active_rows(ExecSpace const& space, MaskMatrix const& head_mask, MaskVector const& keep,
                               bool all_heads, int batch, long tokens, long row_begin, long row_end) {
  int const heads = static_cast<int>(head_mask.extent(1));
  long const slots = static_cast<long>(batch) * heads * tokens;
  ActiveRows r;
  r.head_start = Kokkos::View<long*, MemSpace>("proteus::attention::head_start", batch * heads + 1);
  auto head_start = r.head_start;
  auto active = KOKKOS_LAMBDA(long i)->bool {
    long const bh = i / tokens, t = i % tokens;
    long const row = (bh / heads) * tokens + t;
    if (t < row_begin || t >= row_end || !keep(row)) return false;
    return all_heads || head_mask(row, bh % heads) != 0;
  };
  long total = 0;
  Kokkos::parallel_scan(
      "proteus::attention::count_rows", Kokkos::RangePolicy<ExecSpace>(space, 0, slots),
      KOKKOS_LAMBDA(long i, long& offset, bool final) {
        if (final && i % tokens == 0) head_start(i / tokens) = offset;
        offset += active(i) ? 1 : 0;
      },
      total);
  r.rows = total;
  Kokkos::deep_copy(space, Kokkos::subview(head_start, batch * heads), total);
  r.head = IndexVector("proteus::attention::row_head", total);
  r.token = Kokkos::View<long*, MemSpace>("proteus::attention::row_token", total);
  auto row_head = r.head;
  auto row_token = r.token;
  Kokkos::parallel_scan(
      "proteus::attention::pack_rows", Kokkos::RangePolicy<ExecSpace>(space, 0, slots),
      KOKKOS_LAMBDA(long i, long& offset, bool final) {
        bool const a = active(i);
        if (final && a) {
          row_head(offset) = static_cast<int>(i / tokens);
          row_token(offset) = i % tokens;
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
  r.block_start = Kokkos::View<long*, MemSpace>("proteus::attention::block_start", blocks + 1);
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

using Scratch = Kokkos::View<float**, Kokkos::LayoutRight, ExecSpace::scratch_memory_space,
                             Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
using ScratchVec = Kokkos::View<float*, ExecSpace::scratch_memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
constexpr int key_tile = 32;

// One online-softmax step of row r with score s and value row `val`.
template <class ValueRow>
KOKKOS_INLINE_FUNCTION void online_update(Scratch const& acc, ScratchVec const& m, ScratchVec const& l, int r, float s,
                                          ValueRow const& val, int d) {
  if (s > m(r)) {
    float const c = km::exp(m(r) - s);
    l(r) = l(r) * c + 1.0f;
    for (int j = 0; j < d; ++j) acc(r, j) = acc(r, j) * c + val(j);
    m(r) = s;
  } else {
    float const e = km::exp(s - m(r));
    l(r) += e;
    for (int j = 0; j < d; ++j) acc(r, j) += e * val(j);
  }
}

}  // namespace

void attend(ExecSpace const& space, ShortlistPlan const& plan, HeadTensor const& q, HeadTensor const& k,
            HeadTensor const& v, ActiveRows const& rows, CandidateLists const& dna_lists, int heads,
            TokenMatrix const& ctx, Kokkos::View<int*, MemSpace> const& candidate_count) {
  if (rows.blocks == 0) return;
  int const d = static_cast<int>(q.extent(2));
  long const tokens = static_cast<long>(q.extent(1));
  float const scale = 1.0f / std::sqrt(static_cast<float>(d));
  constexpr int qb = attention_block_rows;
  long const dna_blocks = (tokens + plan.dna_block - 1) / plan.dna_block;
  bool const count = candidate_count.extent(0) > 0;
  auto row_head = rows.head;
  auto row_token = rows.token;
  auto block_start = rows.block_start;
  ShortlistPlan const p = plan;
  // Rows of q and acc are padded by one float: thread r touches row r, and an odd row stride
  // spreads the 32 threads of a warp over 32 banks instead of two.
  int const dp = d % 2 == 0 ? d + 1 : d;
  size_t const bytes =
      Scratch::shmem_size(qb, dp) * 2 + Scratch::shmem_size(key_tile, d) * 2 + ScratchVec::shmem_size(qb) * 2;
  using Policy = Kokkos::TeamPolicy<ExecSpace>;
  using Member = Policy::member_type;
  // One thread per row of the block on GPUs (a warp for 32 rows); host backends run a team as
  // one thread.
  int const team_size = Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible ? 1 : qb;
  Policy policy(space, rows.blocks, team_size);
  policy.set_scratch_size(0, Kokkos::PerTeam(bytes));
  Kokkos::parallel_for(
      "proteus::attention::shortlist", policy, KOKKOS_LAMBDA(Member const& team) {
        long const r0 = block_start(team.league_rank());
        int const n = static_cast<int>(block_start(team.league_rank() + 1) - r0);
        int const bh = row_head(r0);
        long const b = bh / heads, h = bh % heads;
        Scratch qs(team.team_scratch(0), qb, dp), acc(team.team_scratch(0), qb, dp);
        Scratch ks(team.team_scratch(0), key_tile, d), vs(team.team_scratch(0), key_tile, d);
        ScratchVec m(team.team_scratch(0), qb), l(team.team_scratch(0), qb);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, n * d), [&](int e) {
          int const r = e / d, j = e % d;
          qs(r, j) = q(bh, row_token(r0 + r), j) * scale;
          acc(r, j) = 0.0f;
          if (j == 0) {
            m(r) = -INFINITY;
            l(r) = 0.0f;
          }
        });
        team.team_barrier();
        // Local windows: the union of the block's windows is [first - width + 1, last].
        long const first = row_token(r0), last = row_token(r0 + n - 1);
        long const span_lo = local_begin(p, first);
        for (long tile = span_lo; tile <= last; tile += key_tile) {
          int const nk = static_cast<int>(last - tile + 1 < key_tile ? last - tile + 1 : key_tile);
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, nk * d), [&](int e) {
            int const c = e / d, j = e % d;
            ks(c, j) = k(bh, tile + c, j);
            vs(c, j) = v(bh, tile + c, j);
          });
          team.team_barrier();
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, n), [&](int r) {
            long const t = row_token(r0 + r);
            long const from = local_begin(p, t);
            long lo = from > tile ? from : tile;
            long const hi = t < tile + nk - 1 ? t : tile + nk - 1;
            for (long c = lo; c <= hi; ++c) {
              int const ci = static_cast<int>(c - tile);
              float s = 0.0f;
              for (int j = 0; j < d; ++j) s += qs(r, j) * ks(ci, j);
              online_update(acc, m, l, r, s, Kokkos::subview(vs, ci, Kokkos::ALL), d);
            }
          });
          team.team_barrier();
        }
        // Anchors and DNA candidates outside the window, gathered from global memory.
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, n), [&](int r) {
          long const t = row_token(r0 + r);
          Position const* dna = p.dna_cap > 0 ? &dna_lists(b * dna_blocks + t / p.dna_block, 0) : nullptr;
          int seen = static_cast<int>(t - local_begin(p, t) + 1);
          for_each_extra_candidate(p, t, dna, [&](long c) {
            ++seen;
            float s = 0.0f;
            for (int j = 0; j < d; ++j) s += qs(r, j) * k(bh, c, j);
            online_update(acc, m, l, r, s, Kokkos::subview(v, bh, c, Kokkos::ALL), d);
          });
          if (count) candidate_count(r0 + r) = seen;
        });
        team.team_barrier();
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, n * d), [&](int e) {
          int const r = e / d, j = e % d;
          ctx(b * tokens + row_token(r0 + r), h * d + j) = acc(r, j) / l(r);
        });
      });
}

}  // namespace proteus

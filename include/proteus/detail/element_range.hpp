// Element-wise kernels over a [rows x cols] LayoutRight matrix as one flat range of work items in
// row order, so that neighbouring GPU threads touch neighbouring addresses (coalesced).
// (MDRangePolicy's default tiling measured 5-15x slower for these on an H100.)
#pragma once

#include <cstdint>

#include <Kokkos_Core.hpp>

#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/types.hpp"

namespace proteus::detail {

// Four floats that GPUs read in one 16-byte load.
struct alignas(16) FloatQuad {
  float v[4];
};

// Entries of type T in one 16-byte load: 4 floats, 8 BF16 values.
template <class T>
inline constexpr long per_vector = 16 / sizeof(T);

// Whether rows of m can be read in 16-byte loads (FloatQuads for floats, 8 values for BF16): rows
// of a multiple of per_vector entries, starting at 16-byte aligned addresses.
template <class Matrix>
bool rows_of_vectors(Matrix const& m) {
  constexpr long n = per_vector<typename Matrix::value_type>;
  return m.extent(1) % n == 0 && m.stride(0) % n == 0 && reinterpret_cast<std::uintptr_t>(m.data()) % 16 == 0;
}

// Item i of a flat range over rows of per_row items: its row, by a 32-bit division where the
// range fits in 32 bits (one branch, the same for every thread), else by a 64-bit one (which GPUs
// emulate in dozens of instructions: streaming passes over [131072 x 1024] stages paid it per item).
struct RowSplit {
  long per_row;
  bool narrow;
  RowSplit(long rows, long per_row_) : per_row(per_row_), narrow(rows * per_row_ <= 0x7fffffffL) {}
  KOKKOS_INLINE_FUNCTION long row(long i) const {
    return narrow ? static_cast<long>(static_cast<std::uint32_t>(i) / static_cast<std::uint32_t>(per_row))
                  : i / per_row;
  }
};

// Work item i covers four columns of a row, one in each quarter of it (c, c + q, c + 2q, c + 3q
// for a quarter of q columns): the division and remainder that find an item's row and column
// (64-bit integer arithmetic, which GPUs emulate in dozens of instructions) are paid once per four
// elements, and at each of the four steps neighbouring threads still touch neighbouring addresses.
// Rows narrower than grouped_from columns keep one column per item: with a quarter shorter than a
// warp, neighbouring threads would fall in different rows (RoPE's 8 pairs per row went from 2.4 to
// 7.5 ms at 1M tokens on an H200 when grouped).
inline constexpr long columns_per_item = 4;
inline constexpr long grouped_from = 128;

template <class F>
void for_each_element(ExecSpace const& space, char const* label, long rows, long cols, F const& f) {
  long const per_item = cols >= grouped_from ? columns_per_item : 1;
  long const quarter = (cols + per_item - 1) / per_item;
  RowSplit const split(rows, quarter);
  Kokkos::parallel_for(
      label, RangePolicy(space, 0, rows * quarter), KOKKOS_LAMBDA(long i) {
        long const row = split.row(i);
        long const first = i - row * quarter;
        for (long col = first; col < cols; col += quarter) f(row, col);
      });
}

// Row moves in 16-byte pieces: f(row, col) for col = 0, 4, 8, ... < cols, one work item per piece
// (for matrices whose rows_of_vectors holds). A warp then reads or writes 512 contiguous bytes, and
// a row's lookups (a source or destination row) are paid once per four entries.
template <class F>
void for_each_quad(ExecSpace const& space, char const* label, long rows, long cols, F const& f) {
  long const quads = cols / per_vector<float>;
  RowSplit const split(rows, quads);
  Kokkos::parallel_for(
      label, RangePolicy(space, 0, rows * quads), KOKKOS_LAMBDA(long i) {
        long const row = split.row(i);
        f(row, per_vector<float> * (i - row * quads));
      });
}

// The four floats of m(row, col..col + 3), read or written in one access (col a multiple of 4).
template <class Matrix>
KOKKOS_INLINE_FUNCTION FloatQuad& quad_at(Matrix const& m, long row, long col) {
  return *reinterpret_cast<FloatQuad*>(&m(row, col));
}

// Per-token kernels over a token's gates, heads or columns: one token per group of vector lanes,
// so that neighbouring lanes read neighbouring entries of the token's row (coalesced on GPUs,
// where a thread per token reads with a stride of a whole row). Inside f(member, t), loops over
// the row use Kokkos::ThreadVectorRange(member, n); a value computed once per token goes through
// Kokkos::single(Kokkos::PerThread(member), ...). Host backends run one lane per token.
using TokenPolicy = TeamPolicy<>;
using TokenMember = TokenPolicy::member_type;
inline constexpr bool tokens_on_host = Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible;
inline constexpr int token_lanes = tokens_on_host ? 1 : 32;
inline constexpr int threads_per_token_team = tokens_on_host ? 1 : 256;

// Lanes per token for rows of `items` entries: about eight entries per lane (a power of two, at
// most a warp). A warp then serves several tokens of short rows (64 gates: four tokens of eight
// lanes), and a reduction over a token's lanes takes three shuffles instead of five.
constexpr int lanes_for(int items) {
  int lanes = 1;
  while (!tokens_on_host && lanes < 32 && lanes * 8 < items) lanes *= 2;
  return lanes;
}

// scratch_ints: a per-token scratch array of that many ints, shared by the token's lanes
// (token_scratch(member, count)); a ThreadVectorRange loop ends with its lanes in step, so what one
// loop writes there the next one reads.
using TokenScratch = Kokkos::View<int*, ExecSpace::scratch_memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;

KOKKOS_INLINE_FUNCTION TokenScratch token_scratch(TokenMember const& m, int count) {
  return TokenScratch(m.thread_scratch(0), count);
}

// A second per-token array, of floats, after token_scratch's ints (each call takes the scratch
// that follows the previous one). Ask for scratch_for(ints, floats) ints: both arrays and the
// alignment the second one may need.
using TokenFloatScratch =
    Kokkos::View<float*, ExecSpace::scratch_memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;

KOKKOS_INLINE_FUNCTION TokenFloatScratch token_scratch_floats(TokenMember const& m, int count) {
  return TokenFloatScratch(m.thread_scratch(0), count);
}

constexpr int scratch_for(int ints, int floats) { return ints + floats + 4; }

template <class F>
void for_each_token(ExecSpace const& space, char const* label, long n, F const& f, int scratch_ints = 0,
                    int lanes = token_lanes) {
  int const tokens_per_team = threads_per_token_team / lanes;
  long const teams = (n + tokens_per_team - 1) / tokens_per_team;
  TokenPolicy policy(space, static_cast<int>(teams), tokens_per_team, lanes);
  if (scratch_ints > 0) policy.set_scratch_size(0, Kokkos::PerThread(TokenScratch::shmem_size(scratch_ints)));
  Kokkos::parallel_for(label, policy,
                       KOKKOS_LAMBDA(TokenMember const& m) {
                         long const t = static_cast<long>(m.league_rank()) * tokens_per_team + m.team_rank();
                         if (t < n) f(m, t);
                       });
}

}  // namespace proteus::detail

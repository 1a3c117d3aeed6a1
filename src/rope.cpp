// Stage 5: Q/K/V bias and rotary position embedding at original positions, in place.
#include "proteus/rope.hpp"

#include <cstdint>

#include "proteus/detail/bfloat16.hpp"
#include "proteus/detail/element_range.hpp"
#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/error.hpp"

namespace proteus {

namespace km = detail::kmath;

namespace {
// cos and sin of the angle pos * base^(-2i/D) of pair i, formed in double and reduced modulo 2 pi,
// so that positions of 10^7 and more keep their precision. The one rule of the forward and backward.
KOKKOS_INLINE_FUNCTION void rope_turn(Position pos, long i, int d, double base, float& cs, float& sn) {
  double constexpr two_pi = 6.283185307179586;
  double angle = static_cast<double>(pos) * km::pow(base, -2.0 * static_cast<double>(i) / d);
  angle -= two_pi * km::floor(angle / two_pi);
  cs = static_cast<float>(km::cos(angle));
  sn = static_cast<float>(km::sin(angle));
}
}  // namespace

namespace {
// Two floats that GPUs read or write in one 8-byte access: a pair (col, col + 1) with col even.
struct alignas(8) FloatPair {
  float v[2];
};

// Two BF16 values that GPUs store in one 4-byte write.
struct alignas(4) Bf16Pair {
  detail::bf16 v[2];
};

// Heads whose pairs a work item reads before it writes any: loads in flight per thread (stores
// to m may alias later loads, so the compiler would not hoist them on its own).
constexpr int heads_in_flight = 8;

// Whether pairs of a matrix (or a vector: row_stride 2) can be read as FloatPairs.
bool pairs_aligned(float const* data, long row_stride) {
  return row_stride % 2 == 0 && reinterpret_cast<std::uintptr_t>(data) % 8 == 0;
}

// The bias and rotation of every pair of columns (col, col + 1) of the first `parts` parts of
// width E of m, each handed to store(row, col, a0, a1). One work item per (row, pair i): one angle,
// applied to pair i of every head of every part (neighbouring items touch neighbouring columns of
// a head; a warp reads 64 contiguous bytes of each of 4 rows per head). Columns at or past
// bias.extent(0) get no bias; parts at or past `rotated` no rotation.
template <class Store>
void bias_rope_pairs(ExecSpace const& space, char const* label, TokenMatrix const& m, TokenVector const& bias,
                     PositionVector const& positions, int embed, int heads, int parts, int rotated, double base,
                     Store const& store) {
  int const d = embed / heads;  // even (Config refuses RoPE otherwise)
  int const biased = static_cast<int>(bias.extent(0));
  require(pairs_aligned(m.data(), static_cast<long>(m.stride(0))) && pairs_aligned(bias.data(), 2), label,
          "needs 8-byte aligned column pairs");
  detail::for_each_element(
      space, label, static_cast<long>(m.extent(0)), d / 2, KOKKOS_LAMBDA(long row, long i) {
        float cs, sn;
        rope_turn(positions(row), i, d, base, cs, sn);
        auto const pair = [&](int col) { return reinterpret_cast<FloatPair const*>(&m(row, col))[0]; };
        for (int part = 0; part < parts; ++part) {
          bool const turn = part < rotated;
          int const col0 = part * embed + 2 * static_cast<int>(i);
          for (int h0 = 0; h0 < heads; h0 += heads_in_flight) {
            FloatPair a[heads_in_flight];
            for (int k = 0; k < heads_in_flight; ++k)
              if (h0 + k < heads) a[k] = pair(col0 + (h0 + k) * d);
            for (int k = 0; k < heads_in_flight && h0 + k < heads; ++k) {
              int const col = col0 + (h0 + k) * d;
              if (col < biased) {
                FloatPair const b = reinterpret_cast<FloatPair const*>(&bias(col))[0];
                a[k].v[0] += b.v[0];
                a[k].v[1] += b.v[1];
              }
              float const a0 = a[k].v[0], a1 = a[k].v[1];
              store(row, col, turn ? a0 * cs - a1 * sn : a0, turn ? a1 * cs + a0 * sn : a1);
            }
          }
        }
      });
}
}  // namespace

void bias_and_rope(ExecSpace const& space, TokenMatrix const& m, TokenVector const& bias,
                   PositionVector const& positions, int embed, int heads, int rotated, bool rope, double base) {
  if (!rope || rotated <= 0) {
    detail::for_each_element(
        space, "proteus::rope::bias", static_cast<long>(m.extent(0)), static_cast<long>(bias.extent(0)),
        KOKKOS_LAMBDA(long row, long col) { m(row, col) += bias(col); });
    return;
  }
  int const parts = static_cast<int>(bias.extent(0)) / embed;
  bias_rope_pairs(
      space, "proteus::rope::bias_rope", m, bias, positions, embed, heads, parts, rotated, base,
      KOKKOS_LAMBDA(long row, int col, float a0, float a1) {
        reinterpret_cast<FloatPair*>(&m(row, col))[0] = FloatPair{{a0, a1}};
      });
}

void bias_and_rope_to_bf16(ExecSpace const& space, TokenMatrix const& m, TokenVector const& bias,
                           PositionVector const& positions, int embed, int heads, int rotated, bool rope, double base,
                           Bf16Matrix const& out, long out_row0) {
  long const biased = static_cast<long>(bias.extent(0));
  if (!rope || rotated <= 0) {
    detail::for_each_element(
        space, "proteus::rope::bias_bf16", static_cast<long>(m.extent(0)), static_cast<long>(m.extent(1)),
        KOKKOS_LAMBDA(long row, long col) {
          out(out_row0 + row, col) = detail::to_bf16(col < biased ? m(row, col) + bias(col) : m(row, col));
        });
    return;
  }
  int const parts = static_cast<int>(m.extent(1)) / embed;
  bias_rope_pairs(space, "proteus::rope::bias_rope_bf16", m, bias, positions, embed, heads, parts, rotated, base,
                  KOKKOS_LAMBDA(long row, int col, float a0, float a1) {
                    // col is even and rows hold an even number of columns: 4-byte aligned pairs.
                    *reinterpret_cast<Bf16Pair*>(&out(out_row0 + row, col)) = Bf16Pair{{detail::to_bf16(a0),
                                                                                       detail::to_bf16(a1)}};
                  });
}

void rope_backward(ExecSpace const& space, TokenMatrix const& g, PositionVector const& positions, int embed,
                   int heads, int rotated, bool rope, double base) {
  if (!rope || rotated <= 0) return;  // bias only: its gradient passes through unchanged
  long const rows = static_cast<long>(g.extent(0));
  int const d = embed / heads;
  int const pairs = d / 2;
  // The transpose of the forward's rotation: the same angle, turned the other way.
  detail::for_each_element(
      space, "proteus::rope::backward", rows, pairs, KOKKOS_LAMBDA(long row, long i) {
        float cs, sn;
        rope_turn(positions(row), i, d, base, cs, sn);
        for (int part = 0; part < rotated; ++part)
          for (int h = 0; h < heads; ++h) {
            int const col = part * embed + h * d + 2 * static_cast<int>(i);
            float const g0 = g(row, col), g1 = g(row, col + 1);
            g(row, col) = g0 * cs + g1 * sn;
            g(row, col + 1) = g1 * cs - g0 * sn;
          }
      });
}

}  // namespace proteus

// Stage 5: Q/K/V bias and rotary position embedding at original positions, in place.
#include "proteus/rope.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "proteus/detail/bfloat16.hpp"
#include "proteus/detail/element_range.hpp"
#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/detail/workspace.hpp"
#include "proteus/error.hpp"

namespace proteus {

namespace km = detail::kmath;

namespace {
// cos and sin of the angle pos * base^(-2i/D) of pair i (log_base = ln(base), taken on the host):
// the angle is formed in double and reduced to [-pi, pi], so that positions of 10^7 and more keep
// their precision; cos and sin of the reduced angle are then taken in float (a few ulp; pow, cos
// and sin in double took an H200 twice as long per angle). The one rule of the forward and backward.
// The rule in two parts: pair i's frequency base^(-2i/D), then cos and sin at a position.
KOKKOS_INLINE_FUNCTION double rope_frequency(long i, int d, double log_base) {
  return km::exp(-2.0 * static_cast<double>(i) / d * log_base);
}

KOKKOS_INLINE_FUNCTION void rope_turn(Position pos, double frequency, float& cs, float& sn) {
  double constexpr two_pi = 6.283185307179586, per_turn = 0.15915494309189535;  // 2 pi and 1 / (2 pi)
  double const angle = static_cast<double>(pos) * frequency;
  float const reduced = static_cast<float>(angle - two_pi * km::floor(angle * per_turn + 0.5));
  cs = km::cos(reduced);
  sn = km::sin(reduced);
}

// P neighbouring pairs of columns (col, col + 1), ..., read or written in one access: 8 bytes of
// floats for P = 1, 16 for P = 2 (heads of a multiple of 4 columns), half that in BF16.
template <class T, int P>
struct alignas(2 * P * sizeof(T)) Pairs {
  T v[2 * P];
};

// Whether a matrix's rows (or a vector: row_stride 0) can be read in pieces of `bytes`.
template <class T>
bool aligned_to(T const* data, long row_stride, long bytes) {
  return (row_stride * static_cast<long>(sizeof(T))) % bytes == 0 &&
         reinterpret_cast<std::uintptr_t>(data) % bytes == 0;
}

template <class T, int P, class Matrix>
KOKKOS_INLINE_FUNCTION Pairs<T, P>& pairs_at(Matrix const& m, long row, long col) {
  return *reinterpret_cast<Pairs<T, P>*>(&m(row, col));
}

// turns(row, 2i), turns(row, 2i + 1): cos and sin of pair i's angle at the row's position; the
// rotation's trigonometry once per (row, pair) rather than once per head. A work item takes pair
// i of turn_rows rows in a row, so that the frequency's exp (in double) is paid once for them.
constexpr long turn_rows = 4;

void fill_turns(ExecSpace const& space, PositionVector const& positions, int d, double base, TokenMatrix const& turns) {
  double const log_base = std::log(base);
  long const rows = static_cast<long>(turns.extent(0));
  detail::for_each_element(
      space, "proteus::rope::turns", (rows + turn_rows - 1) / turn_rows, d / 2, KOKKOS_LAMBDA(long group, long i) {
        double const frequency = rope_frequency(i, d, log_base);
        long const end = (group + 1) * turn_rows < rows ? (group + 1) * turn_rows : rows;
        for (long row = group * turn_rows; row < end; ++row) {
          float cs, sn;
          rope_turn(positions(row), frequency, cs, sn);
          pairs_at<float, 1>(turns, row, 2 * i) = Pairs<float, 1>{{cs, sn}};
        }
      });
}

// The columns a pass reads and where it stores them. Columns before `biased` get += bias, those
// before `rotated` (a whole number of heads) are turned by their pair's angle in `turns`: forward
// (turn +1) or back by the transpose (turn -1, the backward's: the same angle, sine negated).
struct PassShape {
  long width;    // columns of m read (and written)
  long biased;   // bias.extent(0)
  long rotated;  // columns rotated: rotated parts * E, or 0
  int d;         // columns per head
  float turn;    // +1 forward, -1 back
};

// One work item per P pairs of a row: every access is 8 P (FP32) or 4 P bytes (BF16) wide and
// neighbouring items touch neighbouring addresses, so the pass streams like a copy. Each result
// goes to store(row, col, Pairs<float, P>).
template <int P, class Store>
void bias_rope_stream(ExecSpace const& space, char const* label, TokenMatrix const& m, TokenVector const& bias,
                      TokenMatrix const& turns, PassShape const shape, Store const& store) {
  long const per_row = shape.width / (2 * P), rows = static_cast<long>(m.extent(0));
  detail::RowSplit const split(rows, per_row);
  Kokkos::parallel_for(
      label, RangePolicy(space, 0, rows * per_row), KOKKOS_LAMBDA(long item) {
        long const row = split.row(item);
        long const col = 2 * P * (item - row * per_row);
        Pairs<float, P> a = pairs_at<float, P>(m, row, col);
        if (col < shape.biased) {
          Pairs<float, P> const b = *reinterpret_cast<Pairs<float, P> const*>(&bias(col));
          for (int k = 0; k < 2 * P; ++k) a.v[k] += b.v[k];
        }
        if (col < shape.rotated) {
          Pairs<float, P> const t = pairs_at<float, P>(turns, row, col % shape.d);
          for (int k = 0; k < P; ++k) {
            float const a0 = a.v[2 * k], a1 = a.v[2 * k + 1], cs = t.v[2 * k], sn = shape.turn * t.v[2 * k + 1];
            a.v[2 * k] = a0 * cs - a1 * sn;
            a.v[2 * k + 1] = a1 * cs + a0 * sn;
          }
        }
        store(row, col, a);
      });
}

// Bias and rotation of `shape`'s columns of m, P = 2 pairs per item where heads and alignments
// allow 16-byte accesses (out_quads: the destination takes two pairs in one access too), else one.
template <class Store>
void bias_rope(ExecSpace const& space, char const* label, TokenMatrix const& m, TokenVector const& bias,
               PositionVector const& positions, PassShape const shape, double base, TokenMatrix* workspace,
               bool out_quads, Store const& store) {
  TokenMatrix turns;
  if (shape.rotated > 0) {
    TokenMatrix own;
    TokenMatrix& buffer = workspace != nullptr ? *workspace : own;
    turns = detail::first_rows(buffer, "proteus::rope::turns", static_cast<long>(m.extent(0)), shape.d);
    fill_turns(space, positions, shape.d, base, turns);
  }
  bool const quads = shape.d % 4 == 0 && shape.width % 4 == 0 && shape.biased % 4 == 0 && out_quads &&
                     aligned_to(m.data(), static_cast<long>(m.stride(0)), 16) && aligned_to(bias.data(), 0, 16) &&
                     aligned_to(turns.data(), shape.d, 16);
  require(aligned_to(m.data(), static_cast<long>(m.stride(0)), 8) && aligned_to(bias.data(), 0, 8), label,
          "needs 8-byte aligned column pairs");
  if (quads)
    bias_rope_stream<2>(space, label, m, bias, turns, shape, store);
  else
    bias_rope_stream<1>(space, label, m, bias, turns, shape, store);
}

PassShape shape_of(long width, TokenVector const& bias, int embed, int heads, int rotated, bool rope,
                   float turn = 1.0f) {
  long const turned = rope ? static_cast<long>(std::max(rotated, 0)) * embed : 0;
  return PassShape{width, static_cast<long>(bias.extent(0)), turned, embed / heads, turn};  // D even (Config)
}

// Stores of the pass: back into m, or rounded once to BF16 into rows row0.. of out.
struct InPlace {
  TokenMatrix m;
  template <int P>
  KOKKOS_INLINE_FUNCTION void operator()(long row, long col, Pairs<float, P> const& a) const {
    pairs_at<float, P>(m, row, col) = a;
  }
};

// Rounded once to BF16 into the head rows of out (bias_and_rope_to_bf16 says where each goes).
struct RoundedToHeadRows {
  Bf16HeadRows out;
  long row0;
  detail::RowSplit batch_of;  // a token row's batch row (per_row: the tokens of a batch row)
  int heads, d, embed;
  template <int P>
  KOKKOS_INLINE_FUNCTION void operator()(long row, long col, Pairs<float, P> const& a) const {
    long const r = row0 + row, b = batch_of.row(r), t = r - b * batch_of.per_row;
    int const value = col >= embed ? 1 : 0, c = static_cast<int>(col) - value * embed, h = c / d;
    Pairs<detail::bf16, P> v;
    for (int k = 0; k < 2 * P; ++k) v.v[k] = detail::to_bf16(a.v[k]);
    *reinterpret_cast<Pairs<detail::bf16, P>*>(&out(b * heads + h, t, value * d + c - h * d)) = v;
  }
};
}  // namespace

void bias_and_rope(ExecSpace const& space, TokenMatrix const& m, TokenVector const& bias,
                   PositionVector const& positions, int embed, int heads, int rotated, bool rope, double base,
                   TokenMatrix* turns) {
  PassShape const shape = shape_of(static_cast<long>(bias.extent(0)), bias, embed, heads, rotated, rope);
  bias_rope(space, "proteus::rope::bias_rope", m, bias, positions, shape, base, turns, true, InPlace{m});
}

void bias_and_rope_to_bf16(ExecSpace const& space, TokenMatrix const& m, TokenVector const& bias,
                           PositionVector const& positions, int embed, int heads, bool rope, double base,
                           Bf16HeadRows const& out, long out_row0, TokenMatrix* turns) {
  char const* label = "proteus::rope::bias_rope_bf16";
  int const d = embed / heads;
  long const tokens = static_cast<long>(out.extent(1)), batch = static_cast<long>(out.extent(0)) / heads;
  require(m.extent(1) == static_cast<size_t>(2 * embed) && out.extent(2) == static_cast<size_t>(2 * d) &&
              out.extent(0) == static_cast<size_t>(batch * heads) && out_row0 + m.extent(0) <= batch * tokens,
          label, "needs K|V rows [N x 2E] and head rows [batch*heads x tokens x 2D] that hold them");
  require(aligned_to(out.data(), static_cast<long>(out.stride(1)), 4), label, "needs 4-byte aligned BF16 pairs");
  PassShape const shape = shape_of(static_cast<long>(m.extent(1)), bias, embed, heads, 1, rope);
  bool const out_quads = aligned_to(out.data(), static_cast<long>(out.stride(1)), 8);
  RoundedToHeadRows const store{out, out_row0, detail::RowSplit(batch, tokens), heads, d, embed};
  bias_rope(space, label, m, bias, positions, shape, base, turns, out_quads, store);
}

void rope_backward(ExecSpace const& space, TokenMatrix const& g, PositionVector const& positions, int embed, int heads,
                   int rotated, bool rope, double base, TokenMatrix* turns) {
  if (!rope || rotated <= 0) return;  // bias only: its gradient passes through unchanged
  // The transpose of the forward's rotation over the rotated parts alone, in place, no bias.
  PassShape const shape =
      shape_of(static_cast<long>(rotated) * embed, TokenVector(), embed, heads, rotated, rope, -1.0f);
  bias_rope(space, "proteus::rope::backward", g, TokenVector(), positions, shape, base, turns, true, InPlace{g});
}

}  // namespace proteus

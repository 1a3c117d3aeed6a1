// Stage 5: Q/K/V bias and rotary position embedding at original positions, in place.
#include "proteus/rope.hpp"

#include "proteus/detail/element_range.hpp"
#include "proteus/detail/kokkos_compat.hpp"

namespace proteus {

namespace km = detail::kmath;

void bias_and_rope(ExecSpace const& space, TokenMatrix const& m, TokenVector const& bias,
                   PositionVector const& positions, int embed, int heads, int rotated, bool rope, double base) {
  int const d = embed / heads;
  int const half = (embed + 1) / 2;  // column pairs per part (an odd E, possible without RoPE, ends in a single)
  int const parts = static_cast<int>(m.extent(1)) / embed;
  double const two_pi = 6.283185307179586;
  // One work item per pair of neighbouring columns, the same pair in every part (one angle for
  // all of them), so that neighbouring GPU threads touch neighbouring addresses.
  detail::for_each_element(
      space, "proteus::rope::bias_rope", static_cast<long>(m.extent(0)), half, KOKKOS_LAMBDA(long row, long p) {
        int const c = 2 * static_cast<int>(p);
        if (c + 1 == embed) {
          for (int part = 0; part < parts; ++part) m(row, part * embed + c) += bias(part * embed + c);
          return;
        }
        float cs = 1.0f, sn = 0.0f;
        if (rope && rotated > 0) {
          int const j = c % d;  // 2 i within the head
          double angle = static_cast<double>(positions(row)) * km::pow(base, -static_cast<double>(j) / d);
          angle -= two_pi * km::floor(angle / two_pi);
          cs = static_cast<float>(km::cos(angle));
          sn = static_cast<float>(km::sin(angle));
        }
        for (int part = 0; part < parts; ++part) {
          int const col = part * embed + c;
          float const a0 = m(row, col) + bias(col), a1 = m(row, col + 1) + bias(col + 1);
          bool const turn = rope && part < rotated;
          m(row, col) = turn ? a0 * cs - a1 * sn : a0;
          m(row, col + 1) = turn ? a1 * cs + a0 * sn : a1;
        }
      });
}

}  // namespace proteus

// Stage 5: Q/K/V bias and rotary position embedding at original positions, in place.
#include "proteus/rope.hpp"

#include "proteus/detail/element_range.hpp"
#include "proteus/detail/kokkos_compat.hpp"

namespace proteus {

namespace km = detail::kmath;

void bias_and_rope(ExecSpace const& space, TokenMatrix const& qkv, TokenVector const& bias,
                   PositionVector const& positions, int heads, bool rope, double base) {
  int const embed = static_cast<int>(qkv.extent(1)) / 3;
  int const d = embed / heads;
  double const two_pi = 6.283185307179586;
  // One work item per pair of neighbouring columns of the row's Q, K and V thirds, so that
  // neighbouring GPU threads touch neighbouring addresses.
  // One work item per pair of neighbouring columns of the row's Q, K and V thirds, so that
  // neighbouring GPU threads touch neighbouring addresses. (RoPE needs an even D; without it an
  // odd E leaves a last single column.)
  detail::for_each_element(
      space, "proteus::rope::bias_rope", static_cast<long>(qkv.extent(0)), (embed + 1) / 2,
      KOKKOS_LAMBDA(long row, long p) {
        int const c = 2 * static_cast<int>(p);  // first column of the pair in each third
        if (c + 1 == embed) {
          for (int third = 0; third < 3; ++third) qkv(row, third * embed + c) += bias(third * embed + c);
          return;
        }
        float q0 = qkv(row, c) + bias(c), q1 = qkv(row, c + 1) + bias(c + 1);
        float k0 = qkv(row, embed + c) + bias(embed + c), k1 = qkv(row, embed + c + 1) + bias(embed + c + 1);
        qkv(row, 2 * embed + c) += bias(2 * embed + c);
        qkv(row, 2 * embed + c + 1) += bias(2 * embed + c + 1);
        if (rope) {
          int const j = c % d;  // 2 i within the head
          double angle = static_cast<double>(positions(row)) * km::pow(base, -static_cast<double>(j) / d);
          angle -= two_pi * km::floor(angle / two_pi);
          float const cs = static_cast<float>(km::cos(angle));
          float const sn = static_cast<float>(km::sin(angle));
          float const rq0 = q0 * cs - q1 * sn, rk0 = k0 * cs - k1 * sn;
          q1 = q1 * cs + q0 * sn;
          k1 = k1 * cs + k0 * sn;
          q0 = rq0;
          k0 = rk0;
        }
        qkv(row, c) = q0;
        qkv(row, c + 1) = q1;
        qkv(row, embed + c) = k0;
        qkv(row, embed + c + 1) = k1;
      });
}

}  // namespace proteus

// Stage 5: head split and rotary position embedding at original positions.
#include "proteus/rope.hpp"

#include "proteus/detail/kokkos_compat.hpp"

namespace proteus {

namespace km = detail::kmath;

void split_heads_rope(ExecSpace const& space, TokenMatrix const& qkv, PositionVector const& positions,
                      int batch, int heads, bool rope, double base, HeadTensor const& q,
                      HeadTensor const& k, HeadTensor const& v) {
  long const tokens = static_cast<long>(qkv.extent(0)) / batch;
  int const embed = static_cast<int>(qkv.extent(1)) / 3;
  int const d = embed / heads;
  int const pairs = d / 2;
  double const two_pi = 6.283185307179586;
  Kokkos::parallel_for(
      "proteus::rope::split_heads",
      Kokkos::MDRangePolicy<ExecSpace, Kokkos::Rank<2>>(space, {0, 0},
                                                        {static_cast<long>(qkv.extent(0)), heads}),
      KOKKOS_LAMBDA(long row, int h) {
        long const b = row / tokens, t = row % tokens;
        long const bh = b * heads + h;
        int const c = h * d;
        for (int j = 0; j < d; ++j) v(bh, t, j) = qkv(row, 2 * embed + c + j);
        if (!rope) {
          for (int j = 0; j < d; ++j) {
            q(bh, t, j) = qkv(row, c + j);
            k(bh, t, j) = qkv(row, embed + c + j);
          }
          return;
        }
        double const pos = static_cast<double>(positions(row));
        for (int i = 0; i < pairs; ++i) {
          double angle = pos * km::pow(base, -2.0 * i / d);
          angle -= two_pi * km::floor(angle / two_pi);
          float const cs = static_cast<float>(km::cos(angle));
          float const sn = static_cast<float>(km::sin(angle));
          float const q0 = qkv(row, c + 2 * i), q1 = qkv(row, c + 2 * i + 1);
          float const k0 = qkv(row, embed + c + 2 * i), k1 = qkv(row, embed + c + 2 * i + 1);
          q(bh, t, 2 * i) = q0 * cs - q1 * sn;
          q(bh, t, 2 * i + 1) = q1 * cs + q0 * sn;
          k(bh, t, 2 * i) = k0 * cs - k1 * sn;
          k(bh, t, 2 * i + 1) = k1 * cs + k0 * sn;
        }
      });
}

}  // namespace proteus

// Stage 5: head split and rotary position embedding at original positions.
#include "proteus/rope.hpp"

#include "proteus/detail/element_range.hpp"
#include "proteus/detail/kokkos_compat.hpp"

namespace proteus {

namespace km = detail::kmath;

void split_heads_rope(ExecSpace const& space, TokenMatrix const& qkv, PositionVector const& positions, int batch,
                      int heads, bool rope, double base, HeadTensor const& q, HeadTensor const& k,
                      HeadTensor const& v) {
  long const tokens = static_cast<long>(qkv.extent(0)) / batch;
  int const embed = static_cast<int>(qkv.extent(1)) / 3;
  int const d = embed / heads;
  double const two_pi = 6.283185307179586;
  long const rows = static_cast<long>(qkv.extent(0));
  // Work items run along the embedding (one element, or one RoPE pair), so that neighbouring
  // GPU threads read and write neighbouring addresses.
  if (!rope) {
    detail::for_each_element(
        space, "proteus::rope::split_heads", rows, embed, KOKKOS_LAMBDA(long row, long c) {
          long const bh = (row / tokens) * heads + c / d, t = row % tokens;
          long const j = c % d;
          q(bh, t, j) = qkv(row, c);
          k(bh, t, j) = qkv(row, embed + c);
          v(bh, t, j) = qkv(row, 2 * embed + c);
        });
    return;
  }
  detail::for_each_element(
      space, "proteus::rope::split_heads", rows, embed / 2, KOKKOS_LAMBDA(long row, long p) {
        long const c = 2 * p;  // first element of the pair in the embedding
        long const bh = (row / tokens) * heads + c / d, t = row % tokens;
        long const j = c % d;  // 2 i within the head
        double angle = static_cast<double>(positions(row)) * km::pow(base, -static_cast<double>(j) / d);
        angle -= two_pi * km::floor(angle / two_pi);
        float const cs = static_cast<float>(km::cos(angle));
        float const sn = static_cast<float>(km::sin(angle));
        float const q0 = qkv(row, c), q1 = qkv(row, c + 1);
        float const k0 = qkv(row, embed + c), k1 = qkv(row, embed + c + 1);
        q(bh, t, j) = q0 * cs - q1 * sn;
        q(bh, t, j + 1) = q1 * cs + q0 * sn;
        k(bh, t, j) = k0 * cs - k1 * sn;
        k(bh, t, j + 1) = k1 * cs + k0 * sn;
        v(bh, t, j) = qkv(row, 2 * embed + c);
        v(bh, t, j + 1) = qkv(row, 2 * embed + c + 1);
      });
}

}  // namespace proteus

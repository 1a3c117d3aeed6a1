// Stage 1: router logits by GEMM, then a row softmax. Reads x and W_router, writes gate_probs.
#include "proteus/router.hpp"

#include "proteus/detail/kokkos_compat.hpp"

namespace proteus {

void router_probabilities(ExecSpace const& space, TokenMatrix const& x,
                          GateByEmbed const& router_weight, GateMatrix const& probs) {
  detail::gemm(space, "N", "T", 1.0f, x, router_weight, 0.0f, probs);
  int const gates = static_cast<int>(probs.extent(1));
  Kokkos::parallel_for(
      "proteus::router::softmax", Kokkos::RangePolicy<ExecSpace>(space, 0, probs.extent(0)),
      KOKKOS_LAMBDA(int t) {
        float m = probs(t, 0);
        for (int g = 1; g < gates; ++g) m = probs(t, g) > m ? probs(t, g) : m;
        float sum = 0.0f;
        for (int g = 0; g < gates; ++g) {
          float const e = detail::kmath::exp(probs(t, g) - m);
          probs(t, g) = e;
          sum += e;
        }
        for (int g = 0; g < gates; ++g) probs(t, g) /= sum;
      });
}

}  // namespace proteus

// Stage 1: router logits by GEMM, then a row softmax. Reads x and W_router, writes gate_probs.
#include "proteus/router.hpp"

#include "proteus/detail/element_range.hpp"
#include "proteus/detail/kokkos_compat.hpp"

namespace proteus {

void router_logits(ExecSpace const& space, TokenMatrix const& x, GateByEmbed const& router_weight,
                   GateMatrix const& logits) {
  detail::gemm(space, "N", "T", 1.0f, x, router_weight, 0.0f, logits);
}

void router_probabilities(ExecSpace const& space, TokenMatrix const& x,
                          GateByEmbed const& router_weight, GateMatrix const& probs) {
  router_logits(space, x, router_weight, probs);
  int const gates = static_cast<int>(probs.extent(1));
  RouterLogits const logits{probs};
  detail::for_each_token(
      space, "proteus::router::softmax", static_cast<long>(probs.extent(0)),
      KOKKOS_LAMBDA(detail::TokenMember const& member, long t) {
        auto const lanes = Kokkos::ThreadVectorRange(member, gates);
        RouterRow const row = router_row(logits, lanes, t);
        Kokkos::parallel_for(lanes, [&](int g) { probs(t, g) = row(g); });
      },
      0, detail::lanes_for(gates));
}

void router_probabilities_backward(ExecSpace const& space, TokenMatrix const& x, GateByEmbed const& router_weight,
                                   GateMatrix const& probs, GateMatrix const& dprobs, TokenMatrix const& dx,
                                   GateByEmbed const& grads_weight) {
  int const gates = static_cast<int>(probs.extent(1));
  Kokkos::parallel_for(
      "proteus::router::softmax_backward", RangePolicy(space, 0, probs.extent(0)),
      KOKKOS_LAMBDA(long t) {
        float dot = 0.0f;
        for (int g = 0; g < gates; ++g) dot += probs(t, g) * dprobs(t, g);
        for (int g = 0; g < gates; ++g) dprobs(t, g) = probs(t, g) * (dprobs(t, g) - dot);
      });
  detail::gemm(space, "T", "N", 1.0f, dprobs, x, 0.0f, grads_weight);
  detail::gemm(space, "N", "N", 1.0f, dprobs, router_weight, 1.0f, dx);
}

}  // namespace proteus

// Stage 1: the learned router. gate_probs[t, g] = softmax_g(x[t] . W_router[g]).
#pragma once

#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/types.hpp"

namespace proteus {

// x [N x E], router_weight [G x E] (torch Linear layout), probs [N x G] (written).
void router_probabilities(ExecSpace const& space, TokenMatrix const& x,
                          GateByEmbed const& router_weight, GateMatrix const& probs);

// The logits alone, x W_router^T into logits [N x G]: hybrid_route takes their softmax as it reads
// them (RouterLogits), which saves the softmax's pass over [N x G].
void router_logits(ExecSpace const& space, TokenMatrix const& x, GateByEmbed const& router_weight,
                   GateMatrix const& logits);

// The router's logits read as its probabilities (hybrid_route's way): keep_probabilities writes
// them over the logits as they are read (the training state of Config::router_gradient needs them).
struct RouterLogits {
  GateColumns logits;  // [N x G] x W_router^T
  bool keep_probabilities = false;
};

// Token t's softmax over its logits, row(g) = exp(l_g - max) / sum, inside a per-token kernel
// (detail::for_each_token) whose lanes span the gates: the maximum and the normaliser by two
// reductions over the lanes, each probability formed as it is read. The one softmax of the router.
struct RouterRow {
  GateColumns logits;
  long t;
  float max, sum;
  bool keep_probabilities;
  KOKKOS_INLINE_FUNCTION float operator()(int g) const { return detail::kmath::exp(logits(t, g) - max) / sum; }
  KOKKOS_INLINE_FUNCTION void keep(int g, float p) const {
    if (keep_probabilities) logits(t, g) = p;
  }
};
template <class Lanes>
KOKKOS_INLINE_FUNCTION RouterRow router_row(RouterLogits const& router, Lanes const& lanes, long t) {
  auto const& l = router.logits;
  float m = 0.0f, sum = 0.0f;
  Kokkos::parallel_reduce(
      lanes, [&](int g, float& v) { v = l(t, g) > v ? l(t, g) : v; }, Kokkos::Max<float>(m));
  Kokkos::parallel_reduce(
      lanes, [&](int g, float& s) { s += detail::kmath::exp(l(t, g) - m); }, sum);
  return RouterRow{l, t, m, sum, router.keep_probabilities};
}

// Backward of router_probabilities through the softmax: dz = p (dp - sum_g p dp), then
// grads_weight = dz^T x (written) and dx += dz W_router. dprobs is overwritten with dz.
void router_probabilities_backward(ExecSpace const& space, TokenMatrix const& x, GateByEmbed const& router_weight,
                                   GateMatrix const& probs, GateMatrix const& dprobs, TokenMatrix const& dx,
                                   GateByEmbed const& grads_weight);

}  // namespace proteus

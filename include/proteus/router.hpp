// Stage 1: the learned router. gate_probs[t, g] = softmax_g(x[t] . W_router[g]).
#pragma once

#include "proteus/types.hpp"

namespace proteus {

// x [N x E], router_weight [G x E] (torch Linear layout), probs [N x G] (written).
void router_probabilities(ExecSpace const& space, TokenMatrix const& x,
                          GateByEmbed const& router_weight, GateMatrix const& probs);

// The logits alone, x W_router^T into logits [N x G]: hybrid_route takes their softmax as it reads
// them (RouterLogits), which saves the softmax's pass over [N x G].
void router_logits(ExecSpace const& space, TokenMatrix const& x, GateByEmbed const& router_weight,
                   GateMatrix const& logits);

// Backward of router_probabilities through the softmax: dz = p (dp - sum_g p dp), then
// grads_weight = dz^T x (written) and dx += dz W_router. dprobs is overwritten with dz.
void router_probabilities_backward(ExecSpace const& space, TokenMatrix const& x, GateByEmbed const& router_weight,
                                   GateMatrix const& probs, GateMatrix const& dprobs, TokenMatrix const& dx,
                                   GateByEmbed const& grads_weight);

}  // namespace proteus

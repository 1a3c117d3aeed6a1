// Stage 1: the learned router. gate_probs[t, g] = softmax_g(x[t] . W_router[g]).
#pragma once

#include "proteus/types.hpp"

namespace proteus {

// x [N x E], router_weight [G x E] (torch Linear layout), probs [N x G] (written).
void router_probabilities(ExecSpace const& space, TokenMatrix const& x,
                          GateByEmbed const& router_weight, GateMatrix const& probs);

}  // namespace proteus

// Stage 5: the Q/K/V bias and the rotary position embedding at each token's original position,
// applied in place to the fused projection (no per-head copies: attention reads Q, K and V of
// head h from columns h*D.. of their thirds of the row).
#pragma once

#include "proteus/types.hpp"

namespace proteus {

// qkv [B*T x 3E] (columns Q | K | V) += bias [3E]; then pair i of each head of Q and K
// (x[2i], x[2i+1]) is rotated by angle pos * base^(-2i/D); the angle is formed in double so that
// positions of 10^7 and more keep their precision. positions [B*T]. rope = false: bias only.
void bias_and_rope(ExecSpace const& space, TokenMatrix const& qkv, TokenVector const& bias,
                   PositionVector const& positions, int heads, bool rope, double base);

}  // namespace proteus

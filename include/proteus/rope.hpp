// Stage 5: split the projected rows into heads and rotate Q and K by RoPE at each token's
// original position.
#pragma once

#include "proteus/types.hpp"

namespace proteus {

// qkv [B*T x 3E] -> q, k, v [B*H x T x D]. Pair i of a head (x[2i], x[2i+1]) is rotated by
// angle pos * base^(-2i/D); the angle is formed in double so that positions of 10^7 and more keep
// their precision. positions [B*T].
void split_heads_rope(ExecSpace const& space, TokenMatrix const& qkv, PositionVector const& positions,
                      int batch, int heads, bool rope, double base, HeadTensor const& q,
                      HeadTensor const& k, HeadTensor const& v);

}  // namespace proteus

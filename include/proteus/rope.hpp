// Stage 5: the Q/K/V bias and the rotary position embedding at each token's original position,
// applied in place to the projections (no per-head copies: attention reads head h from columns
// h*D.. of each part of a row).
#pragma once

#include "proteus/types.hpp"

namespace proteus {

// m [N x W] holds parts of width E side by side (Q, or K | V). The first parts*E columns, with
// parts*E = bias.extent(0), get += bias; then pair i of each head of the first `rotated` of those
// parts (x[2i], x[2i+1]) is rotated by angle pos * base^(-2i/D); the angle is formed in double so
// that positions of 10^7 and more keep their precision. Columns past the bias are not touched
// (the module passes K's bias alone: V's is added to the attention context). positions [N].
// rope = false: bias only. turns: a buffer kept between calls for the cos and sin of each row's
// pairs ([N x D], grown when short), or nullptr for one of the call's own.
void bias_and_rope(ExecSpace const& space, TokenMatrix const& m, TokenVector const& bias,
                   PositionVector const& positions, int embed, int heads, int rotated, bool rope, double base,
                   TokenMatrix* turns = nullptr);

// The same for K|V (m [N x 2E]) without touching m: K with its bias and rotation, V as it is,
// each value rounded once to BF16 into the head rows of out (Config::kv_bf16: projected and
// rotated in FP32, then stored in BF16). Row r of m is token row out_row0 + r of the call (batch
// row b, token t, with out.extent(1) tokens a batch row): column c of K goes to key column c % D of
// head c / D, out(b * heads + c / D, t, c % D), and V's column c to out(b * heads + c / D, t, D + c % D).
void bias_and_rope_to_bf16(ExecSpace const& space, TokenMatrix const& m, TokenVector const& bias,
                           PositionVector const& positions, int embed, int heads, bool rope, double base,
                           Bf16HeadRows const& out, long out_row0, TokenMatrix* turns = nullptr);

// Backward of bias_and_rope: g [N x W] holds the gradient with respect to its outputs; the first
// `rotated` parts of width E are turned back in place (the transpose of the forward's rotation,
// from the same table of cos and sin), so that g becomes the gradient with respect to the
// projections plus bias (the bias's gradient is its column sum). turns: as bias_and_rope's.
void rope_backward(ExecSpace const& space, TokenMatrix const& g, PositionVector const& positions, int embed, int heads,
                   int rotated, bool rope, double base, TokenMatrix* turns = nullptr);

}  // namespace proteus

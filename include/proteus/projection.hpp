// Stages 5 and 7: the Q/K/V projection and the output projection (KokkosBlas GEMMs), with the
// weights in torch.nn.Linear layout ([out x in]) so that upstream state dicts map one to one.
#pragma once

#include "proteus/types.hpp"

namespace proteus {

struct Weights {
  TokenMatrix qkv_weight;  // [3E x E]
  TokenVector qkv_bias;    // [3E] (zeros when bias is off)
  TokenMatrix out_weight;  // [E x E]
  TokenVector out_bias;    // [E]
  GateByEmbed router_weight;  // [G x E], no bias

  static Weights allocate(int embed_dim, int num_gates);
  // torch's default Linear init, U(-1/sqrt(E), 1/sqrt(E)), from the counter-based generator.
  void initialise(ExecSpace const& space, std::uint64_t seed, bool bias) const;
};

// q [N x E] = x W_q^T and kv [N x 2E] = x [W_k; W_v]^T (rows 0..E-1 and E..3E-1 of W_qkv). The
// bias is added in the same pass as RoPE (rope.hpp).
void project_q(ExecSpace const& space, TokenMatrix const& x, Weights const& w, TokenMatrix const& q);
void project_kv(ExecSpace const& space, TokenMatrix const& x, Weights const& w, TokenMatrix const& kv);
// y [N x E] = ctx W_out^T + b.
void project_output(ExecSpace const& space, TokenMatrix const& ctx, Weights const& w,
                    TokenMatrix const& y);

}  // namespace proteus

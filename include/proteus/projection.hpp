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

// Precision of the projection GEMMs. fp32: FP32 products and sums. tf32: inputs rounded to TF32
// (10-bit mantissa) on tensor cores, sums in FP32, as torch.backends.cuda.matmul.allow_tf32;
// only CUDA builds whose Kokkos Kernels calls cuBLAS have it (tf32_available()).
enum class GemmPrecision { fp32, tf32 };
bool tf32_available();

// q [N x E] = x W_q^T and kv [N x 2E] = x [W_k; W_v]^T (rows 0..E-1 and E..3E-1 of W_qkv). The
// bias is added in the same pass as RoPE (rope.hpp).
void project_q(ExecSpace const& space, TokenMatrix const& x, Weights const& w, TokenMatrix const& q,
               GemmPrecision precision);
void project_kv(ExecSpace const& space, TokenMatrix const& x, Weights const& w, TokenMatrix const& kv,
                GemmPrecision precision);
// y [N x E] = ctx W_out^T + b.
void project_output(ExecSpace const& space, TokenMatrix const& ctx, Weights const& w, TokenMatrix const& y,
                    GemmPrecision precision);

}  // namespace proteus

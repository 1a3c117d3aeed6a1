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
// only CUDA builds whose Kokkos Kernels calls cuBLAS have it (tf32_available()). bf16: inputs
// rounded to BF16 (7-bit mantissa, to nearest even), products exact and sums in FP32, as a torch
// Linear under BF16 autocast with FP32 outputs; on BF16 tensor cores in CUDA builds calling
// cuBLAS, and on every other build as the same rounding followed by an FP32 GEMM.
enum class GemmPrecision { fp32, tf32, bf16 };
bool tf32_available();

// Where bf16 GEMMs round their operands: buffers a caller keeps between calls (grown as needed),
// so that no call allocates. Without one (nullptr) a bf16 GEMM allocates its own.
struct Bf16Operands {
  Bf16Matrix rows;    // the input rows (x or the context)
  Bf16Matrix weight;  // the rows of the weight used, rounded by the GEMM itself
  // W_qkv and W_out rounded once for a whole forward (round_weights). While they are empty, each
  // GEMM rounds the rows of the weight it uses into `weight`.
  Bf16Matrix qkv_weight, out_weight;
};

// operands.qkv_weight and out_weight = w's weights rounded to BF16, for the BF16 GEMMs that follow
// (a forward rounds them once, not once per block of rows). A caller that changes the weights
// calls it again before the next BF16 GEMM with these operands.
void round_weights(ExecSpace const& space, Weights const& w, Bf16Operands& operands);

// q [N x E] = x W_q^T and kv [N x 2E] = x [W_k; W_v]^T (rows 0..E-1 and E..3E-1 of W_qkv). The
// bias is added in the same pass as RoPE (rope.hpp).
void project_q(ExecSpace const& space, TokenMatrix const& x, Weights const& w, TokenMatrix const& q,
               GemmPrecision precision, Bf16Operands* operands = nullptr);
void project_kv(ExecSpace const& space, TokenMatrix const& x, Weights const& w, TokenMatrix const& kv,
                GemmPrecision precision, Bf16Operands* operands = nullptr);
// Gradients of the trainable parameters have the shapes of the parameters themselves.
using Gradients = Weights;

// y [N x E] = ctx W_out^T + b.
void project_output(ExecSpace const& space, TokenMatrix const& ctx, Weights const& w, TokenMatrix const& y,
                    GemmPrecision precision, Bf16Operands* operands = nullptr);
// y = ctx W_out^T without the bias, for a caller that adds it in a pass of its own over y (the
// module's scatter of the kept rows).
void project_output_unbiased(ExecSpace const& space, TokenMatrix const& ctx, Weights const& w, TokenMatrix const& y,
                             GemmPrecision precision, Bf16Operands* operands = nullptr);

// Backward of the projections (FP32 GEMMs whatever the forward's precision). Weight gradients are
// written, not accumulated.
// Output: dctx = dy W_out and grads.out_weight = dy^T ctx, for the rows that have a context
// (the output bias's gradient is the column sum of every row's dy: column_sums).
void project_output_backward(ExecSpace const& space, TokenMatrix const& ctx, TokenMatrix const& dy, Weights const& w,
                             TokenMatrix const& dctx, Gradients const& grads);
// Q: dxq = dq W_q and rows 0..E-1 of grads.qkv_weight = dq^T xq.
void project_q_backward(ExecSpace const& space, TokenMatrix const& xq, TokenMatrix const& dq, Weights const& w,
                        TokenMatrix const& dxq, Gradients const& grads);
// K|V: dx = dkv [W_k; W_v] and rows E..3E-1 of grads.qkv_weight = dkv^T x.
void project_kv_backward(ExecSpace const& space, TokenMatrix const& x, TokenMatrix const& dkv, Weights const& w,
                         TokenMatrix const& dx, Gradients const& grads);
// out(j) = sum over rows of m(row, j): blocks of ordered_sum_block(rows) rows summed in row order,
// then the blocks in order (deterministic: the association depends on the shape only).
void column_sums(ExecSpace const& space, TokenMatrix const& m, TokenVector const& out);
// The same with the partial sums in `partials` (grown when too short; callers that sum again and
// again keep it).
void column_sums(ExecSpace const& space, TokenMatrix const& m, TokenVector const& out, TokenVector& partials);

// Rows per block of a two-stage ordered sum over n rows: about sqrt(n), at least 64, so that both
// stages are short loops with many threads.
inline long ordered_sum_block(long n) {
  long b = 64;
  while (b * b < n) b *= 2;
  return b;
}

}  // namespace proteus

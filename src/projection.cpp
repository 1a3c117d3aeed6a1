// Stages 5 and 7: GEMMs of the Q/K/V and output projections (the output bias here, the Q/K/V
// bias with RoPE).
#include "proteus/projection.hpp"

#include <cmath>
#include <cstdint>

#include "proteus/detail/bfloat16.hpp"
#include "proteus/detail/element_range.hpp"
#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/detail/workspace.hpp"
#include "proteus/error.hpp"
#include "proteus/random.hpp"

namespace proteus {

Weights Weights::allocate(int embed_dim, int num_gates) {
  Weights w;
  w.qkv_weight = TokenMatrix("proteus::qkv_weight", 3 * embed_dim, embed_dim);
  w.qkv_bias = TokenVector("proteus::qkv_bias", 3 * embed_dim);
  w.out_weight = TokenMatrix("proteus::out_weight", embed_dim, embed_dim);
  w.out_bias = TokenVector("proteus::out_bias", embed_dim);
  w.router_weight = GateByEmbed("proteus::router_weight", num_gates, embed_dim);
  return w;
}

namespace {
void fill_uniform(ExecSpace const& space, float* data, long n, std::uint64_t seed, std::uint64_t stream, float bound,
                  char const* label) {
  Kokkos::View<float*, MemSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> out(data, n);
  Kokkos::parallel_for(
      label, RangePolicy(space, 0, n), KOKKOS_LAMBDA(long i) {
        double const u = detail::uniform_open01(detail::hash3(seed, stream, static_cast<std::uint64_t>(i)));
        out(i) = static_cast<float>((2.0 * u - 1.0) * bound);
      });
}
}  // namespace

void Weights::initialise(ExecSpace const& space, std::uint64_t seed, bool bias) const {
  float const bound = 1.0f / std::sqrt(static_cast<float>(qkv_weight.extent(1)));
  fill_uniform(space, qkv_weight.data(), qkv_weight.size(), seed, detail::stream_qkv_weight, bound,
               "proteus::init::qkv_weight");
  fill_uniform(space, out_weight.data(), out_weight.size(), seed, detail::stream_out_weight, bound,
               "proteus::init::out_weight");
  fill_uniform(space, router_weight.data(), router_weight.size(), seed, detail::stream_router, bound,
               "proteus::init::router_weight");
  if (bias) {
    fill_uniform(space, qkv_bias.data(), qkv_bias.size(), seed, detail::stream_qkv_bias, bound, "proteus::init::qkv_bias");
    fill_uniform(space, out_bias.data(), out_bias.size(), seed, detail::stream_out_bias, bound, "proteus::init::out_bias");
  } else {
    Kokkos::deep_copy(space, qkv_bias, 0.0f);
    Kokkos::deep_copy(space, out_bias, 0.0f);
  }
}

namespace {
// In 16-byte pieces where y's rows and b allow it (y may be a caller's unaligned tensor).
void add_bias(ExecSpace const& space, TokenMatrix const& y, TokenVector const& b, char const* label) {
  long const rows = static_cast<long>(y.extent(0)), cols = static_cast<long>(y.extent(1));
  if (detail::rows_of_vectors(y) && reinterpret_cast<std::uintptr_t>(b.data()) % alignof(detail::FloatQuad) == 0) {
    auto const* bias = reinterpret_cast<detail::FloatQuad const*>(b.data());
    detail::for_each_quad(
        space, label, rows, cols, KOKKOS_LAMBDA(long t, long j) {
          detail::FloatQuad& v = detail::quad_at(y, t, j);
          detail::FloatQuad const c = bias[j / 4];
          for (int k = 0; k < 4; ++k) v.v[k] += c.v[k];
        });
    return;
  }
  detail::for_each_element(
      space, label, rows, cols, KOKKOS_LAMBDA(long t, long j) { y(t, j) += b(j); });
}
}  // namespace

bool tf32_available() { return detail::tf32_gemm_available(); }

namespace {
// Four BF16 values written in one 8-byte access.
struct alignas(8) Bf16Quad {
  detail::bf16 v[4];
};

// The first rows of `buffer` = m rounded to BF16 (to nearest even): four entries per work item
// (one 16-byte read, one 8-byte write) where m's rows allow, else one.
Bf16Matrix rounded(ExecSpace const& space, TokenMatrix const& m, Bf16Matrix& buffer, char const* label) {
  long const rows = static_cast<long>(m.extent(0)), cols = static_cast<long>(m.extent(1));
  Bf16Matrix const out = detail::first_rows(buffer, label, rows, cols);
  if (detail::rows_of_vectors(m)) {  // out: rows of 4k values, 8-byte aligned (a fresh allocation)
    detail::for_each_quad(
        space, label, rows, cols, KOKKOS_LAMBDA(long r, long j) {
          detail::FloatQuad const q = detail::quad_at(m, r, j);
          Bf16Quad b;
          for (int k = 0; k < 4; ++k) b.v[k] = detail::to_bf16(q.v[k]);
          *reinterpret_cast<Bf16Quad*>(&out(r, j)) = b;
        });
    return out;
  }
  detail::for_each_element(
      space, label, rows, cols, KOKKOS_LAMBDA(long r, long j) { out(r, j) = detail::to_bf16(m(r, j)); });
  return out;
}

// Rows [begin, end) of the weight round_weights rounded into operands->*weight, or an empty matrix
// where it did not (no operands, or not rounded).
Bf16Matrix rounded_rows(Bf16Operands const* operands, Bf16Matrix Bf16Operands::*weight, long begin, long end) {
  if (operands == nullptr || (operands->*weight).extent(0) < static_cast<size_t>(end)) return Bf16Matrix();
  return Kokkos::subview(operands->*weight, std::make_pair(begin, end), Kokkos::ALL);
}

// c = a b^T in the given precision; TF32 only around this one call (the router's and the DNA's
// GEMMs stay FP32). b_rounded: b in BF16 already (round_weights), or empty.
void gemm_nt(ExecSpace const& space, TokenMatrix const& a, TokenMatrix const& b, TokenMatrix const& c,
             GemmPrecision precision, Bf16Operands* operands, Bf16Matrix const& b_rounded = Bf16Matrix()) {
  switch (precision) {
    case GemmPrecision::fp32:
      detail::gemm(space, "N", "T", 1.0f, a, b, 0.0f, c);
      return;
    case GemmPrecision::tf32:
      require(tf32_available(), "Config.tf32_projections", "TF32 needs a CUDA build whose Kokkos Kernels calls cuBLAS");
      require(detail::with_tf32_math([&] { detail::gemm(space, "N", "T", 1.0f, a, b, 0.0f, c); }), "cuBLAS",
              "cannot switch the math mode to TF32");
      return;
    case GemmPrecision::bf16: {
      Bf16Operands own;
      Bf16Operands& o = operands ? *operands : own;
      Bf16Matrix const weight =
          b_rounded.data() != nullptr ? b_rounded : rounded(space, b, o.weight, "proteus::projection::weight_bf16");
      detail::gemm_bf16_nt(space, rounded(space, a, o.rows, "proteus::projection::rows_bf16"), weight, c);
      return;
    }
  }
}
}  // namespace

void round_weights(ExecSpace const& space, Weights const& w, Bf16Operands& operands) {
  rounded(space, w.qkv_weight, operands.qkv_weight, "proteus::projection::qkv_weight_bf16");
  rounded(space, w.out_weight, operands.out_weight, "proteus::projection::out_weight_bf16");
}

void project_q(ExecSpace const& space, TokenMatrix const& x, Weights const& w, TokenMatrix const& q,
               GemmPrecision precision, Bf16Operands* operands) {
  long const e = static_cast<long>(w.out_weight.extent(0));
  TokenMatrix const wq = Kokkos::subview(w.qkv_weight, std::make_pair(0L, e), Kokkos::ALL);
  gemm_nt(space, x, wq, q, precision, operands, rounded_rows(operands, &Bf16Operands::qkv_weight, 0, e));
}

void project_kv(ExecSpace const& space, TokenMatrix const& x, Weights const& w, TokenMatrix const& kv,
                GemmPrecision precision, Bf16Operands* operands) {
  long const e = static_cast<long>(w.out_weight.extent(0));
  TokenMatrix const wkv = Kokkos::subview(w.qkv_weight, std::make_pair(e, 3 * e), Kokkos::ALL);
  gemm_nt(space, x, wkv, kv, precision, operands, rounded_rows(operands, &Bf16Operands::qkv_weight, e, 3 * e));
}

void project_output(ExecSpace const& space, TokenMatrix const& ctx, Weights const& w, TokenMatrix const& y,
                    GemmPrecision precision, Bf16Operands* operands) {
  project_output_unbiased(space, ctx, w, y, precision, operands);
  add_bias(space, y, w.out_bias, "proteus::projection::out_bias");
}

void project_output_unbiased(ExecSpace const& space, TokenMatrix const& ctx, Weights const& w, TokenMatrix const& y,
                             GemmPrecision precision, Bf16Operands* operands) {
  long const e = static_cast<long>(w.out_weight.extent(0));
  gemm_nt(space, ctx, w.out_weight, y, precision, operands, rounded_rows(operands, &Bf16Operands::out_weight, 0, e));
}

void project_output_backward(ExecSpace const& space, TokenMatrix const& ctx, TokenMatrix const& dy, Weights const& w,
                             TokenMatrix const& dctx, Gradients const& grads) {
  detail::gemm(space, "N", "N", 1.0f, dy, w.out_weight, 0.0f, dctx);
  detail::gemm(space, "T", "N", 1.0f, dy, ctx, 0.0f, grads.out_weight);
}

void project_q_backward(ExecSpace const& space, TokenMatrix const& xq, TokenMatrix const& dq, Weights const& w,
                        TokenMatrix const& dxq, Gradients const& grads) {
  long const e = static_cast<long>(w.out_weight.extent(0));
  TokenMatrix const wq = Kokkos::subview(w.qkv_weight, std::make_pair(0L, e), Kokkos::ALL);
  TokenMatrix const gq = Kokkos::subview(grads.qkv_weight, std::make_pair(0L, e), Kokkos::ALL);
  detail::gemm(space, "N", "N", 1.0f, dq, wq, 0.0f, dxq);
  detail::gemm(space, "T", "N", 1.0f, dq, xq, 0.0f, gq);
}

void project_kv_backward(ExecSpace const& space, TokenMatrix const& x, TokenMatrix const& dkv, Weights const& w,
                         TokenMatrix const& dx, Gradients const& grads) {
  long const e = static_cast<long>(w.out_weight.extent(0));
  TokenMatrix const wkv = Kokkos::subview(w.qkv_weight, std::make_pair(e, 3 * e), Kokkos::ALL);
  TokenMatrix const gkv = Kokkos::subview(grads.qkv_weight, std::make_pair(e, 3 * e), Kokkos::ALL);
  detail::gemm(space, "N", "N", 1.0f, dkv, wkv, 0.0f, dx);
  detail::gemm(space, "T", "N", 1.0f, dkv, x, 0.0f, gkv);
}

void column_sums(ExecSpace const& space, TokenMatrix const& m, TokenVector const& out) {
  TokenVector partials;
  column_sums(space, m, out, partials);
}

void column_sums(ExecSpace const& space, TokenMatrix const& m, TokenVector const& out, TokenVector& partials) {
  long const rows = static_cast<long>(m.extent(0)), cols = static_cast<long>(m.extent(1));
  long const block = ordered_sum_block(rows);
  long const blocks = (rows + block - 1) / block;
  // Stage 1: each block of rows, in row order (blocks x cols threads, neighbours read neighbouring
  // columns); stage 2: the blocks, in block order. A fixed association: the same sums on every
  // device and in every run (one thread per column walking every row left all but cols threads idle).
  TokenVector const flat = detail::first_rows(partials, "proteus::projection::column_partials", blocks * cols);
  Kokkos::View<float**, Kokkos::LayoutRight, MemSpace, Kokkos::MemoryUnmanaged> const partial(flat.data(), blocks, cols);
  detail::for_each_element(
      space, "proteus::projection::column_partials", blocks, cols, KOKKOS_LAMBDA(long k, long j) {
        long const end = (k + 1) * block < rows ? (k + 1) * block : rows;
        float s = 0.0f;
        for (long r = k * block; r < end; ++r) s += m(r, j);
        partial(k, j) = s;
      });
  Kokkos::parallel_for(
      "proteus::projection::column_sums", RangePolicy(space, 0, cols), KOKKOS_LAMBDA(long j) {
        float s = 0.0f;
        for (long k = 0; k < blocks; ++k) s += partial(k, j);
        out(j) = s;
      });
}

}  // namespace proteus

// The drop-in module's backward: from dL/dy to dL/dx and the gradients of the Q/K/V and output
// projections, through the attention the forward ran (its kept tokens, heads, shortlists and DNA
// lists are constants here). Keys, values, queries and contexts are recomputed from x, which costs
// two GEMMs and one attention pass instead of holding [N x 3E] floats between the calls.
#include <string>

#include "proteus/attention.hpp"
#include "proteus/gating.hpp"
#include "proteus/router.hpp"
#include "proteus/detail/element_range.hpp"
#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/detail/workspace.hpp"
#include "proteus/error.hpp"
#include "proteus/multihead_attention.hpp"
#include "proteus/rope.hpp"

namespace proteus {

namespace {

using LongVector = Kokkos::View<long*, MemSpace>;

// m(source(i), :) += rows(i, :); every target row appears once in source (deterministic).
void scatter_add_rows(ExecSpace const& space, TokenMatrix const& rows, LongVector const& source, TokenMatrix const& m) {
  detail::for_each_element(
      space, "proteus::module::backward::scatter_add", static_cast<long>(rows.extent(0)),
      static_cast<long>(rows.extent(1)), KOKKOS_LAMBDA(long i, long j) { m(source(i), j) += rows(i, j); });
}

// Router gradient: dweight(token, h) = dctx . ctx_unscaled over the head's columns of each active
// row, then dctx scaled as the forward scaled the context (each (token, head) has one row).
void head_weight_gradient(ExecSpace const& space, detail::ActiveRows const& rows, GateMatrix const& weight,
                          TokenMatrix const& ctx_unscaled, TokenMatrix const& dctx, GateMatrix const& dweight,
                          long tokens) {
  int const heads = static_cast<int>(weight.extent(1));
  int const d = static_cast<int>(dctx.extent(1)) / heads;
  auto row_head = rows.head;
  auto row_token = rows.token;
  auto row_query = rows.query;
  Kokkos::parallel_for(
      "proteus::module::backward::head_weight", RangePolicy(space, 0, rows.rows),
      KOKKOS_LAMBDA(long r) {
        int const bh = row_head(r), h = bh % heads;
        long const q = row_query(r), t = (bh / heads) * tokens + row_token(r);
        float dot = 0.0f;
        for (int j = 0; j < d; ++j) dot += dctx(q, h * d + j) * ctx_unscaled(q, h * d + j);
        dweight(t, h) = dot;
        for (int j = 0; j < d; ++j) dctx(q, h * d + j) *= weight(t, h);
      });
}

}  // namespace

// Keys and values of every token in the module's K|V buffer, the kept rows' queries, and their
// contexts with the rows' softmax statistics, as the training forward computed them (FP32): what
// the forward left in the module's buffers (`attended`: all of it; else K|V unless another call
// came between), the rest computed again.
detail::AttendedRows CausalGeneticMultiheadAttention::forward_attention(ExecSpace const& space,
                                                                        TrainingState const& state,
                                                                        detail::ActiveRows const& rows, bool attended,
                                                                        TokenMatrix& q) {
  Config const& c = config_;
  int const e = c.embed_dim, heads = c.num_heads;
  long const n = static_cast<long>(state.x.extent(0)), nq = rows.queries;
  TokenVector const bias_q = Kokkos::subview(weights_.qkv_bias, std::make_pair(0, e));
  TokenVector const bias_k = Kokkos::subview(weights_.qkv_bias, std::make_pair(e, 2 * e));
  bool const kept = state.call > 0 && work_.kv_call == state.call && static_cast<long>(work_.kv.extent(0)) == n;
  TokenMatrix const& kv = detail::reuse(work_.kv, "proteus::kv", n, 2 * e);
  if (!kept) {  // another call overwrote the forward's K|V since
    project_kv(space, state.x, weights_, kv, GemmPrecision::fp32);
    bias_and_rope(space, kv, bias_k, state.positions, e, heads, 1, c.rope, c.rope_base, &work_.rope_turns);
  }
  detail::AttendedRows out;
  out.value_bias = Kokkos::subview(weights_.qkv_bias, std::make_pair(2 * e, 3 * e));
  out.ctx = detail::first_rows(work_.ctx, "proteus::context", nq, e);
  out.softmax.max = detail::first_rows(work_.row_max, "proteus::backward::row_max", rows.rows);
  out.softmax.sum = detail::first_rows(work_.row_sum, "proteus::backward::row_sum", rows.rows);
  q = detail::first_rows(work_.q, "proteus::q", nq, e);
  if (nq == 0 || attended) return out;
  TokenMatrix const xq = detail::first_rows(work_.gathered, "proteus::kept_rows", nq, e);
  PositionVector const pos_q = detail::first_rows(work_.kept_positions, "proteus::kept_positions", nq);
  detail::gather_rows(space, state.x, rows.query_source, xq, state.positions, pos_q);
  project_q(space, xq, weights_, q, GemmPrecision::fp32);
  bias_and_rope(space, q, bias_q, pos_q, e, heads, 1, c.rope, c.rope_base, &work_.rope_turns);
  Kokkos::deep_copy(space, out.ctx, 0.0f);  // columns of inactive heads stay zero
  detail::attend(space, state.plan, q, kv, out.value_bias, rows, state.dna_lists, heads, out.ctx, {}, out.softmax);
  return out;
}

void CausalGeneticMultiheadAttention::backward(ExecSpace const& space, TrainingState& state, TokenMatrix const& dy,
                                               TokenMatrix const& dx, Gradients const& grads) {
  detail::ScopedRegion region("proteus::module::backward");
  Config const& c = config_;
  require(state.ready, "backward",
          "needs a training forward (run_training) first, and runs once per forward");
  TokenMatrix const& x = state.x;
  long const n = static_cast<long>(x.extent(0));
  int const e = c.embed_dim, heads = c.num_heads, batch = state.batch;
  long const tokens = n / batch;
  require(dy.extent(0) == x.extent(0) && dy.extent(1) == x.extent(1), "dy",
          "shape [" + std::to_string(dy.extent(0)) + " x " + std::to_string(dy.extent(1)) +
              "] differs from the forward's input [" + std::to_string(n) + " x " + std::to_string(e) + "]");
  require(dx.extent(0) == x.extent(0) && dx.extent(1) == x.extent(1), "dx", "must have the shape of x");
  require(grads.qkv_weight.extent(0) == weights_.qkv_weight.extent(0) &&
              grads.router_weight.extent(0) == weights_.router_weight.extent(0),
          "grads", "must be Gradients::allocate(embed_dim, num_gates)");
  bool const routed = c.router_gradient;
  require(!routed || state.head_weight.extent(0) == x.extent(0), "backward",
          "the training forward ran without Config::router_gradient");
  check_finite(space, dy, "dy");
  state.ready = false;

  // Buffers: K|V, then dK|dV in place (head widths 8-64); the context, then dq; the kept rows of
  // x, then of dy, then of x again; dcontext, then the kept rows' dx.
  bool const kept = state.call > 0 && work_.attended_call == state.call;  // the forward's attention is there
  detail::ActiveRows const rows =
      kept ? work_.attended_rows
           : detail::compact_active_rows(space, state.head_mask, state.keep, state.every_head, batch, tokens,
                                         state.row_begin, state.row_end, work_.rows);
  long const nq = rows.queries;
  TokenMatrix q;
  detail::AttendedRows const attended = forward_attention(space, state, rows, kept, q);
  TokenMatrix const& kv = work_.kv;

  // Output projection: every row's dy reaches the output bias; rows with a query reach W_out (which
  // read the contexts scaled by the heads' weights under the router gradient).
  TokenMatrix ctx_out = attended.ctx;
  if (routed && nq > 0) {
    ctx_out = TokenMatrix("proteus::backward::context_scaled", nq, e);
    Kokkos::deep_copy(space, ctx_out, attended.ctx);
    detail::scale_active_heads(space, rows, state.head_weight, ctx_out, tokens);
  }
  column_sums(space, dy, grads.out_bias, work_.column_partials);
  TokenMatrix const dyq = detail::first_rows(work_.gathered, "proteus::kept_rows", nq, e);
  TokenMatrix const dctx = detail::first_rows(work_.dcontext, "proteus::backward::dcontext", nq, e);
  detail::gather_rows(space, dy, rows.query_source, dyq);
  if (nq > 0)
    project_output_backward(space, ctx_out, dyq, weights_, dctx, grads);
  else
    Kokkos::deep_copy(space, grads.out_weight, 0.0f);
  ctx_out = TokenMatrix();
  GateMatrix dweight;
  if (routed) {
    dweight = GateMatrix("proteus::backward::dhead_weight", n, heads);
    head_weight_gradient(space, rows, state.head_weight, attended.ctx, dctx, dweight, tokens);
  }

  // Attention, then RoPE turned back, then the Q/K/V projections.
  TokenMatrix const dq = attended.ctx;  // attend_backward reads the context before it writes dq
  TokenMatrix dkv = kv;
  if (!detail::backward_in_place(e / heads)) dkv = TokenMatrix("proteus::backward::dkv", n, 2 * e);
  detail::attend_backward(space, state.plan, q, kv, rows, state.dna_lists, heads, attended, dctx, dq, dkv,
                          work_.backward);
  work_.kv_call = work_.attended_call = 0;  // K|V holds their gradients (in place) or the next call's, ctx dq
  bias_gradients(space, state, rows, dq, dkv, grads);
  project_kv_backward(space, x, dkv, weights_, dx, grads);
  if (nq > 0) {
    TokenMatrix const xq = detail::first_rows(work_.gathered, "proteus::kept_rows", nq, e);
    detail::gather_rows(space, x, rows.query_source, xq);
    TokenMatrix const dxq = dctx;  // dcontext is spent
    project_q_backward(space, xq, dq, weights_, dxq, grads);
    scatter_add_rows(space, dxq, rows.query_source, dx);
  } else {
    Kokkos::deep_copy(space, Kokkos::subview(grads.qkv_weight, std::make_pair(0, e), Kokkos::ALL), 0.0f);
  }
  if (!routed) {
    Kokkos::deep_copy(space, grads.router_weight, 0.0f);  // routing only selects: no gradient
    return;
  }
  router_backward(space, state, dweight, dx, grads);
}

// RoPE turned back on dq and dK|dV, then the Q/K/V biases' gradients: the column sums of dq and of
// dK|dV (V's bias was added once per row, after the softmax: its gradient, sum_i dO_i over the
// active rows, is the column sum of dV because each row's weights sum to one).
void CausalGeneticMultiheadAttention::bias_gradients(ExecSpace const& space, TrainingState const& state,
                                                     detail::ActiveRows const& rows, TokenMatrix const& dq,
                                                     TokenMatrix const& dkv, Gradients const& grads) const {
  Config const& c = config_;
  int const e = c.embed_dim, heads = c.num_heads;
  long const nq = rows.queries;
  PositionVector const pos_q = detail::first_rows(work_.kept_positions, "proteus::kept_positions", nq);
  rope_backward(space, dq, pos_q, e, heads, 1, c.rope, c.rope_base, &work_.rope_turns);
  rope_backward(space, dkv, state.positions, e, heads, 1, c.rope, c.rope_base, &work_.rope_turns);
  column_sums(space, dq, Kokkos::subview(grads.qkv_bias, std::make_pair(0, e)), work_.column_partials);
  column_sums(space, dkv, Kokkos::subview(grads.qkv_bias, std::make_pair(e, 3 * e)), work_.column_partials);
}

// Head weights -> gate probabilities -> the router's probabilities -> its logits, x and W_router.
void CausalGeneticMultiheadAttention::router_backward(ExecSpace const& space, TrainingState const& state,
                                                      GateMatrix const& dweight, TokenMatrix const& dx,
                                                      Gradients const& grads) const {
  Config const& c = config_;
  long const n = static_cast<long>(state.x.extent(0));
  GateMatrix dgate("proteus::backward::dgate_probs", n, c.num_gates), drouter("proteus::backward::drouter", n, c.num_gates);
  head_weights_backward(space, dweight, state.head_weight, state.head_total, gate_to_head_, dgate);
  Routing routing;
  routing.gate_probs = state.gate_probs;
  routing.beta = state.beta;
  hybrid_route_backward(space, c, routing, dgate, drouter);
  router_probabilities_backward(space, state.x, weights_.router_weight, state.router_probs, drouter, dx,
                                grads.router_weight);
}

}  // namespace proteus

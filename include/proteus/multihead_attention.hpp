// The drop-in module: proteus::CausalGeneticMultiheadAttention mirrors torch.nn.MultiheadAttention
// (embed_dim, num_heads, batch_first; forward(query, key, value, key_padding_mask, need_weights,
// attn_mask)) for causal self-attention, and runs the Proteus stages in order:
// router -> DNA blend -> token sparsity -> gates to heads -> Q/K/V + RoPE -> shortlist attention
// -> output projection -> DNA EMA update.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "proteus/attention.hpp"
#include "proteus/config.hpp"
#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/dna.hpp"
#include "proteus/gating.hpp"
#include "proteus/head_controller.hpp"
#include "proteus/projection.hpp"
#include "proteus/shortlist.hpp"
#include "proteus/types.hpp"

namespace proteus {

// What one forward did (SPEC stage 7's statistics).
struct ForwardStats {
  long batch = 0, tokens = 0;
  double alpha = 0.0;
  std::string mode;        // "dense" or "shortlist"
  ShortlistPlan plan;
  int heads_k = 0, heads_adaptive = 0, heads_by_length = 0, heads_nucleus = 0;
  long tokens_kept = 0;
  long active_rows = 0;
  double mean_active_heads = 0.0;  // active heads per kept token
  double density = 0.0;            // active (token, head) pairs / (H * kept tokens)
  int distinct_heads = 0;
  double router_entropy = 0.0;     // mean over tokens of -sum_g p log p (blended gates)
  double mean_salience = 0.0, mean_beta = 0.0;
  long tokens_caught = 0;          // tokens with beta > 0
  int gates_updated = 0;
  double mean_candidates = 0.0;    // mean shortlist size over active rows
  // Config::head_controller only: the busiest head's fraction of rows, and the controller's
  // decision when this call completed a cooldown window (applied to the next calls).
  double max_head_density = 0.0;
  std::optional<HeadDecision> controller;
  // RunOptions::defer_statistics: tokens_kept, mean_active_heads, density, distinct_heads,
  // mean_candidates, gates_updated, router_entropy, mean_salience, mean_beta and tokens_caught are
  // still on the device (complete_statistics reads them).
  bool pending = false;
  long call = 0;  // the module call these statistics are of
};

// Options of the token-level entry point (used by the drop-in forward and the pipelines).
struct RunOptions {
  long row_begin = 0;   // only rows in [row_begin, row_end) are attended (others output bias)
  long row_end = -1;    // -1: all rows
  std::optional<bool> update_dna;  // default: Config::dna_update
  std::optional<ShortlistPlan> plan;  // replaces the alpha budget law (e.g. the second pass)
  std::optional<bool> adapt_heads;    // the head controller observes this call (default: yes)
  // Return without reading the statistics computed on the device (ForwardStats::pending): the call
  // then ends without waiting for its last kernels, so that the caller's host work overlaps them.
  // Ignored when the head controller is on (it decides from them).
  bool defer_statistics = false;
  // Count x's NaN and Inf entries on the device as the call starts and throw (naming "query") at
  // the call's first wait for the device (its first query block's sizes), before any state of the
  // module changes and before the attention: the check then adds no wait of its own (check_finite
  // waits for its count, and the device idles while the host prepares the next launches).
  bool check_input = false;
};

// What a training forward keeps for its backward. x and positions are references: the caller keeps
// them alive and unchanged until the backward. What the forward chose (kept tokens, active heads,
// the shortlist plan, DNA candidate lists) is a constant of the backward, as a top-k is in
// autograd. Keys, values, queries and contexts stay in the module's buffers for the backward unless
// another call overwrites them first, in which case the backward recomputes them (see
// docs/training.md). Held beyond x: N bytes of keep mask, N*H of head mask, the DNA lists.
// A state passed to run_training again keeps its copies' allocations when the shapes match (no
// device allocation per step); as the module's own buffers, it assumes that the previous backward
// with it was issued on the same execution space instance, or has finished.
struct TrainingState {
  TokenMatrix x;            // [B*T x E]
  PositionVector positions; // [B*T]
  int batch = 0;
  long row_begin = 0, row_end = 0;
  MaskVector keep;          // [B*T] (a copy: the module's own buffers are reused by later calls)
  MaskMatrix head_mask;     // [B*T x H] (a copy)
  ShortlistPlan plan;
  bool every_head = false;
  CandidateLists dna_lists;
  long call = 0;            // which training forward this is (the module's K|V buffer may still hold its K|V)
  // Config::router_gradient only (copies): the router's and the blended gate probabilities, the
  // blend strength, and the heads' weights.
  GateMatrix router_probs, gate_probs, head_weight;
  TokenVector beta, head_total;
  bool ready = false;       // set by run_training, cleared by backward: one backward per forward
};

// Routing of a block of tokens without attention (what the chunk pipeline scores with).
struct RoutingResult {
  Routing routing;
  MaskVector keep;   // [N] token keep mask
  TokenKeyBuffers selection;  // the token selection's keys (with selection.ranked, its tokens ranked)
  double alpha = 0.0;
  long tokens_kept = 0;
};

namespace detail {
// Scratch tensors a module keeps between calls of the same shape, so that repeated forwards
// (and chunks) do not pay for allocation and first touch again.
struct ModuleWorkspace {
  GateByEmbed routing_weights;   // [2G x E]: W_router over the DNA prototypes (copied each call with DNA)
  GateMatrix routing_scores;     // [N x 2G] x routing_weights^T: the router's logits (probabilities with
                                 // Config::router_gradient), then the cosines' numerators; [N x G] without DNA
  TokenVector token_norms;       // DNA similarity's scratch
  GateVector prototype_norms;
  GateVector usage_bias;         // hybrid_route's usage term
  TokenKeyBuffers token_keys;  // token selection's sort keys and sort scratch
  Routing routing;               // of the current call
  MaskVector keep;
  GateMatrix head_probs;         // [B*T x H]
  MaskMatrix head_mask;
  GateMatrix head_weight;        // [B*T x H] (router_gradient)
  TokenVector head_total;        // [B*T] (router_gradient)
  PositionVector positions;      // forward's, [B*T]
  TokenMatrix kv;                // [B*T x 2E]
  Bf16HeadRows kv_bf16;          // [B*H x T x 2D] with Config::kv_bf16 (kv is then not kept)
  TokenMatrix kv_stage;          // [kv_stage_rows x 2E]: kv_bf16's rows in FP32 before rounding
  TokenMatrix rope_turns;        // [rows x D]: cos and sin of each row's RoPE angles (bias_and_rope)
  Bf16Operands bf16_operands;    // the projections' operands rounded to BF16 (Config::bf16_projections)
  long training_calls = 0;       // training forwards so far
  long kv_call = 0;              // the training forward whose FP32 K|V kv holds (0: none)
  TokenMatrix q, ctx, gathered;  // [query rows of a block x E]
  PositionVector kept_positions;
  Kokkos::View<int*, MemSpace> candidate_count;
  DnaStatistics dna_stats;          // the DNA EMA's routed sums of the current call
  DnaStatisticsScratch dna_scratch;
  // The call's statistics on the device, summed over its query blocks and read once per call:
  // [H + 5] rows of each head, candidates, one block's candidates, gates updated, active (token,
  // head) pairs, kept tokens; routing's [4] entropy, salience, beta and tokens caught. calls: the module's calls
  // so far (the statistics held are the last one's).
  Kokkos::View<long*, MemSpace> call_counts;
  Kokkos::View<long*, HostSpace> call_counts_host;
  Kokkos::View<double*, MemSpace> routing_sums;
  Kokkos::View<double*, HostSpace> routing_sums_host;
  long calls = 0;
  // RunOptions::check_input: the input's NaN/Inf count, on the device and copied to pinned host
  // memory without waiting; pending until a wait for the device makes the copy readable.
  Kokkos::View<long, MemSpace> nonfinite;
  Kokkos::View<long, PinnedHostSpace> nonfinite_host;
  bool input_check_pending = false;
  // With DNA on, the tokens whose norm (DNA similarity's) is NaN or Inf are counted instead of
  // x's entries: a NaN or Inf entry makes its token's norm one, and the norms are a pass over x
  // the routing makes anyway. A norm can also overflow with finite entries: then x is counted.
  bool input_check_on_norms = false;
  ActiveRowsBuffers rows;
  // The training forward (0: none) whose attention the backward takes as it is instead of
  // recomputing it: its active rows, their queries q, contexts ctx, softmax statistics row_max /
  // row_sum and query positions kept_positions. Left by a training forward that attended in one
  // block, in FP32, without the router gradient (whose contexts are scaled in place); any other
  // call overwrites them.
  long attended_call = 0;
  ActiveRows attended_rows;
  // The backward's: softmax statistics of the active rows, dcontext, the column sums' partial sums,
  // and the attention backward's scratch.
  TokenVector row_max, row_sum, column_partials;
  TokenMatrix dcontext;
  BackwardBuffers backward;
};

// out(i, :) = m(source(i), :), and out_positions(i) = positions(source(i)) when given: the rows of
// the kept queries (forward, backward).
void gather_rows(ExecSpace const& space, TokenMatrix const& m, Kokkos::View<long*, MemSpace> const& source,
                 TokenMatrix const& out, PositionVector const& positions = {}, PositionVector const& out_positions = {});

// What one call decided before any attention (stages 1-4 and 6a): routing, kept tokens, active
// heads, the shortlist plan and the DNA candidate lists.
struct CallPlan {
  RoutingResult routed;   // routed.tokens_kept: how many tokens are kept at most (counted on the device)
  MaskMatrix head_mask;   // [B*T x H]
  GateMatrix head_weight; // [B*T x H] renormalised head probabilities (router_gradient), else empty
  TokenVector head_total; // [B*T] their normaliser
  ShortlistPlan shortlist;
  bool every_head = false;  // every head of every kept token attends (dense, or alpha = 0)
  CandidateLists dna_lists;
};
}  // namespace detail

class CausalGeneticMultiheadAttention {
 public:
  using PaddingMask = Kokkos::View<std::uint8_t**, Kokkos::LayoutRight, MemSpace>;  // [B x T], 1 = pad
  using AttnMask = Kokkos::View<std::uint8_t**, Kokkos::LayoutRight, MemSpace>;     // [T x T], 1 = masked

  // Weights and DNA are initialised on `space` from config.seed.
  CausalGeneticMultiheadAttention(ExecSpace const& space, int embed_dim, int num_heads, bool batch_first = true,
                                  Config config = {});
  CausalGeneticMultiheadAttention(ExecSpace const& space, Config const& config);

  // query/key/value: [B, T, E] (batch_first) or [T, B, E]. Self-attention only: key and value
  // must be the query itself (or empty). attn_mask, if given, must be the standard causal mask.
  // key_padding_mask zeroes padded tokens' inputs and outputs. need_weights returns statistics
  // (weights of a sparse attention over the whole sequence are not materialised).
  std::pair<BatchTensor, std::optional<ForwardStats>> forward(
      ExecSpace const& space, BatchTensor const& query, BatchTensor const& key = {},
      BatchTensor const& value = {}, PaddingMask const& key_padding_mask = {},
      bool need_weights = false, AttnMask const& attn_mask = {});

  // Token-level forward: x [B*T x E] (batch rows stacked), positions [B*T] original positions,
  // y [B*T x E] written. x is not checked for NaN or Inf here (forward() and the Python module
  // check it; call check_finite first where x comes from outside).
  ForwardStats run(ExecSpace const& space, TokenMatrix const& x, int batch,
                   PositionVector const& positions, TokenMatrix const& y, RunOptions const& options = {});

  // run() that also fills `state` for backward(). The DNA EMA update (if on) runs here, once per
  // training step; backward() never touches the DNA.
  ForwardStats run_training(ExecSpace const& space, TokenMatrix const& x, int batch, PositionVector const& positions,
                            TokenMatrix const& y, TrainingState& state, RunOptions const& options = {});

  // Reads the statistics of a call made with RunOptions::defer_statistics into st (waits for that
  // call's kernels); nothing to do when st is complete. Throws when a later call of the module has
  // replaced them.
  void complete_statistics(ExecSpace const& space, ForwardStats& st) const;

  // Gradients of a loss L given dy = dL/dy [B*T x E] for the forward recorded in `state`: writes
  // dx = dL/dx [B*T x E] and every parameter's gradient into grads (written, not accumulated).
  // The router gets no gradient (upstream's behaviour: routing is a selection); its gradient is
  // written as zero. Deterministic: two calls give bit-identical results.
  void backward(ExecSpace const& space, TrainingState& state, TokenMatrix const& dy, TokenMatrix const& dx,
                Gradients const& grads);

  // Stages 1-3 only: routing and token keep mask of x [B*T x E] with the current DNA.
  RoutingResult route(ExecSpace const& space, TokenMatrix const& x, int batch) const;
  // The same into r, whose buffers are reused where their shapes match (a loop over chunks
  // allocates them once, and frees nothing while the device works).
  void route(ExecSpace const& space, TokenMatrix const& x, int batch, RoutingResult& r) const;
  // The same without waiting for the device: the kept tokens are counted into kept_count on the
  // device, and r.tokens_kept is how many are kept at most. For one batch row with token sparsity,
  // r.selection ranks the tokens (start_nucleus takes it instead of sorting them again).
  void route(ExecSpace const& space, TokenMatrix const& x, int batch, RoutingResult& r,
             Kokkos::View<long, MemSpace> const& kept_count) const;

  Config const& config() const { return config_; }
  Weights const& weights() const { return weights_; }
  DnaState const& dna() const { return dna_; }
  IndexVector const& gate_to_head() const { return gate_to_head_; }
  HeadGates const& head_gates() const { return head_gates_; }
  // Copies the given tensors in (shapes are checked).
  void set_weights(ExecSpace const& space, Weights const& w);
  void set_dna(ExecSpace const& space, DnaState const& dna);
  // Uses the given tensors as the module's weights or DNA from now on, in place (no copy; shapes
  // are checked): the EMA updates `dna` itself. The caller keeps them alive while the module uses
  // them. The Python extension shares PyTorch's parameters and buffers this way.
  void share_weights(Weights const& w);
  void share_dna(DnaState const& dna);

 private:
  Config config_;
  std::optional<HeadController> controller_;  // Config::head_controller
  int base_linear_L_ = 0;                      // linear_L before the controller's scaling
  Weights weights_;
  DnaState dna_;
  IndexVector gate_to_head_;
  HeadGates head_gates_;  // gate_to_head_ inverted, for the head probabilities
  mutable detail::ModuleWorkspace work_;
  void start_controller();
  // The controller observes this call's density; a decision changes the head range and linear_L.
  void adapt_heads(ForwardStats& st);
  // Stages 1-3 into r.routing and r.keep, which must have one entry per row of x.
  // kept_count given: the kept tokens are counted into it on the device, and r.tokens_kept is how
  // many are kept at most (nothing waits); else r.tokens_kept is their number. The selection's sort
  // keys go to `selection` (the result's own for route, the workspace's for a forward).
  void route_into(ExecSpace const& space, TokenMatrix const& x, int batch, RoutingResult& r,
                  Kokkos::View<long, MemSpace> const& kept_count, TokenKeyBuffers& selection) const;
  void start_statistics(ExecSpace const& space, ForwardStats& st);
  // RunOptions::check_input: start_input_check counts on the device (count_input_check_norms
  // after the routing, with DNA on); finish_input_check, called after a wait for the device,
  // throws if x holds NaN or Inf.
  void start_input_check(ExecSpace const& space, TokenMatrix const& x, bool check);
  void count_input_check_norms(ExecSpace const& space, long n);
  void finish_input_check(ExecSpace const& space, TokenMatrix const& x);
  ForwardStats run_impl(ExecSpace const& space, TokenMatrix const& x, int batch, PositionVector const& positions,
                        TokenMatrix const& y, RunOptions const& options, TrainingState* state);
  // Stages 1-4 and 6a of one call, with their statistics in st.
  detail::CallPlan plan_call(ExecSpace const& space, TokenMatrix const& x, int batch, RunOptions const& options,
                             ForwardStats& st);
  // K|V of every token (stage 5's keys and values) into work_.kv, or into work_.kv_bf16's head rows
  // a block of rows at a time with Config::kv_bf16.
  void project_keys_values(ExecSpace const& space, TokenMatrix const& x, int batch, PositionVector const& positions);
  // Stages 5-7 for query rows [t0, t0 + len) of every batch row (K|V in work_.kv); adds the block's
  // rows per head and candidates to the call's statistics on the device. keep_attended: also the
  // rows' softmax statistics and query positions, and the rows in work_.attended_rows.
  void attend_block(ExecSpace const& space, detail::CallPlan const& call, TokenMatrix const& x, int batch,
                    PositionVector const& positions, TokenMatrix const& y, long t0, long len, ForwardStats& st,
                    bool keep_attended);
  // Backward helpers (multihead_attention_backward.cpp).
  detail::AttendedRows forward_attention(ExecSpace const& space, TrainingState const& state,
                                         detail::ActiveRows const& rows, bool attended, TokenMatrix& q);
  void bias_gradients(ExecSpace const& space, TrainingState const& state, detail::ActiveRows const& rows,
                      TokenMatrix const& dq, TokenMatrix const& dkv, Gradients const& grads) const;
  void router_backward(ExecSpace const& space, TrainingState const& state, GateMatrix const& dweight,
                       TokenMatrix const& dx, Gradients const& grads) const;
};

// A module with `config` (its own token sparsity, alpha, DNA switches) that shares the weights
// of `model` (copied) and starts from `dna`: the pipeline's chunk scorer, buffer pass and second
// pass are each one of these.
CausalGeneticMultiheadAttention model_like(ExecSpace const& space, CausalGeneticMultiheadAttention const& model,
                                           Config const& config, DnaState const& dna);

// Throws proteus::Error naming `name` if v holds NaN or Inf.
void check_finite(ExecSpace const& space, TokenMatrix const& v, std::string const& name);
// The same in two steps, so that the check shares a wait with other work: count_nonfinite counts
// v's NaN and Inf entries into `count` on the device (nothing waits); require_finite throws
// naming `name` when the count, read after a wait, is not 0.
void count_nonfinite(ExecSpace const& space, TokenMatrix const& v, Kokkos::View<long, MemSpace> const& count);
void require_finite(long count, std::string const& name);

}  // namespace proteus

// The drop-in module: argument checks, layout handling, and the stage sequence of one forward.
#include "proteus/multihead_attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "proteus/attention.hpp"
#include "proteus/detail/element_range.hpp"
#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/detail/workspace.hpp"
#include "proteus/error.hpp"
#include "proteus/gating.hpp"
#include "proteus/rope.hpp"
#include "proteus/router.hpp"

namespace proteus {

using detail::first_rows;
using detail::reuse;

namespace {
GemmPrecision projection_precision(Config const& c) {
  if (c.tf32_projections) return GemmPrecision::tf32;
  return c.bf16_projections ? GemmPrecision::bf16 : GemmPrecision::fp32;
}

Config with_shape(Config c, int embed_dim, int num_heads, bool batch_first) {
  c.embed_dim = embed_dim;
  c.num_heads = num_heads;
  c.batch_first = batch_first;
  return c;
}

std::string shape_of(BatchTensor const& t) {
  return "[" + std::to_string(t.extent(0)) + ", " + std::to_string(t.extent(1)) + ", " + std::to_string(t.extent(2)) +
         "]";
}

// work_.call_counts holds each head's active rows (entries 0..H-1), then these, at H + slot.
namespace call_count {
constexpr int candidates = 0, block_candidates = 1, gates_updated = 2, head_pairs = 3, kept = 4, slots = 5;
}

// Sums over tokens of the routing statistics, reduced in one pass.
struct RoutingSums {
  double entropy, salience, beta, caught;
};

// Sums of RoutingSums, into a host value or (as Kokkos::Sum) into a view in Space.
template <class Space>
struct SumRouting {
  using reducer = SumRouting;
  using value_type = RoutingSums;
  using result_view_type = Kokkos::View<value_type, Space, Kokkos::MemoryUnmanaged>;
  result_view_type value;
  bool references_scalar_v;
  KOKKOS_INLINE_FUNCTION SumRouting(value_type& v) : value(&v), references_scalar_v(true) {}
  KOKKOS_INLINE_FUNCTION SumRouting(result_view_type const& v) : value(v), references_scalar_v(false) {}
  KOKKOS_INLINE_FUNCTION void init(value_type& s) const { s = {0.0, 0.0, 0.0, 0.0}; }
  KOKKOS_INLINE_FUNCTION void join(value_type& dst, value_type const& src) const {
    dst.entropy += src.entropy;
    dst.salience += src.salience;
    dst.beta += src.beta;
    dst.caught += src.caught;
  }
  KOKKOS_INLINE_FUNCTION value_type& reference() const { return *value.data(); }
  KOKKOS_INLINE_FUNCTION result_view_type view() const { return value; }
  KOKKOS_INLINE_FUNCTION bool references_scalar() const { return references_scalar_v; }
};
// The drop-in's argument checks: shapes, self-attention only, the causal mask, padding shape.
void check_forward_inputs(ExecSpace const& space, Config const& c, BatchTensor const& query, BatchTensor const& key,
                          BatchTensor const& value, CausalGeneticMultiheadAttention::PaddingMask const& key_padding_mask,
                          CausalGeneticMultiheadAttention::AttnMask const& attn_mask) {
  require(query.data() != nullptr, "query", "is empty");
  require(static_cast<int>(query.extent(2)) == c.embed_dim, "query",
          "shape " + shape_of(query) + " does not end in embed_dim " + std::to_string(c.embed_dim));
  for (auto const* other : {&key, &value}) {
    char const* name = other == &key ? "key" : "value";
    require(other->data() == nullptr || other->data() == query.data(), name,
            "cross-attention is not supported: pass the query itself (or nothing) as key and value");
    require(other->data() == nullptr || (other->extent(0) == query.extent(0) && other->extent(1) == query.extent(1) &&
                                         other->extent(2) == query.extent(2)),
            name, "shape " + shape_of(*other) + " differs from query " + shape_of(query));
  }
  int const batch = static_cast<int>(c.batch_first ? query.extent(0) : query.extent(1));
  long const tokens = static_cast<long>(c.batch_first ? query.extent(1) : query.extent(0));
  require(batch > 0 && tokens > 0, "query", "shape " + shape_of(query) + " has no tokens");
  if (attn_mask.data() != nullptr) {
    require(static_cast<long>(attn_mask.extent(0)) == tokens && static_cast<long>(attn_mask.extent(1)) == tokens,
            "attn_mask", "must be [T x T] with T = " + std::to_string(tokens));
    long wrong = 0;
    Kokkos::parallel_reduce(
        "proteus::check_attn_mask", RangePolicy(space, 0, tokens * tokens),
        KOKKOS_LAMBDA(long i, long& w) {
          long const r = i / tokens, col = i % tokens;
          w += (attn_mask(r, col) != 0) != (col > r) ? 1 : 0;
        },
        wrong);
    require(wrong == 0, "attn_mask", "only the standard causal mask (masked exactly above the diagonal) is supported");
  }
  bool const padded = key_padding_mask.data() != nullptr;
  if (padded)
    require(static_cast<int>(key_padding_mask.extent(0)) == batch &&
                static_cast<long>(key_padding_mask.extent(1)) == tokens,
            "key_padding_mask", "must be [B x T]");

}

}  // namespace

namespace {
using detail::FloatQuad;

// bad = the number of NaN and Inf entries of v: a long (the reduction waits for it) or a device
// scalar (it does not).
template <class Count>
void nonfinite_into(ExecSpace const& space, TokenMatrix const& v, Count& bad) {
  float const* data = v.data();
  long const size = static_cast<long>(v.size());
  if (v.span_is_contiguous() && reinterpret_cast<std::uintptr_t>(data) % alignof(FloatQuad) == 0) {
    // One flat pass, four entries per work item and then the last size % 4 one each: a quarter of
    // the work items, at the memory's bandwidth (one entry per item ran at about half of it).
    long const quads = size / 4;
    auto const* q = reinterpret_cast<FloatQuad const*>(data);
    Kokkos::parallel_reduce(
        "proteus::check_finite", RangePolicy(space, 0, quads + size % 4),
        KOKKOS_LAMBDA(long i, long& n) {
          if (i >= quads) {
            n += detail::kmath::isfinite(data[3 * quads + i]) ? 0 : 1;  // entry 4 quads + (i - quads)
            return;
          }
          FloatQuad const f = q[i];
          for (int k = 0; k < 4; ++k) n += detail::kmath::isfinite(f.v[k]) ? 0 : 1;
        },
        bad);
  } else if (v.span_is_contiguous()) {  // one flat pass, without an index division per entry
    Kokkos::parallel_reduce(
        "proteus::check_finite", RangePolicy(space, 0, size),
        KOKKOS_LAMBDA(long i, long& n) { n += detail::kmath::isfinite(data[i]) ? 0 : 1; }, bad);
  } else {
    long const cols = static_cast<long>(v.extent(1));
    Kokkos::parallel_reduce(
        "proteus::check_finite", RangePolicy(space, 0, v.extent(0) * cols),
        KOKKOS_LAMBDA(long i, long& n) { n += detail::kmath::isfinite(v(i / cols, i % cols)) ? 0 : 1; }, bad);
  }
}

// The router's logits (or probabilities): the first `gates` columns of the routing GEMM's output.
GateColumns router_columns(GateMatrix const& scores, int gates) {
  return Kokkos::subview(scores, Kokkos::ALL, std::make_pair(0, gates));
}

// r sized for n tokens and `gates` gates: reallocated only when its shape differs.
void reuse_routing(Routing& r, long n, int gates) {
  if (r.gate_probs.extent(0) != static_cast<size_t>(n) || r.gate_probs.extent(1) != static_cast<size_t>(gates))
    r = Routing::allocate(static_cast<int>(n), gates);
}
}  // namespace

void require_finite(long count, std::string const& name) {
  require(count == 0, name, "contains " + std::to_string(count) + " NaN or Inf value(s)");
}

void count_nonfinite(ExecSpace const& space, TokenMatrix const& v, Kokkos::View<long, MemSpace> const& count) {
  nonfinite_into(space, v, count);
}

void check_finite(ExecSpace const& space, TokenMatrix const& v, std::string const& name) {
  long bad = 0;
  nonfinite_into(space, v, bad);
  require_finite(bad, name);
}

CausalGeneticMultiheadAttention::CausalGeneticMultiheadAttention(ExecSpace const& space, int embed_dim,
                                                                 int num_heads, bool batch_first, Config config)
    : CausalGeneticMultiheadAttention(space, with_shape(std::move(config), embed_dim, num_heads, batch_first)) {}

CausalGeneticMultiheadAttention::CausalGeneticMultiheadAttention(ExecSpace const& space, Config const& config)
    : config_(config.resolved()) {
  detail::ScopedRegion region("proteus::module::initialise");
  weights_ = Weights::allocate(config_.embed_dim, config_.num_gates);
  weights_.initialise(space, config_.seed, config_.bias);
  dna_ = DnaState::allocate(config_.num_gates, config_.embed_dim);
  dna_.initialise(space, config_.seed, config_.dna_init_scale);
  gate_to_head_ = IndexVector("proteus::gate_to_head", config_.num_gates);
  auto host = Kokkos::create_mirror_view(gate_to_head_);
  for (int g = 0; g < config_.num_gates; ++g) host(g) = config_.gate_to_head[g];
  Kokkos::deep_copy(space, gate_to_head_, host);
  head_gates_ = HeadGates::from(config_.gate_to_head, config_.num_heads);
  space.fence();  // the host mirror is freed on return
  if (config_.head_controller) start_controller();
}

void CausalGeneticMultiheadAttention::start_controller() {
  Config& c = config_;
  HeadControllerSpec spec;
  spec.target_density = c.head_target_density;
  spec.tolerance = c.head_tolerance;
  spec.cooldown = c.head_cooldown;
  spec.min_heads = c.head_controller_min;
  spec.max_heads = c.head_controller_max;
  base_linear_L_ = c.linear_L;
  // Upstream's floor of the shortlist scale: max(0.05, L_min / L).
  double const floor = std::max(0.05, static_cast<double>(c.L_min) / std::max(1, c.linear_L));
  controller_.emplace(spec, c.num_heads, c.heads_active_min, c.heads_active_max, floor);
  c.heads_active_min = controller_->heads_min();
  c.heads_active_max = controller_->heads_max();
}

void CausalGeneticMultiheadAttention::adapt_heads(ForwardStats& st) {
  st.controller = controller_->observe(st.max_head_density);
  if (!st.controller) return;
  config_.heads_active_min = st.controller->heads_min;
  config_.heads_active_max = st.controller->heads_max;
  config_.linear_L = std::max(1, static_cast<int>(std::lround(base_linear_L_ * st.controller->shortlist_scale)));
}

CausalGeneticMultiheadAttention model_like(ExecSpace const& space, CausalGeneticMultiheadAttention const& model,
                                           Config const& config, DnaState const& dna) {
  CausalGeneticMultiheadAttention like(space, config);
  like.set_weights(space, model.weights());
  like.set_dna(space, dna);
  return like;
}

namespace {
template <class A, class B>
void require_same_extents(A const& mine, B const& given, std::string const& name) {
  bool same = true;
  std::string want, got;
  for (unsigned r = 0; r < A::rank; ++r) {
    same = same && mine.extent(r) == given.extent(r);
    want += (r ? " x " : "") + std::to_string(mine.extent(r));
    got += (r ? " x " : "") + std::to_string(given.extent(r));
  }
  require(same, name, "shape [" + got + "] does not match the module's [" + want + "]");
}

void require_weights_like(Weights const& mine, Weights const& w) {
  require_same_extents(mine.qkv_weight, w.qkv_weight, "weights.qkv_weight");
  require_same_extents(mine.qkv_bias, w.qkv_bias, "weights.qkv_bias");
  require_same_extents(mine.out_weight, w.out_weight, "weights.out_weight");
  require_same_extents(mine.out_bias, w.out_bias, "weights.out_bias");
  require_same_extents(mine.router_weight, w.router_weight, "weights.router_weight");
}

void require_dna_like(DnaState const& mine, DnaState const& dna) {
  require_same_extents(mine.prototypes, dna.prototypes, "dna.prototypes");
  require_same_extents(mine.usage, dna.usage, "dna.usage");
  require_same_extents(mine.confidence, dna.confidence, "dna.confidence");
}
}  // namespace

void CausalGeneticMultiheadAttention::set_weights(ExecSpace const& space, Weights const& w) {
  require_weights_like(weights_, w);
  Kokkos::deep_copy(space, weights_.qkv_weight, w.qkv_weight);
  Kokkos::deep_copy(space, weights_.qkv_bias, w.qkv_bias);
  Kokkos::deep_copy(space, weights_.out_weight, w.out_weight);
  Kokkos::deep_copy(space, weights_.out_bias, w.out_bias);
  Kokkos::deep_copy(space, weights_.router_weight, w.router_weight);
}

void CausalGeneticMultiheadAttention::set_dna(ExecSpace const& space, DnaState const& dna) {
  require_dna_like(dna_, dna);
  Kokkos::deep_copy(space, dna_.prototypes, dna.prototypes);
  Kokkos::deep_copy(space, dna_.usage, dna.usage);
  Kokkos::deep_copy(space, dna_.confidence, dna.confidence);
}

void CausalGeneticMultiheadAttention::share_weights(Weights const& w) {
  require_weights_like(weights_, w);
  weights_ = w;
}

void CausalGeneticMultiheadAttention::share_dna(DnaState const& dna) {
  require_dna_like(dna_, dna);
  dna_ = dna;
}

RoutingResult CausalGeneticMultiheadAttention::route(ExecSpace const& space, TokenMatrix const& x, int batch) const {
  RoutingResult r;
  route(space, x, batch, r);
  return r;
}

void CausalGeneticMultiheadAttention::route(ExecSpace const& space, TokenMatrix const& x, int batch,
                                            RoutingResult& r) const {
  route(space, x, batch, r, {});
}

void CausalGeneticMultiheadAttention::route(ExecSpace const& space, TokenMatrix const& x, int batch, RoutingResult& r,
                                            Kokkos::View<long, MemSpace> const& kept_count) const {
  long const n = static_cast<long>(x.extent(0));
  reuse_routing(r.routing, n, config_.num_gates);
  reuse(r.keep, "proteus::token_keep", n);
  route_into(space, x, batch, r, kept_count, r.selection);
}

void CausalGeneticMultiheadAttention::route_into(ExecSpace const& space, TokenMatrix const& x, int batch,
                                                 RoutingResult& r, Kokkos::View<long, MemSpace> const& kept_count,
                                                 TokenKeyBuffers& selection) const {
  detail::ScopedRegion region("proteus::module::route");
  long const n = static_cast<long>(x.extent(0));
  long const tokens = n / batch;
  r.alpha = resolve_alpha(config_, tokens);
  // One FP32 GEMM for the router's logits and the DNA's dot products, x [W_router; P]^T (on an H200
  // at 1M tokens 0.84x the time of two). The router's softmax and the cosines' divisions are taken
  // as hybrid_route reads them; the logits become the probabilities in place only where the
  // router's gradient needs them.
  int const g = config_.num_gates;
  bool const dna = config_.dna_enable;
  GateMatrix const& scores = reuse(work_.routing_scores, "proteus::routing_scores", n, dna ? 2 * g : g);
  RouterLogits const router{router_columns(scores, g), config_.router_gradient};
  if (!dna) {
    router_logits(space, x, weights_.router_weight, scores);
    hybrid_route(space, config_, router, dna_, r.routing, work_.usage_bias);
  } else {
    GateByEmbed const& stacked = reuse(work_.routing_weights, "proteus::routing_weights", 2 * g, config_.embed_dim);
    Kokkos::deep_copy(space, Kokkos::subview(stacked, std::make_pair(0, g), Kokkos::ALL), weights_.router_weight);
    Kokkos::deep_copy(space, Kokkos::subview(stacked, std::make_pair(g, 2 * g), Kokkos::ALL), dna_.prototypes);
    router_logits(space, x, stacked, scores);
    GateColumns const dots = Kokkos::subview(scores, Kokkos::ALL, std::make_pair(g, 2 * g));
    CosineParts const sim = dna_cosine_parts(space, x, dna_.prototypes, dots, work_.token_norms, work_.prototype_norms);
    hybrid_route(space, config_, router, sim, dna_, r.routing, work_.usage_bias);
  }
  if (kept_count.data() == nullptr) {
    r.tokens_kept =
        select_tokens(space, config_, r.routing.importance, batch, tokens, r.alpha, r.keep, selection);
    return;
  }
  r.tokens_kept =
      mark_kept_tokens(space, config_, r.routing.importance, batch, tokens, r.alpha, r.keep, selection);
  count_kept_tokens(space, r.keep, kept_count);
}

detail::CallPlan CausalGeneticMultiheadAttention::plan_call(ExecSpace const& space, TokenMatrix const& x, int batch,
                                                            RunOptions const& options, ForwardStats& st) {
  detail::ScopedRegion region("proteus::module::plan");
  Config const& c = config_;
  long const n = static_cast<long>(x.extent(0)), tokens = n / batch;
  int const heads = c.num_heads;
  detail::CallPlan call;
  reuse_routing(work_.routing, n, c.num_gates);
  call.routed.routing = work_.routing;
  call.routed.keep = reuse(work_.keep, "proteus::token_keep", n);
  route_into(space, x, batch, call.routed, Kokkos::subview(work_.call_counts, heads + call_count::kept),
             work_.token_keys);
  count_input_check_norms(space, n);
  st.alpha = call.routed.alpha;

  GateMatrix const& head_probs = reuse(work_.head_probs, "proteus::head_probs", n, heads);
  head_probabilities(space, call.routed.routing.gate_probs, head_gates_, head_probs);
  HeadCount const hc = choose_head_count(space, c, tokens, st.alpha, head_probs);
  st.heads_k = hc.k;
  st.heads_adaptive = hc.adaptive;
  st.heads_by_length = hc.by_length;
  st.heads_nucleus = hc.nucleus;
  call.head_mask = reuse(work_.head_mask, "proteus::head_mask", n, heads);
  select_heads(space, c, head_probs, hc, st.alpha, call.routed.keep, call.head_mask);
  count_active_pairs(space, call.head_mask, Kokkos::subview(work_.call_counts, heads + call_count::head_pairs));

  call.shortlist = options.plan.value_or(plan_call_shortlist(c, tokens, st.alpha, static_cast<double>(hc.k) / heads));
  call.every_head = call.shortlist.dense || attends_every_head(c, st.alpha);
  if (c.router_gradient) {
    call.head_weight = reuse(work_.head_weight, "proteus::head_weight", n, heads);
    call.head_total = reuse(work_.head_total, "proteus::head_total", n);
    head_weights(space, head_probs, call.head_mask, call.routed.keep, call.every_head, call.head_weight,
                 call.head_total);
  }
  st.plan = call.shortlist;
  st.mode = call.shortlist.dense ? "dense" : "shortlist";
  call.dna_lists = dna_candidate_lists(space, call.shortlist, call.routed.routing.salience, batch, tokens);
  return call;
}

namespace {

template <class Rows>
Rows rows_of(Rows const& v, long first, long count) {
  return Kokkos::subview(v, std::make_pair(first, first + count), Kokkos::ALL);
}

// Outputs of the kept rows (yq: their products with W_out, unbiased) back to their tokens, with the
// bias; dropped tokens output the bias alone. In 16-byte pieces where every row allows it (y may
// be a caller's unaligned tensor). Row i of the block is token t0 + i % len of batch row i / len
// (the divisions skipped for one batch row: 64-bit divisions cost GPUs dozens of instructions).
void scatter_kept_outputs(ExecSpace const& space, TokenMatrix const& yq, Kokkos::View<long*, MemSpace> const& query_of,
                          TokenVector const& out_bias, TokenMatrix const& y, int batch, long tokens, long t0, long len) {
  long const rows = batch * len, cols = static_cast<long>(y.extent(1));
  auto const token_row = KOKKOS_LAMBDA(long i) { return batch == 1 ? t0 + i : (i / len) * tokens + t0 + i % len; };
  bool const bias_quads = reinterpret_cast<std::uintptr_t>(out_bias.data()) % alignof(FloatQuad) == 0;
  if (detail::rows_of_vectors(y) && detail::rows_of_vectors(yq) && bias_quads) {
    auto const* bias = reinterpret_cast<FloatQuad const*>(out_bias.data());
    detail::for_each_quad(
        space, "proteus::module::scatter_kept", rows, cols, KOKKOS_LAMBDA(long i, long j) {
          long const qi = query_of(i);
          FloatQuad v = bias[j / 4];
          if (qi >= 0) {
            FloatQuad const p = detail::quad_at(yq, qi, j);
            for (int k = 0; k < 4; ++k) v.v[k] += p.v[k];
          }
          detail::quad_at(y, token_row(i), j) = v;
        });
    return;
  }
  detail::for_each_element(
      space, "proteus::module::scatter_kept", rows, cols, KOKKOS_LAMBDA(long i, long j) {
        long const qi = query_of(i);
        y(token_row(i), j) = qi >= 0 ? yq(qi, j) + out_bias(j) : out_bias(j);
      });
}

// Rows outside [row_begin, row_end) have no context: their output is the bias alone.
void bias_outside_rows(ExecSpace const& space, TokenVector const& out_bias, TokenMatrix const& y, long tokens,
                       long row_begin, long row_end) {
  detail::for_each_element(
      space, "proteus::module::rows_outside", static_cast<long>(y.extent(0)), static_cast<long>(y.extent(1)),
      KOKKOS_LAMBDA(long row, long j) {
        long const t = row % tokens;
        if (t < row_begin || t >= row_end) y(row, j) = out_bias(j);
      });
}

// Adds a block's statistics to the call's on the device (work.call_counts: rows of each head summed
// over the batch, then the candidates of every active row); nothing waits for them.
void add_block_statistics(ExecSpace const& space, detail::ActiveRows const& rows,
                          Kokkos::View<int*, MemSpace> const& counts, int heads, int batch,
                          detail::ModuleWorkspace const& work) {
  auto const stats = work.call_counts;
  auto const head_start = rows.head_start;
  Kokkos::parallel_reduce(
      "proteus::stats::candidates", RangePolicy(space, 0, rows.rows),
      KOKKOS_LAMBDA(long i, long& sum) { sum += counts(i); },
      Kokkos::subview(stats, heads + call_count::block_candidates));
  Kokkos::parallel_for(
      "proteus::stats::head_rows", RangePolicy(space, 0, heads), KOKKOS_LAMBDA(int h) {
        long n = 0;
        for (int b = 0; b < batch; ++b) n += head_start(b * heads + h + 1) - head_start(b * heads + h);
        stats(h) += n;
        if (h == 0) stats(heads + call_count::candidates) += stats(heads + call_count::block_candidates);
      });
}

// Entropy, salience and beta sums of the routing (SPEC stage 7's statistics) into work.routing_sums.
void routing_statistics(ExecSpace const& space, Routing const& rt, detail::ModuleWorkspace const& work) {
  auto const gp = rt.gate_probs;
  auto const sal = rt.salience;
  auto const beta = rt.beta;
  long const n = static_cast<long>(gp.extent(0));
  int const gates = static_cast<int>(gp.extent(1));
  Kokkos::View<RoutingSums, MemSpace, Kokkos::MemoryUnmanaged> const sums(
      reinterpret_cast<RoutingSums*>(work.routing_sums.data()));
  // One work item per four gates of a token, so that neighbouring items read neighbouring gates (a
  // token per item read its row of gates with a stride of a whole row across the warp).
  int const quads = (gates + 3) / 4;
  detail::RowSplit const split(n, quads);
  Kokkos::parallel_reduce(
      "proteus::stats::routing", RangePolicy(space, 0, n * quads),
      KOKKOS_LAMBDA(long i, RoutingSums& s) {
        long const t = split.row(i);
        int const g0 = 4 * static_cast<int>(i - t * quads);
        for (int g = g0; g < g0 + 4 && g < gates; ++g) {
          float const p = gp(t, g);
          if (p > 0.0f) s.entropy -= p * detail::kmath::log(p);
        }
        if (g0 > 0) return;
        s.salience += sal(t);
        s.beta += beta(t);
        s.caught += beta(t) > 0.0f ? 1.0 : 0.0;
      },
      SumRouting<MemSpace>(sums));
}

// v copied into out, which keeps its allocation when it has v's shape and no other owner: a state
// reused for the next training forward allocates nothing (on a GPU, no cudaMalloc and no cudaFree,
// which waits for the device), and a copy of a state keeps what it held.
template <class Source, class View>
void copy_into(ExecSpace const& space, Source const& v, View& out, char const* label) {
  bool const reuse = out.use_count() == 1 && out.extent(0) == v.extent(0) &&
                     (View::rank == 1 || out.extent(View::rank - 1) == v.extent(View::rank - 1));
  if (!reuse) {
    auto const alloc = Kokkos::view_alloc(std::string(label), Kokkos::WithoutInitializing);
    out = View();
    if constexpr (View::rank == 1)
      out = View(alloc, v.extent(0));
    else
      out = View(alloc, v.extent(0), v.extent(1));
  }
  Kokkos::deep_copy(space, out, v);
}

// Whether the query rows of a block of len tokens of every batch row are one range of x's rows
// (then one GEMM projects them all, as the backward's recomputation does).
bool rows_in_one_range(int batch, long len, long tokens) { return batch == 1 || len == tokens; }

// out(i) = positions(source(i)): the positions of the query rows.
void gather_positions(ExecSpace const& space, PositionVector const& positions,
                      Kokkos::View<long*, MemSpace> const& source, PositionVector const& out) {
  Kokkos::parallel_for(
      "proteus::module::query_positions", RangePolicy(space, 0, out.extent(0)),
      KOKKOS_LAMBDA(long i) { out(i) = positions(source(i)); });
}

// The forward's choices, copied out of the module's reusable buffers into `state`.
void keep_for_backward(ExecSpace const& space, detail::CallPlan const& call, TokenMatrix const& x, int batch,
                       PositionVector const& positions, long row_begin, long row_end, TrainingState& state) {
  state.x = x;
  state.positions = positions;
  state.batch = batch;
  state.row_begin = row_begin;
  state.row_end = row_end;
  copy_into(space, call.routed.keep, state.keep, "proteus::training::keep");
  copy_into(space, call.head_mask, state.head_mask, "proteus::training::head_mask");
  if (call.head_weight.extent(0) > 0) {
    copy_into(space, call.head_weight, state.head_weight, "proteus::training::head_weight");
    copy_into(space, call.head_total, state.head_total, "proteus::training::head_total");
    copy_into(space, call.routed.routing.gate_probs, state.gate_probs, "proteus::training::gate_probs");
    copy_into(space, call.routed.routing.beta, state.beta, "proteus::training::beta");
  }
  state.plan = call.shortlist;
  state.every_head = call.every_head;
  state.dna_lists = call.dna_lists;
  state.ready = true;
}

}  // namespace

void CausalGeneticMultiheadAttention::project_keys_values(ExecSpace const& space, TokenMatrix const& x, int batch,
                                                          PositionVector const& positions) {
  Config const& c = config_;
  long const n = static_cast<long>(x.extent(0));
  int const e = c.embed_dim;
  GemmPrecision const precision = projection_precision(c);
  TokenVector const bias_k = Kokkos::subview(weights_.qkv_bias, std::make_pair(e, 2 * e));
  // K's bias and RoPE (V's bias is added to the context in attend).
  if (!c.kv_bf16) {
    TokenMatrix const& kv = reuse(work_.kv, "proteus::kv", n, 2 * e);
    project_kv(space, x, weights_, kv, precision, &work_.bf16_operands);
    bias_and_rope(space, kv, bias_k, positions, e, c.num_heads, 1, c.rope, c.rope_base, &work_.rope_turns);
    return;
  }
  // One stage of rows at a time: projected in FP32, then biased, rotated and rounded in one pass
  // into the BF16 head rows.
  work_.kv = TokenMatrix();  // a call before may have left an FP32 K|V
  int const heads = c.num_heads;
  Bf16HeadRows const& stored = reuse(work_.kv_bf16, "proteus::kv_bf16", batch * heads, n / batch, 2 * (e / heads));
  long const block = std::max(1L, std::min(n, static_cast<long>(c.kv_stage_rows)));
  for (long r0 = 0; r0 < n; r0 += block) {
    long const m = std::min(block, n - r0);
    TokenMatrix const stage = first_rows(work_.kv_stage, "proteus::kv_stage", m, 2 * e);
    project_kv(space, rows_of(x, r0, m), weights_, stage, precision, &work_.bf16_operands);
    bias_and_rope_to_bf16(space, stage, bias_k, Kokkos::subview(positions, std::make_pair(r0, r0 + m)), e, heads,
                          c.rope, c.rope_base, stored, r0, &work_.rope_turns);
  }
}

void CausalGeneticMultiheadAttention::attend_block(ExecSpace const& space, detail::CallPlan const& call,
                                                   TokenMatrix const& x, int batch, PositionVector const& positions,
                                                   TokenMatrix const& y, long t0, long len, ForwardStats& st,
                                                   bool keep_attended) {
  Config const& c = config_;
  long const tokens = static_cast<long>(x.extent(0)) / batch;
  int const e = c.embed_dim, heads = c.num_heads;
  GemmPrecision const precision = projection_precision(c);
  TokenVector const bias_q = Kokkos::subview(weights_.qkv_bias, std::make_pair(0, e));
  TokenVector const bias_v = Kokkos::subview(weights_.qkv_bias, std::make_pair(2 * e, 3 * e));
  detail::ActiveRows const rows = detail::compact_active_rows(space, call.head_mask, call.routed.keep, call.every_head, batch,
                                                      tokens, t0, t0 + len, work_.rows);
  finish_input_check(space, x);  // the compaction waited for the device to read its sizes
  // Only kept tokens have queries. With every token of the block kept, the queries are read from
  // x and the outputs written to y in place; otherwise the kept rows are gathered first and
  // scattered back after the output projection.
  long const nq = rows.queries;
  bool const every = nq == batch * len;
  TokenMatrix const qb = first_rows(work_.q, "proteus::q", nq, e);
  TokenMatrix const cb = first_rows(work_.ctx, "proteus::context", nq, e);
  TokenMatrix gathered;  // [nq x E] kept rows of x, then their outputs
  if (every) {
    bool const one_range = rows_in_one_range(batch, len, tokens);
    long const m = one_range ? batch * len : len;
    for (int b = 0; b < (one_range ? 1 : batch); ++b) {
      TokenMatrix const qr = rows_of(qb, b * len, m);
      project_q(space, rows_of(x, b * tokens + t0, m), weights_, qr, precision, &work_.bf16_operands);
      PositionVector const pos = Kokkos::subview(positions, std::make_pair(b * tokens + t0, b * tokens + t0 + m));
      bias_and_rope(space, qr, bias_q, pos, e, heads, 1, c.rope, c.rope_base, &work_.rope_turns);
    }
    if (keep_attended)  // the backward turns RoPE back at the query rows' positions
      gather_positions(space, positions, rows.query_source, first_rows(work_.kept_positions, "proteus::kept_positions", nq));
  } else if (nq > 0) {
    gathered = first_rows(work_.gathered, "proteus::kept_rows", nq, e);
    PositionVector const pos = first_rows(work_.kept_positions, "proteus::kept_positions", nq);
    detail::gather_rows(space, x, rows.query_source, gathered, positions, pos);
    project_q(space, gathered, weights_, qb, precision, &work_.bf16_operands);
    bias_and_rope(space, qb, bias_q, pos, e, heads, 1, c.rope, c.rope_base, &work_.rope_turns);
  }
  st.active_rows += rows.rows;
  Kokkos::deep_copy(space, cb, 0.0f);  // rows of inactive heads stay zero
  Kokkos::View<int*, MemSpace> const counts = first_rows(work_.candidate_count, "proteus::candidate_count", rows.rows);
  detail::RowSoftmax softmax;
  if (keep_attended) {
    softmax.max = first_rows(work_.row_max, "proteus::backward::row_max", rows.rows);
    softmax.sum = first_rows(work_.row_sum, "proteus::backward::row_sum", rows.rows);
    work_.attended_rows = rows;
  }
  if (c.kv_bf16)
    detail::attend(space, call.shortlist, qb, work_.kv_bf16, bias_v, rows, call.dna_lists, heads, cb, counts, softmax);
  else
    detail::attend(space, call.shortlist, qb, work_.kv, bias_v, rows, call.dna_lists, heads, cb, counts, softmax);
  if (call.head_weight.extent(0) > 0) detail::scale_active_heads(space, rows, call.head_weight, cb, tokens);
  if (every) {
    for (int b = 0; b < batch; ++b)
      project_output(space, rows_of(cb, b * len, len), weights_, rows_of(y, b * tokens + t0, len), precision,
                     &work_.bf16_operands);
  } else {
    if (nq > 0) project_output_unbiased(space, cb, weights_, gathered, precision, &work_.bf16_operands);
    scatter_kept_outputs(space, gathered, rows.query_of, weights_.out_bias, y, batch, tokens, t0, len);
  }
  add_block_statistics(space, rows, counts, heads, batch, work_);
}

ForwardStats CausalGeneticMultiheadAttention::run(ExecSpace const& space, TokenMatrix const& x, int batch,
                                                  PositionVector const& positions, TokenMatrix const& y,
                                                  RunOptions const& options) {
  return run_impl(space, x, batch, positions, y, options, nullptr);
}

ForwardStats CausalGeneticMultiheadAttention::run_training(ExecSpace const& space, TokenMatrix const& x, int batch,
                                                           PositionVector const& positions, TokenMatrix const& y,
                                                           TrainingState& state, RunOptions const& options) {
  return run_impl(space, x, batch, positions, y, options, &state);
}

ForwardStats CausalGeneticMultiheadAttention::run_impl(ExecSpace const& space, TokenMatrix const& x, int batch,
                                                       PositionVector const& positions, TokenMatrix const& y,
                                                       RunOptions const& options, TrainingState* state) {
  Config const& c = config_;
  long const n = static_cast<long>(x.extent(0));
  require(batch > 0 && n % batch == 0, "batch", "token rows are not a multiple of the batch size");
  require(static_cast<int>(x.extent(1)) == c.embed_dim, "x",
          "has width " + std::to_string(x.extent(1)) + ", expected embed_dim " + std::to_string(c.embed_dim));
  require(static_cast<long>(positions.extent(0)) == n, "positions", "needs one entry per token row");
  require(y.extent(0) == x.extent(0) && y.extent(1) == x.extent(1), "y", "must have the shape of x");
  long const tokens = n / batch;
  long const row_end = options.row_end < 0 ? tokens : std::min(options.row_end, tokens);
  require(options.row_begin >= 0 && options.row_begin <= row_end, "row_begin", "outside [0, row_end]");

  start_input_check(space, x, options.check_input);
  ForwardStats st;
  st.batch = batch;
  st.tokens = tokens;
  start_statistics(space, st);
  detail::CallPlan const call = plan_call(space, x, batch, options, st);
  if (state) {
    keep_for_backward(space, call, x, batch, positions, options.row_begin, row_end, *state);
    if (c.router_gradient)
      copy_into(space, router_columns(work_.routing_scores, c.num_gates), state->router_probs,
                "proteus::training::router_probs");
  }
  {
    // Keys and values of every token; queries, context and output projection a block of tokens
    // at a time (the only [N x E] buffers that live through the call are x, K|V and y).
    detail::ScopedRegion region("proteus::module::attention");
    if (projection_precision(c) == GemmPrecision::bf16) round_weights(space, weights_, work_.bf16_operands);
    project_keys_values(space, x, batch, positions);
    // The backward can use this K|V while no other call has overwritten it (FP32 only: it recomputes in FP32).
    bool const fp32_kv = projection_precision(c) == GemmPrecision::fp32 && !c.kv_bf16;
    work_.kv_call = state && fp32_kv ? (state->call = ++work_.training_calls) : 0;
    // Only kept tokens hold query rows: where all the call's kept tokens fit, one block takes them.
    long const span = row_end - options.row_begin;
    long const block = call.routed.tokens_kept <= c.query_block_rows
                           ? std::max(1L, span)
                           : std::max(1L, std::min(span, static_cast<long>(c.query_block_rows) / batch));
    // In one block whose query rows are one GEMM's, the block's queries, contexts and softmax
    // statistics are the backward's, bit for bit (unless the router gradient scales the contexts
    // in place).
    bool const keep_attended = work_.kv_call != 0 && span > 0 && block == span &&
                               rows_in_one_range(batch, block, tokens) && call.head_weight.extent(0) == 0;
    work_.attended_call = 0;
    for (long t0 = options.row_begin; t0 < row_end; t0 += block)
      attend_block(space, call, x, batch, positions, y, t0, std::min(block, row_end - t0), st, keep_attended);
    if (keep_attended) work_.attended_call = work_.kv_call;
    if (work_.input_check_pending) {  // no query block: nothing has waited for the device yet
      space.fence();
      finish_input_check(space, x);
    }
    if (options.row_begin > 0 || row_end < tokens)
      bias_outside_rows(space, weights_.out_bias, y, tokens, options.row_begin, row_end);
  }
  if (options.update_dna.value_or(c.dna_update) && c.dna_enable) {
    detail::ScopedRegion region("proteus::module::dna_update");
    if (work_.dna_stats.sums.extent(0) != static_cast<size_t>(c.num_gates))
      work_.dna_stats = DnaStatistics::allocate(c.num_gates, c.embed_dim);
    dna_statistics(space, x, call.routed.routing.gate_probs, work_.dna_stats, work_.dna_scratch);
    dna_ema_update(space, c.dna_decay, work_.dna_stats, dna_, Kokkos::subview(work_.call_counts, c.num_heads + call_count::gates_updated));
  }
  detail::ScopedRegion region("proteus::module::statistics");
  routing_statistics(space, call.routed.routing, work_);
  st.pending = true;
  if (!options.defer_statistics || controller_) complete_statistics(space, st);
  if (controller_) {
    st.max_head_density = busiest_head_fraction(space, call.head_mask, call.routed.keep, call.every_head, batch);
    if (options.adapt_heads.value_or(true)) adapt_heads(st);
  }
  return st;
}

void CausalGeneticMultiheadAttention::start_input_check(ExecSpace const& space, TokenMatrix const& x, bool check) {
  work_.input_check_pending = check;
  work_.input_check_on_norms = check && config_.dna_enable;
  if (!check) return;
  if (work_.nonfinite.data() == nullptr) {
    work_.nonfinite = Kokkos::View<long, MemSpace>("proteus::input_check");
    work_.nonfinite_host = Kokkos::View<long, detail::PinnedHostSpace>("proteus::input_check_host");
  }
  if (work_.input_check_on_norms) return;  // count_input_check_norms, once the routing has them
  count_nonfinite(space, x, work_.nonfinite);
  Kokkos::deep_copy(space, work_.nonfinite_host, work_.nonfinite);
}

void CausalGeneticMultiheadAttention::count_input_check_norms(ExecSpace const& space, long n) {
  if (!work_.input_check_pending || !work_.input_check_on_norms) return;
  // The n norms as one column: the same count as x's entries, and nothing waits.
  nonfinite_into(space, TokenMatrix(work_.token_norms.data(), n, 1), work_.nonfinite);
  Kokkos::deep_copy(space, work_.nonfinite_host, work_.nonfinite);
}

void CausalGeneticMultiheadAttention::finish_input_check(ExecSpace const& space, TokenMatrix const& x) {
  if (!work_.input_check_pending) return;
  work_.input_check_pending = false;
  long bad = work_.nonfinite_host();
  if (bad > 0 && work_.input_check_on_norms) {  // tokens with NaN or Inf norms: count the entries
    bad = 0;
    nonfinite_into(space, x, bad);
  }
  require_finite(bad, "query");
}

namespace {
// The call's counts and sums set to zero in one launch (a fill of each took two).
template <class Counts, class Sums>
void zero_statistics(ExecSpace const& space, Counts const& counts, Sums const& sums) {
  long const n_counts = static_cast<long>(counts.extent(0)), n_sums = static_cast<long>(sums.extent(0));
  Kokkos::parallel_for(
      "proteus::stats::start", RangePolicy(space, 0, std::max(n_counts, n_sums)),
      KOKKOS_LAMBDA(long i) {
        if (i < n_counts) counts(i) = 0;
        if (i < n_sums) sums(i) = 0;
      });
}
}  // namespace

// A new call's statistics: zeroed on the device, numbered.
void CausalGeneticMultiheadAttention::start_statistics(ExecSpace const& space, ForwardStats& st) {
  zero_statistics(space, first_rows(work_.call_counts, "proteus::stats::call", config_.num_heads + call_count::slots),
                  first_rows(work_.routing_sums, "proteus::stats::routing", 4L));
  st.call = ++work_.calls;
}

void CausalGeneticMultiheadAttention::complete_statistics(ExecSpace const& space, ForwardStats& st) const {
  if (!st.pending) return;
  require(st.call == work_.calls, "statistics",
          "call " + std::to_string(st.call) + "'s were replaced by call " + std::to_string(work_.calls) +
              " of the module (complete deferred statistics before the next call)");
  int const heads = config_.num_heads;
  auto const counts = first_rows(work_.call_counts_host, "proteus::stats::call_host", heads + call_count::slots);
  auto const sums = first_rows(work_.routing_sums_host, "proteus::stats::routing_host", 4L);
  Kokkos::deep_copy(space, counts, Kokkos::subview(work_.call_counts, std::make_pair(0, heads + call_count::slots)));
  Kokkos::deep_copy(space, sums, Kokkos::subview(work_.routing_sums, std::make_pair(0, 4)));
  space.fence();
  st.distinct_heads = 0;
  for (int h = 0; h < heads; ++h) st.distinct_heads += counts(h) > 0 ? 1 : 0;
  st.mean_candidates = st.active_rows > 0 ? counts(heads + call_count::candidates) / static_cast<double>(st.active_rows) : 0.0;
  st.gates_updated = static_cast<int>(counts(heads + call_count::gates_updated));
  st.tokens_kept = counts(heads + call_count::kept);
  st.mean_active_heads = static_cast<double>(st.active_rows) / std::max(1L, st.tokens_kept);
  st.density = static_cast<double>(counts(heads + call_count::head_pairs)) /
               (static_cast<double>(heads) * std::max(1L, st.tokens_kept));
  long const n = st.batch * st.tokens;
  double const per_token = n > 0 ? 1.0 / static_cast<double>(n) : 0.0;
  st.router_entropy = sums(0) * per_token;
  st.mean_salience = sums(1) * per_token;
  st.mean_beta = sums(2) * per_token;
  st.tokens_caught = static_cast<long>(std::lround(sums(3)));
  st.pending = false;
}

std::pair<BatchTensor, std::optional<ForwardStats>> CausalGeneticMultiheadAttention::forward(
    ExecSpace const& space, BatchTensor const& query, BatchTensor const& key, BatchTensor const& value,
    PaddingMask const& key_padding_mask, bool need_weights, AttnMask const& attn_mask) {
  detail::ScopedRegion region("proteus::module::forward");
  Config const& c = config_;
  check_forward_inputs(space, c, query, key, value, key_padding_mask, attn_mask);
  int const batch = static_cast<int>(c.batch_first ? query.extent(0) : query.extent(1));
  long const tokens = static_cast<long>(c.batch_first ? query.extent(1) : query.extent(0));
  bool const padded = key_padding_mask.data() != nullptr;
  int const e = c.embed_dim;
  bool const bf = c.batch_first;
  long const n = batch * tokens;
  // A contiguous batch-first query without padding already is x [B*T x E], and the output
  // tensor is y: both are used in place (no copies of the two largest tensors).
  bool const in_place = bf && !padded && query.span_is_contiguous();
  // Allocated on the call's instance: the allocation header's copy then waits for nothing (a plain
  // allocation fences the device to copy it).
  BatchTensor out(Kokkos::view_alloc(space, "proteus::output", Kokkos::WithoutInitializing), query.extent(0),
                  query.extent(1), query.extent(2));
  PositionVector const& positions = reuse(work_.positions, "proteus::positions", n);
  Kokkos::parallel_for(
      "proteus::positions", RangePolicy(space, 0, n),
      KOKKOS_LAMBDA(long row) { positions(row) = row % tokens; });
  RunOptions checked;
  checked.check_input = true;  // "query: contains ... NaN" before the attention, without a wait of its own
  ForwardStats st;
  if (in_place) {
    TokenMatrix const x(query.data(), n, e);
    st = run(space, x, batch, positions, TokenMatrix(out.data(), n, e), checked);
  } else {
    TokenMatrix x(Kokkos::view_alloc(space, "proteus::input", Kokkos::WithoutInitializing), n, e);
    auto pad = key_padding_mask;
    detail::for_each_element(
        space, "proteus::gather_input", n, static_cast<long>(e), KOKKOS_LAMBDA(long row, long j) {
          long const b = row / tokens, t = row % tokens;
          bool const masked = padded && pad(b, t) != 0;
          float const val = bf ? query(b, t, j) : query(t, b, j);
          x(row, j) = masked ? 0.0f : val;
        });
    TokenMatrix y(Kokkos::view_alloc(space, "proteus::output_rows", Kokkos::WithoutInitializing), n, e);
    st = run(space, x, batch, positions, y, checked);
    x = TokenMatrix();  // released before the output copy
    detail::for_each_element(
        space, "proteus::scatter_output", n, static_cast<long>(e), KOKKOS_LAMBDA(long row, long j) {
          long const b = row / tokens, t = row % tokens;
          float const val = (padded && pad(b, t) != 0) ? 0.0f : y(row, j);
          if (bf)
            out(b, t, j) = val;
          else
            out(t, b, j) = val;
        });
  }
  std::optional<ForwardStats> stats;
  if (need_weights) stats = st;
  return {out, stats};
}

namespace detail {
void gather_rows(ExecSpace const& space, TokenMatrix const& m, Kokkos::View<long*, MemSpace> const& source,
                 TokenMatrix const& out, PositionVector const& positions, PositionVector const& out_positions) {
  bool const with_positions = out_positions.extent(0) > 0;
  long const rows = static_cast<long>(out.extent(0)), cols = static_cast<long>(out.extent(1));
  if (rows_of_vectors(m) && rows_of_vectors(out)) {  // in 16-byte pieces (m may be a caller's tensor)
    for_each_quad(
        space, "proteus::module::gather", rows, cols, KOKKOS_LAMBDA(long i, long j) {
          quad_at(out, i, j) = quad_at(m, source(i), j);
          if (with_positions && j == 0) out_positions(i) = positions(source(i));
        });
    return;
  }
  for_each_element(
      space, "proteus::module::gather", rows, cols, KOKKOS_LAMBDA(long i, long j) {
        out(i, j) = m(source(i), j);
        if (with_positions && j == 0) out_positions(i) = positions(source(i));
      });
}
}  // namespace detail

}  // namespace proteus

// The drop-in module against a naive double-precision causal multi-head attention with RoPE,
// plus causality, layout, determinism and bad-input checks.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "proteus/error.hpp"
#include "proteus/multihead_attention.hpp"
#include "proteus/projection.hpp"
#include "proteus/router.hpp"
#include "reference.hpp"
#include "test_space.hpp"

using namespace proteus;
using proteus::test::Matrix;

namespace {

struct Shape {
  int batch, tokens, embed, heads;
};

BatchTensor make_input(Shape s, std::uint64_t seed, bool batch_first = true) {
  Matrix m = test::random_matrix(static_cast<size_t>(s.batch) * s.tokens, s.embed, seed);
  BatchTensor x("test::x", batch_first ? s.batch : s.tokens, batch_first ? s.tokens : s.batch, s.embed);
  auto h = Kokkos::create_mirror_view(x);
  for (int b = 0; b < s.batch; ++b)
    for (int t = 0; t < s.tokens; ++t)
      for (int e = 0; e < s.embed; ++e) {
        double const v = m[static_cast<size_t>(b) * s.tokens + t][e];
        if (batch_first)
          h(b, t, e) = static_cast<float>(v);
        else
          h(t, b, e) = static_cast<float>(v);
      }
  Kokkos::deep_copy(x, h);
  return x;
}

// Each batch row's tokens at positions 0 .. tokens - 1, as [batch * tokens] token rows.
template <class Space>
PositionVector token_positions(Space const& space, Shape s) {
  long const n = static_cast<long>(s.batch) * s.tokens, tokens = s.tokens;
  PositionVector const positions("test::positions", n);
  Kokkos::parallel_for(
      "test::positions", Kokkos::RangePolicy<ExecSpace>(space, 0, n),
      KOKKOS_LAMBDA(long r) { positions(r) = r % tokens; });
  return positions;
}

Matrix batch_row(BatchTensor const& x, int b, bool batch_first = true) {
  auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), x);
  int const tokens = static_cast<int>(batch_first ? h.extent(1) : h.extent(0));
  Matrix m(tokens, std::vector<double>(h.extent(2)));
  for (int t = 0; t < tokens; ++t)
    for (size_t e = 0; e < h.extent(2); ++e) m[t][e] = batch_first ? h(b, t, e) : h(t, b, e);
  return m;
}

Matrix dense_reference(CausalGeneticMultiheadAttention const& mha, Matrix const& x) {
  auto const& w = mha.weights();
  std::vector<std::int64_t> pos(x.size());
  for (size_t t = 0; t < x.size(); ++t) pos[t] = static_cast<std::int64_t>(t);
  return test::attention_reference(
      x, pos, test::to_host_matrix(w.qkv_weight), test::to_host_vector(w.qkv_bias),
      test::to_host_matrix(w.out_weight), test::to_host_vector(w.out_bias), mha.config().num_heads,
      mha.config().rope, mha.config().rope_base, [](int, size_t, size_t) { return true; },
      [](int, size_t) { return true; });
}

// What f throws as a proteus::Error, or "no error".
template <class F>
std::string message(F&& f) {
  try {
    f();
  } catch (proteus::Error const& e) {
    return std::string(e.what());
  }
  return std::string("no error");
}

}  // namespace

PROTEUS_TEST_CASE("alpha = 0 equals naive double-precision causal attention with RoPE", "[module][dense]") {
  // Odd T, E not a power of two, B > 1; token sparsity off (the default).
  // Head widths 8, 12 (padded to 16), 8, 8, 24 and 48 (kernels of their own).
  for (Shape s : {Shape{1, 37, 24, 3}, Shape{2, 65, 48, 4}, Shape{3, 129, 40, 5}, Shape{1, 200, 64, 8},
                  Shape{2, 90, 72, 3}, Shape{1, 70, 96, 2}}) {
    Config cfg;
    cfg.mode = AlphaMode::subquad;
    cfg.seed = 11;
    CausalGeneticMultiheadAttention mha(TEST_EXECSPACE(), s.embed, s.heads, true, cfg);
    BatchTensor x = make_input(s, 3 + s.tokens);
    auto [y, stats] = mha.forward(TEST_EXECSPACE(), x, x, x, {}, true);
    REQUIRE(stats.has_value());
    CHECK(stats->mode == "dense");
    CHECK(stats->alpha == 0.0);
    for (int b = 0; b < s.batch; ++b) {
      double const err = test::relative_error(batch_row(y, b), dense_reference(mha, batch_row(x, b)));
      INFO("B=" << s.batch << " T=" << s.tokens << " E=" << s.embed << " H=" << s.heads << " b=" << b);
      CHECK(err < 1e-5);
    }
  }
}

PROTEUS_TEST_CASE("outputs at or before t never depend on tokens after t, at every alpha", "[module][causal]") {
  Shape const s{2, 300, 32, 4};
  for (float alpha : {0.0f, 0.3f, 0.7f, 1.0f}) {
    Config cfg;
    cfg.mode = AlphaMode::fixed;
    cfg.alpha = alpha;
    cfg.linear_L = 48;
    cfg.L_min = 16;
    cfg.window = 24;
    cfg.anchor_stride = 16;
    cfg.use_dna_candidates = true;
    cfg.dna_update = false;
    cfg.seed = 5;
    CausalGeneticMultiheadAttention mha(TEST_EXECSPACE(), s.embed, s.heads, true, cfg);
    BatchTensor x = make_input(s, 21);
    BatchTensor changed = make_input(s, 21);
    long const cut = 150;
    {
      Matrix noise = test::random_matrix(static_cast<size_t>(s.batch) * s.tokens, s.embed, 99, 3.0);
      auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), changed);
      for (int b = 0; b < s.batch; ++b)
        for (long t = cut + 1; t < s.tokens; ++t)
          for (int e = 0; e < s.embed; ++e) h(b, t, e) = static_cast<float>(noise[b * s.tokens + t][e]);
      Kokkos::deep_copy(changed, h);
    }
    auto [y1, st1] = mha.forward(TEST_EXECSPACE(), x, {}, {}, {}, true);
    auto [y2, st2] = mha.forward(TEST_EXECSPACE(), changed, {}, {}, {}, true);
    auto h1 = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), y1);
    auto h2 = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), y2);
    long same = 0, later_differs = 0;
    for (int b = 0; b < s.batch; ++b)
      for (long t = 0; t < s.tokens; ++t) {
        bool equal = true;
        for (int e = 0; e < s.embed; ++e) equal = equal && h1(b, t, e) == h2(b, t, e);
        if (t <= cut) same += equal ? 1 : 0;
        if (t > cut) later_differs += equal ? 0 : 1;
      }
    INFO("alpha = " << alpha << " mode " << st1->mode);
    CHECK(same == s.batch * (cut + 1));
    CHECK(later_differs == s.batch * (s.tokens - cut - 1));  // the change did reach later rows
  }
}

PROTEUS_TEST_CASE("batch_first true and false give the same numbers", "[module][layout]") {
  Shape const s{3, 50, 32, 4};
  Config cfg;
  cfg.seed = 2;
  cfg.dna_update = false;
  CausalGeneticMultiheadAttention a(TEST_EXECSPACE(), s.embed, s.heads, true, cfg);
  CausalGeneticMultiheadAttention b(TEST_EXECSPACE(), s.embed, s.heads, false, cfg);
  auto [ya, sa] = a.forward(TEST_EXECSPACE(), make_input(s, 8, true));
  auto [yb, sb] = b.forward(TEST_EXECSPACE(), make_input(s, 8, false));
  CHECK_FALSE(sa.has_value());
  for (int bb = 0; bb < s.batch; ++bb) CHECK(batch_row(ya, bb, true) == batch_row(yb, bb, false));
}

// A fixed alpha, frozen DNA and short windows, so that 200-300 tokens exercise every part of
// the shortlist (window, anchors, DNA candidates).
namespace {
Config short_windows(float alpha, std::uint64_t seed) {
  Config cfg;
  cfg.seed = seed;
  cfg.dna_update = false;
  cfg.mode = AlphaMode::fixed;
  cfg.alpha = alpha;
  cfg.window = 24;
  cfg.anchor_stride = 16;
  cfg.L_min = 8;
  cfg.linear_L = 40;
  return cfg;
}
}  // namespace

PROTEUS_TEST_CASE("query blocks bound memory without changing any output", "[module][blocks]") {
  // Blocks of 3 x 19 query rows over a batch of 3 (ragged last block) against one block, at a
  // shortlist alpha and dense; the same kernels run on the same rows, so up to GEMM blocking the
  // outputs are the same.
  Shape const s{3, 200, 32, 4};
  for (float alpha : {0.0f, 0.6f}) {
    Config cfg = short_windows(alpha, 4);
    CausalGeneticMultiheadAttention whole(TEST_EXECSPACE(), s.embed, s.heads, true, cfg);
    cfg.query_block_rows = 3 * 19;
    CausalGeneticMultiheadAttention blocked(TEST_EXECSPACE(), s.embed, s.heads, true, cfg);
    BatchTensor const x = make_input(s, 12);
    auto [yw, sw] = whole.forward(TEST_EXECSPACE(), x, {}, {}, {}, true);
    auto [yb, sb] = blocked.forward(TEST_EXECSPACE(), x, {}, {}, {}, true);
    CHECK(sw->active_rows == sb->active_rows);
    CHECK(sw->mean_candidates == Approx(sb->mean_candidates).epsilon(1e-12));
    CHECK(sw->distinct_heads == sb->distinct_heads);
    if (alpha == 0.0f) {  // dense: every head of every token, row t attends to t + 1 keys
      CHECK(sb->active_rows == static_cast<long>(s.batch) * s.tokens * s.heads);
      CHECK(sb->mean_candidates == Approx((s.tokens + 1) / 2.0).epsilon(1e-12));
      CHECK(sb->distinct_heads == s.heads);
    }
    double worst = 0.0;
    for (int b = 0; b < s.batch; ++b) {
      Matrix const w = batch_row(yw, b), k = batch_row(yb, b);
      for (int t = 0; t < s.tokens; ++t)
        for (int e = 0; e < s.embed; ++e) worst = std::max(worst, std::fabs(w[t][e] - k[t][e]));
    }
    CHECK(worst < 1e-6);
  }
}

PROTEUS_TEST_CASE("deferred statistics: the routing's sums from an independent host computation, read later",
                  "[module][statistics]") {
  // A call with RunOptions::defer_statistics returns the statistics computed on the device as
  // pending; complete_statistics gives what an undeferred call gives, and the routing's entropy,
  // salience, beta and tokens caught equal sums over route()'s per-token values taken here in double.
  // A later call replaces a pending call's statistics: completing them then is an error.
  Shape const s{2, 150, 32, 4};
  Config cfg = short_windows(0.6f, 5);
  cfg.dna_update = false;
  CausalGeneticMultiheadAttention mha(TEST_EXECSPACE(), s.embed, s.heads, true, cfg);
  BatchTensor const input = make_input(s, 21);
  long const n = static_cast<long>(s.batch) * s.tokens;
  TokenMatrix const x(input.data(), n, s.embed);
  TokenMatrix const y("test::y", n, s.embed);
  PositionVector const positions = token_positions(TEST_EXECSPACE(), s);
  ForwardStats const now = mha.run(TEST_EXECSPACE(), x, s.batch, positions, y);
  RunOptions deferred;
  deferred.defer_statistics = true;
  ForwardStats later = mha.run(TEST_EXECSPACE(), x, s.batch, positions, y, deferred);
  CHECK_FALSE(now.pending);
  CHECK(later.pending);
  CHECK(later.active_rows == now.active_rows);
  mha.complete_statistics(TEST_EXECSPACE(), later);
  CHECK_FALSE(later.pending);
  CHECK(later.distinct_heads == now.distinct_heads);
  CHECK(later.density == now.density);
  // Every active row is one active (token, head) pair: density = active rows / (H x kept tokens).
  CHECK(now.density == Approx(static_cast<double>(now.active_rows) / (s.heads * now.tokens_kept)).epsilon(1e-12));
  CHECK(later.mean_candidates == Approx(now.mean_candidates).epsilon(1e-12));
  CHECK(later.router_entropy == Approx(now.router_entropy).epsilon(1e-12));
  CHECK(later.tokens_caught == now.tokens_caught);
  CHECK(later.tokens_kept == now.tokens_kept);
  CHECK(later.mean_active_heads == now.mean_active_heads);
  CHECK(now.distinct_heads == s.heads);
  {
    // With token sparsity the kept tokens are counted on the device too: route()'s keep mask, counted here.
    Config sparse_cfg = cfg;
    sparse_cfg.token_sparse = true;
    sparse_cfg.token_keep_ratio = 0.4f;
    CausalGeneticMultiheadAttention sparse(TEST_EXECSPACE(), s.embed, s.heads, true, sparse_cfg);
    ForwardStats kept_later = sparse.run(TEST_EXECSPACE(), x, s.batch, positions, y, deferred);
    sparse.complete_statistics(TEST_EXECSPACE(), kept_later);
    auto const keep = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), sparse.route(TEST_EXECSPACE(), x, s.batch).keep);
    long counted = 0;
    for (long t = 0; t < n; ++t) counted += keep(t);
    CHECK(counted < n / 2);
    CHECK(kept_later.tokens_kept == counted);
    CHECK(kept_later.mean_active_heads == Approx(static_cast<double>(kept_later.active_rows) / counted).epsilon(1e-12));
  }

  RoutingResult const r = mha.route(TEST_EXECSPACE(), x, s.batch);
  auto const gp = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), r.routing.gate_probs);
  auto const sal = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), r.routing.salience);
  auto const beta = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), r.routing.beta);
  double entropy = 0.0, salience = 0.0, blend = 0.0;
  long caught = 0;
  for (long t = 0; t < n; ++t) {
    for (size_t g = 0; g < gp.extent(1); ++g)
      if (gp(t, g) > 0.0f) entropy -= gp(t, g) * std::log(static_cast<double>(gp(t, g)));
    salience += sal(t);
    blend += beta(t);
    caught += beta(t) > 0.0f ? 1 : 0;
  }
  // Per token the device takes float logarithms (relative error ~1e-7), summed in double.
  CHECK(later.router_entropy == Approx(entropy / n).epsilon(1e-6));
  CHECK(later.mean_salience == Approx(salience / n).epsilon(1e-6));
  CHECK(later.mean_beta == Approx(blend / n).epsilon(1e-6));
  CHECK(later.tokens_caught == caught);
  INFO("entropy " << entropy / n << ", salience " << salience / n << ", beta " << blend / n << ", caught " << caught);
  CHECK(entropy > 0.0);
  CHECK(caught > 0);

  // With the DNA EMA on: the gates updated are those whose routed mass (from route(), before the
  // update) exceeds dna_gate_hit's threshold, deferred or not.
  Config with_dna = cfg;
  with_dna.dna_update = true;
  CausalGeneticMultiheadAttention a(TEST_EXECSPACE(), s.embed, s.heads, true, with_dna);
  CausalGeneticMultiheadAttention b(TEST_EXECSPACE(), s.embed, s.heads, true, with_dna);
  RoutingResult const before = a.route(TEST_EXECSPACE(), x, s.batch);
  auto const gpa = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), before.routing.gate_probs);
  int hit = 0;
  for (size_t g = 0; g < gpa.extent(1); ++g) {
    double mass = 0.0;
    for (long t = 0; t < n; ++t) mass += gpa(t, g);
    hit += dna_gate_hit(mass) ? 1 : 0;
  }
  ForwardStats const at_once = a.run(TEST_EXECSPACE(), x, s.batch, positions, y);
  ForwardStats read_later = b.run(TEST_EXECSPACE(), x, s.batch, positions, y, deferred);
  b.complete_statistics(TEST_EXECSPACE(), read_later);
  CHECK(hit > 0);
  CHECK(at_once.gates_updated == hit);
  CHECK(read_later.gates_updated == hit);

  ForwardStats stale = mha.run(TEST_EXECSPACE(), x, s.batch, positions, y, deferred);
  mha.run(TEST_EXECSPACE(), x, s.batch, positions, y);
  CHECK_THROWS_AS(mha.complete_statistics(TEST_EXECSPACE(), stale), Error);
}

PROTEUS_TEST_CASE("token sparsity: kept tokens output what the all-kept module gives, dropped ones the bias",
          "[module][sparse]") {
  // Keys are every token either way and a kept token's heads do not depend on the others being
  // kept, so a kept token's output is the same; only the query rows are compacted (gathered
  // before the Q projection, scattered after the output projection), in one block and in seven.
  Shape const s{2, 300, 32, 4};
  for (float alpha : {0.0f, 0.6f})
    for (int block : {1 << 20, 2 * 43}) {
      Config cfg = short_windows(alpha, 9);
      cfg.bias = true;
      cfg.query_block_rows = block;
      CausalGeneticMultiheadAttention every(TEST_EXECSPACE(), s.embed, s.heads, true, cfg);
      cfg.token_sparse = true;
      cfg.token_keep_ratio = 0.4f;
      CausalGeneticMultiheadAttention sparse(TEST_EXECSPACE(), s.embed, s.heads, true, cfg);
      BatchTensor const x = make_input(s, 21);
      auto [ye, se] = every.forward(TEST_EXECSPACE(), x, {}, {}, {}, true);
      auto [ys, ss] = sparse.forward(TEST_EXECSPACE(), x, {}, {}, {}, true);
      TokenMatrix const rows(x.data(), s.batch * s.tokens, s.embed);
      auto keep = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), sparse.route(TEST_EXECSPACE(), rows, s.batch).keep);
      auto bias = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), sparse.weights().out_bias);
      long kept = 0;
      double worst_kept = 0.0, worst_dropped = 0.0;
      for (int b = 0; b < s.batch; ++b) {
        Matrix const a = batch_row(ye, b), k = batch_row(ys, b);
        for (int t = 0; t < s.tokens; ++t) {
          bool const on = keep(b * s.tokens + t) != 0;
          kept += on ? 1 : 0;
          for (int e = 0; e < s.embed; ++e) {
            if (on) worst_kept = std::max(worst_kept, std::fabs(a[t][e] - k[t][e]));
            else worst_dropped = std::max(worst_dropped, std::fabs(k[t][e] - bias(e)));
          }
        }
      }
      CHECK(kept == ss->tokens_kept);
      CHECK(kept > 0);
      CHECK(kept < s.batch * s.tokens / 2);
      CHECK(worst_kept < 1e-6);  // the same kernels on the same rows, up to GEMM blocking
      CHECK(worst_dropped == 0.0);
    }
}

PROTEUS_TEST_CASE("x and y one float off 16-byte alignment give the aligned call's outputs bit for bit",
                  "[module][sparse]") {
  // A caller's tensor may start anywhere: the gather of kept rows, the scatter of their outputs and
  // the output bias (added in y's rows when every token is kept) then move single floats instead
  // of 16-byte pieces, with the same values.
  bool const sparse = GENERATE(true, false);
  INFO("token_sparse " << sparse);
  Shape const s{2, 200, 32, 4};
  Config cfg = short_windows(0.6f, 9);
  cfg.bias = true;
  cfg.dna_update = false;
  cfg.token_sparse = sparse;
  cfg.token_keep_ratio = 0.4f;
  cfg.query_block_rows = 2 * 43;
  CausalGeneticMultiheadAttention mha(TEST_EXECSPACE(), s.embed, s.heads, true, cfg);
  BatchTensor const input = make_input(s, 23);
  long const n = static_cast<long>(s.batch) * s.tokens, size = n * s.embed;
  TokenMatrix const x(input.data(), n, s.embed);
  TokenVector const x_buffer("test::x_buffer", size + 1), y_buffer("test::y_buffer", size + 1);
  TokenMatrix const x_odd(x_buffer.data() + 1, n, s.embed), y_odd(y_buffer.data() + 1, n, s.embed);
  Kokkos::deep_copy(x_odd, x);
  TokenMatrix const y("test::y", n, s.embed);
  PositionVector const positions = token_positions(TEST_EXECSPACE(), s);
  ForwardStats const aligned = mha.run(TEST_EXECSPACE(), x, s.batch, positions, y);
  ForwardStats const odd = mha.run(TEST_EXECSPACE(), x_odd, s.batch, positions, y_odd);
  REQUIRE(aligned.tokens_kept > 0);
  REQUIRE((aligned.tokens_kept < n / 2) == sparse);
  CHECK(odd.tokens_kept == aligned.tokens_kept);
  auto const a = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), y);
  auto const b = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), y_odd);
  long differ = 0;
  for (long i = 0; i < n; ++i)
    for (int e = 0; e < s.embed; ++e) differ += std::memcmp(&a(i, e), &b(i, e), sizeof(float)) != 0 ? 1 : 0;
  CHECK(differ == 0);
}

PROTEUS_TEST_CASE("buffers kept between calls: one module over inputs of changing size gives a fresh module's outputs",
          "[module][workspace]") {
  // The module keeps its scratch (routing, masks, compacted rows, query rows) between calls and
  // reuses it whenever it is large enough: long, short, long again, with token sparsity and
  // several query blocks, must each equal what a newly built module outputs.
  Config cfg = short_windows(0.6f, 5);
  cfg.token_sparse = true;
  cfg.token_keep_ratio = 0.5f;
  cfg.query_block_rows = 2 * 70;
  CausalGeneticMultiheadAttention reused(TEST_EXECSPACE(), 32, 4, true, cfg);
  int step = 0;
  for (Shape const s : {Shape{2, 260, 32, 4}, Shape{1, 90, 32, 4}, Shape{2, 301, 32, 4}}) {
    CAPTURE(step++);
    CausalGeneticMultiheadAttention fresh(TEST_EXECSPACE(), s.embed, s.heads, true, cfg);
    BatchTensor const x = make_input(s, 30 + step);
    auto [yr, sr] = reused.forward(TEST_EXECSPACE(), x, {}, {}, {}, true);
    auto [yf, sf] = fresh.forward(TEST_EXECSPACE(), x, {}, {}, {}, true);
    CHECK(sr->tokens_kept == sf->tokens_kept);
    CHECK(sr->active_rows == sf->active_rows);
    CHECK(sr->mean_candidates == sf->mean_candidates);
    for (int b = 0; b < s.batch; ++b) CHECK(batch_row(yr, b) == batch_row(yf, b));  // same kernels, same rows
  }
}

PROTEUS_TEST_CASE("two runs with one seed are bit-identical, DNA included", "[module][determinism]") {
  Shape const s{2, 700, 32, 4};
  auto run_once = [&] {
    Config cfg;
    cfg.seed = 77;
    cfg.token_sparse = true;
    cfg.token_keep_ratio = 0.5f;
    cfg.mode = AlphaMode::fixed;
    cfg.alpha = 0.6f;
    CausalGeneticMultiheadAttention mha(TEST_EXECSPACE(), s.embed, s.heads, true, cfg);
    BatchTensor x = make_input(s, 4);
    mha.forward(TEST_EXECSPACE(), x);
    auto [y, st] = mha.forward(TEST_EXECSPACE(), x);
    return std::make_pair(batch_row(y, 1), test::to_host_matrix(mha.dna().prototypes));
  };
  auto first = run_once();
  auto second = run_once();
  CHECK(first.first == second.first);
  CHECK(first.second == second.second);
}

namespace {
// The two calls of the reduced-precision cases below: alpha 1 over a shortlist of 96, dense
// (subquad's plan at alpha 1) or with half the tokens kept.
Config shortlist_call(Config c, bool sparse) {
  c.mode = sparse ? AlphaMode::fixed : AlphaMode::subquad;
  c.alpha = 1.0f;
  c.token_sparse = sparse;
  c.token_keep_ratio = 0.5f;
  c.linear_L = 96;
  c.window = 48;
  return c;
}

// Two forwards that chose the same work: mode, kept tokens, active rows and candidates.
void check_same_work(ForwardStats const& a, ForwardStats const& b) {
  CHECK(a.mode == b.mode);
  CHECK(a.tokens_kept == b.tokens_kept);
  CHECK(a.active_rows == b.active_rows);
  CHECK(a.mean_candidates == b.mean_candidates);
}
}  // namespace

PROTEUS_TEST_CASE("TF32 projections choose what FP32 chooses and stay within TF32 rounding of it", "[module][tf32]") {
  // Shapes large enough that cuBLAS takes its tensor-core kernels (T = 1024, E = 256).
  Shape const s{1, 1024, 256, 8};
  Config cfg;
  cfg.seed = 17;
  cfg.dna_update = false;
  cfg.tf32_projections = true;
  if (!tf32_available()) {
    // Builds without cuBLAS refuse the option by name instead of silently computing in FP32.
    std::string what = "no error";
    try {
      CausalGeneticMultiheadAttention(TEST_EXECSPACE(), s.embed, s.heads, true, cfg);
    } catch (proteus::Error const& e) {
      what = e.what();
    }
    CHECK(what.find("tf32_projections") != std::string::npos);
    return;
  }
  BatchTensor x = make_input(s, 71);
  Matrix const xb = batch_row(x, 0);
  for (bool sparse : {false, true}) {
    Config const c = shortlist_call(cfg, sparse);
    Config f = c;
    f.tf32_projections = false;
    CausalGeneticMultiheadAttention tf32(TEST_EXECSPACE(), s.embed, s.heads, true, c), fp32(TEST_EXECSPACE(), s.embed, s.heads, true, f);
    auto [yt, st] = tf32.forward(TEST_EXECSPACE(), x, {}, {}, {}, true);
    auto [yf, sf] = fp32.forward(TEST_EXECSPACE(), x, {}, {}, {}, true);
    INFO((sparse ? "sparse shortlist" : "dense"));
    // Routing, token and head sparsity use FP32 GEMMs in both: the same work is selected.
    check_same_work(*st, *sf);
    // TF32 keeps 10 of FP32's 23 mantissa bits (unit roundoff u = 2^-11 = 4.9e-4). Three GEMMs in
    // a row with FP32 sums give a norm-relative drift of a few u; 5e-3 (10 u) bounds it. An FP32
    // GEMM on these shapes drifts by ~1e-7, so a drift above 1e-5 shows that TF32 was in effect.
    double const drift = test::relative_error(batch_row(yt, 0), batch_row(yf, 0));
    INFO("relative drift TF32 vs FP32 " << drift);
    CHECK(drift > 1e-5);
    CHECK(drift < 5e-3);
    if (!sparse) {
      Matrix const ref = dense_reference(fp32, xb);
      CHECK(test::relative_error(batch_row(yf, 0), ref) < 1e-5);
      CHECK(test::relative_error(batch_row(yt, 0), ref) < 5e-3);
    }
  }
}

PROTEUS_TEST_CASE("BF16 keys and values or projections choose what FP32 chooses, within BF16 rounding of it",
                  "[module][bfloat16]") {
  // BF16 keeps 8 significant bits (unit roundoff u = 2^-9 = 2.0e-3). kv_bf16 rounds keys and values
  // once: a score's error is at most u |q||k| and a context's a few u of its norm, which the output
  // projection keeps; 1e-2 (5 u) bounds the norm-relative drift. bf16_projections rounds both
  // operands of each of the three GEMMs: a product carries at most 2u, so an output ~2u of its norm
  // per GEMM, and the three in a row (with K|V's rounding on top) stay below 6-7u; 2e-2 (10 u)
  // bounds it. A drift above 1e-4 shows that BF16 was in effect (FP32 against itself: ~1e-7).
  struct Variant {
    bool kv_bf16, projections;
    double bound;
  };
  Shape const s{2, 600, 64, 4};
  BatchTensor x = make_input(s, 73);
  for (Variant const v : {Variant{true, false, 1e-2}, Variant{false, true, 2e-2}, Variant{true, true, 2e-2}})
    for (bool sparse : {false, true}) {
      Config base;
      base.seed = 19;
      base.dna_update = false;
      Config const f = shortlist_call(base, sparse);
      Config b = f;
      b.kv_bf16 = v.kv_bf16;
      b.bf16_projections = v.projections;
      b.query_block_rows = 256;  // queries in blocks of 256 rows, K|V projected and rounded in stages of
      b.kv_stage_rows = 100;     // 100: the batch's 1200 rows in 5 and 12
      CausalGeneticMultiheadAttention fp32(TEST_EXECSPACE(), s.embed, s.heads, true, f),
          bf16(TEST_EXECSPACE(), s.embed, s.heads, true, b);
      auto [yf, sf] = fp32.forward(TEST_EXECSPACE(), x, {}, {}, {}, true);
      auto [yb, sb] = bf16.forward(TEST_EXECSPACE(), x, {}, {}, {}, true);
      INFO((sparse ? "sparse shortlist" : "dense") << ", kv_bf16 " << v.kv_bf16 << ", bf16_projections "
                                                   << v.projections);
      // Routing, DNA and selection keep FP32 and never read K|V: the same work is selected.
      check_same_work(*sb, *sf);
      for (int r = 0; r < s.batch; ++r) {
        double const drift = test::relative_error(batch_row(yb, r), batch_row(yf, r));
        INFO("batch row " << r << ": relative drift vs FP32 " << drift);
        CHECK(drift > 1e-4);
        CHECK(drift < v.bound);
      }
    }
  Config both;
  both.tf32_projections = both.bf16_projections = true;
  CHECK(message([&] { CausalGeneticMultiheadAttention(TEST_EXECSPACE(), 64, 4, true, both); })
            .find("bf16_projections") != std::string::npos);
}

PROTEUS_TEST_CASE("bad input gives a clear error naming the argument", "[module][errors]") {
  CHECK(message([] { CausalGeneticMultiheadAttention(TEST_EXECSPACE(), 30, 4); }).find("embed_dim") != std::string::npos);
  CHECK(message([] { CausalGeneticMultiheadAttention(TEST_EXECSPACE(), 36, 4); }).find("RoPE") != std::string::npos);
  Config bad_alpha;
  bad_alpha.alpha = 1.5f;
  CHECK(message([&] { CausalGeneticMultiheadAttention(TEST_EXECSPACE(), 32, 4, true, bad_alpha); }).find("alpha") !=
        std::string::npos);

  CausalGeneticMultiheadAttention mha(TEST_EXECSPACE(), 32, 4);
  Shape const s{1, 10, 32, 4};
  BatchTensor x = make_input(s, 1);
  CHECK(message([&] { mha.forward(TEST_EXECSPACE(), make_input(Shape{1, 10, 16, 4}, 1)); }).find("query") !=
        std::string::npos);
  BatchTensor other = make_input(s, 2);
  CHECK(message([&] { mha.forward(TEST_EXECSPACE(), x, other, other); }).find("cross-attention") !=
        std::string::npos);
  auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), x);
  h(0, 3, 5) = std::nanf("");
  Kokkos::deep_copy(x, h);
  CHECK(message([&] { mha.forward(TEST_EXECSPACE(), x); }).find("query: contains 1 NaN") != std::string::npos);
  CausalGeneticMultiheadAttention::AttnMask full("mask", 10, 10);
  Kokkos::deep_copy(full, std::uint8_t(1));
  CHECK(message([&] { mha.forward(TEST_EXECSPACE(), make_input(s, 1), {}, {}, {}, false, full); })
            .find("attn_mask") != std::string::npos);
}

// check_finite counts every non-finite entry of a matrix and none outside it: a contiguous one in
// one flat pass (four entries per work item where it starts 16-byte aligned, the last size % 4
// one each; one entry per item where it does not), a column block of a wider matrix (rows padded by
// the columns left out) by row.
PROTEUS_TEST_CASE("check_finite counts NaN and Inf inside the matrix only", "[module][errors]") {
  TokenMatrix wide("wide", 5, 7);
  auto h = Kokkos::create_mirror_view(wide);
  Kokkos::deep_copy(h, 1.0f);
  h(0, 0) = std::nanf("");
  h(2, 3) = INFINITY;
  h(4, 6) = -INFINITY;
  h(1, 5) = std::nanf("");  // outside the column block [0, 4) below
  Kokkos::deep_copy(wide, h);
  auto error = [](TokenMatrix const& m) {
    try {
      check_finite(TEST_EXECSPACE(), m, "m");
    } catch (Error const& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(wide.span_is_contiguous());
  REQUIRE(reinterpret_cast<std::uintptr_t>(wide.data()) % 16 == 0);  // 35 entries: 8 quads (3 NaN/Inf), 3 more
  CHECK(error(wide) == "m: contains 4 NaN or Inf value(s)");
  TokenMatrix const from_row_1 = Kokkos::subview(wide, std::make_pair(1, 5), Kokkos::ALL);  // 28 bytes in
  REQUIRE(from_row_1.span_is_contiguous());
  REQUIRE(reinterpret_cast<std::uintptr_t>(from_row_1.data()) % 16 != 0);
  CHECK(error(from_row_1) == "m: contains 3 NaN or Inf value(s)");
  TokenMatrix const block = Kokkos::subview(wide, Kokkos::ALL, std::make_pair(0, 4));
  REQUIRE_FALSE(block.span_is_contiguous());
  CHECK(error(block) == "m: contains 2 NaN or Inf value(s)");
  TokenMatrix const clean = Kokkos::subview(wide, std::make_pair(3, 4), std::make_pair(0, 6));
  CHECK(error(clean) == "no error");
}

// RunOptions::check_input counts the input's NaN/Inf on the device and throws at the call's first
// wait (the first query block's sizes), or at the end of the attention when no block ran. The
// failed calls leave nothing behind: the DNA (updated on every call here) and the next call's
// output have the bits of a module that never saw them. With DNA on the check reads the token
// norms, without it x's entries: both are run.
PROTEUS_TEST_CASE("a checked call with NaN input throws naming the query and changes no state", "[module][errors]") {
  Shape const s{2, 40, 32, 4};
  Config cfg;
  cfg.dna_update = true;
  cfg.dna_enable = GENERATE(true, false);
  cfg.token_sparse = true;
  CausalGeneticMultiheadAttention failed(TEST_EXECSPACE(), s.embed, s.heads, true, cfg);
  CausalGeneticMultiheadAttention fresh(TEST_EXECSPACE(), s.embed, s.heads, true, cfg);
  long const n = static_cast<long>(s.batch) * s.tokens;
  BatchTensor const clean = make_input(s, 31), dirty = make_input(s, 31);
  auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), dirty);
  h(0, 2, 1) = std::nanf("");        // in the first four-entry load
  h(1, 39, 31) = -INFINITY;          // the last entry
  Kokkos::deep_copy(dirty, h);
  PositionVector const positions = token_positions(TEST_EXECSPACE(), s);
  TokenMatrix const y_failed("test::y_failed", n, s.embed), y_fresh("test::y_fresh", n, s.embed);
  RunOptions checked;
  checked.check_input = true;
  RunOptions no_rows = checked;
  no_rows.row_begin = no_rows.row_end = s.tokens;  // no query block: the check waits at the end
  TokenMatrix const bad(dirty.data(), n, s.embed), good(clean.data(), n, s.embed);
  TrainingState state;
  std::string const expected = "query: contains 2 NaN or Inf value(s)";
  CHECK(message([&] { failed.run(TEST_EXECSPACE(), bad, s.batch, positions, y_failed, checked); }) == expected);
  CHECK(message([&] { failed.run(TEST_EXECSPACE(), bad, s.batch, positions, y_failed, no_rows); }) == expected);
  CHECK(message([&] { failed.run_training(TEST_EXECSPACE(), bad, s.batch, positions, y_failed, state, checked); }) ==
        expected);
  ForwardStats const a = failed.run(TEST_EXECSPACE(), good, s.batch, positions, y_failed, checked);
  ForwardStats const b = fresh.run(TEST_EXECSPACE(), good, s.batch, positions, y_fresh);
  CHECK(a.tokens_kept == b.tokens_kept);
  auto same_bits = [](auto const& u, auto const& v) {
    auto hu = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), u);
    auto hv = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), v);
    return u.size() == v.size() && std::memcmp(hu.data(), hv.data(), u.size() * sizeof(float)) == 0;
  };
  CHECK(same_bits(y_failed, y_fresh));
  CHECK(same_bits(failed.dna().prototypes, fresh.dna().prototypes));
  CHECK(same_bits(failed.dna().usage, fresh.dna().usage));
  CHECK(same_bits(failed.dna().confidence, fresh.dna().confidence));
}

// With DNA on, the check counts tokens whose norm is NaN or Inf; a norm overflows with finite
// entries too (here 1e20, whose square is past FLT_MAX), and then x's entries decide.
PROTEUS_TEST_CASE("a checked call accepts finite input whose token norms overflow", "[module][errors]") {
  Shape const s{1, 24, 16, 2};
  Config cfg;
  cfg.dna_update = false;
  CausalGeneticMultiheadAttention mha(TEST_EXECSPACE(), s.embed, s.heads, true, cfg);
  REQUIRE(mha.config().dna_enable);
  BatchTensor const x = make_input(s, 41);
  auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), x);
  for (int j = 0; j < s.embed; ++j) h(0, 5, j) = 1e20f;
  Kokkos::deep_copy(x, h);
  TokenMatrix const flat(x.data(), s.tokens, s.embed), y("test::y", s.tokens, s.embed);
  RunOptions checked;
  checked.check_input = true;
  CHECK(message([&] { mha.run(TEST_EXECSPACE(), flat, s.batch, token_positions(TEST_EXECSPACE(), s), y, checked); }) ==
        "no error");
  h(0, 7, 3) = INFINITY;
  Kokkos::deep_copy(x, h);
  CHECK(message([&] { mha.run(TEST_EXECSPACE(), flat, s.batch, token_positions(TEST_EXECSPACE(), s), y, checked); }) ==
        "query: contains 1 NaN or Inf value(s)");
}

PROTEUS_TEST_CASE("the standard causal attn_mask and a key padding mask are accepted", "[module][masks]") {
  Shape const s{2, 12, 16, 2};
  Config cfg;
  cfg.dna_update = false;
  CausalGeneticMultiheadAttention mha(TEST_EXECSPACE(), s.embed, s.heads, true, cfg);
  BatchTensor x = make_input(s, 6);
  CausalGeneticMultiheadAttention::AttnMask causal("causal", s.tokens, s.tokens);
  auto hm = Kokkos::create_mirror_view(causal);
  for (int i = 0; i < s.tokens; ++i)
    for (int j = 0; j < s.tokens; ++j) hm(i, j) = j > i;
  Kokkos::deep_copy(causal, hm);
  auto [y0, s0] = mha.forward(TEST_EXECSPACE(), x);
  auto [y1, s1] = mha.forward(TEST_EXECSPACE(), x, {}, {}, {}, false, causal);
  CHECK(batch_row(y0, 1) == batch_row(y1, 1));
  CausalGeneticMultiheadAttention::PaddingMask pad("pad", s.batch, s.tokens);
  auto hp = Kokkos::create_mirror_view(pad);
  for (int t = 0; t < s.tokens; ++t) hp(1, t) = 1;  // batch row 1 fully padded
  Kokkos::deep_copy(pad, hp);
  auto [y2, s2] = mha.forward(TEST_EXECSPACE(), x, {}, {}, pad);
  for (auto const& row : batch_row(y2, 1))
    for (double v : row) CHECK(v == 0.0);
  CHECK(batch_row(y2, 0) == batch_row(y0, 0));
}

PROTEUS_TEST_CASE("the module's routing (one GEMM for the router and the DNA) equals the stage functions'",
                  "[module][routing]") {
  // route() stacks W_router over the prototypes for one GEMM and reads the logits and the dot
  // products as columns of its output; the stage functions take them one at a time, in matrices of
  // their own. The salience (the largest cosine) shows that the DNA's columns are the right ones.
  for (bool dna : {true, false}) {
    Config cfg;
    cfg.seed = 23;
    cfg.dna_enable = dna;
    cfg.dna_threshold = 0.05f;  // some tokens blend at this size
    CausalGeneticMultiheadAttention mha(TEST_EXECSPACE(), 64, 4, true, cfg);
    long const n = 97;
    TokenMatrix const x = test::to_device(test::random_matrix(n, 64, 29));
    RoutingResult const r = mha.route(TEST_EXECSPACE(), x, 1);
    Config const& c = mha.config();
    GateMatrix rp("rp", n, c.num_gates), sim("sim", n, c.num_gates);
    router_probabilities(TEST_EXECSPACE(), x, mha.weights().router_weight, rp);
    if (dna) dna_similarity(TEST_EXECSPACE(), x, mha.dna().prototypes, sim);
    Routing want = Routing::allocate(static_cast<int>(n), c.num_gates);
    hybrid_route(TEST_EXECSPACE(), c, rp, dna ? sim : GateMatrix(), mha.dna(), want);
    Matrix const got_gp = test::to_host_matrix(r.routing.gate_probs), want_gp = test::to_host_matrix(want.gate_probs);
    auto const got_sal = test::to_host_vector(r.routing.salience), want_sal = test::to_host_vector(want.salience);
    auto const got_imp = test::to_host_vector(r.routing.importance), want_imp = test::to_host_vector(want.importance);
    auto const beta = test::to_host_vector(want.beta);
    double gap = 0.0, largest_salience = 0.0;
    long blended = 0;
    for (long t = 0; t < n; ++t) {
      for (int g = 0; g < c.num_gates; ++g) gap = std::max(gap, std::fabs(got_gp[t][g] - want_gp[t][g]));
      gap = std::max({gap, std::fabs(got_sal[t] - want_sal[t]), std::fabs(got_imp[t] - want_imp[t])});
      largest_salience = std::max(largest_salience, std::fabs(want_sal[t]));
      blended += beta[t] > 0.0;
    }
    INFO("DNA " << dna << ": largest gap " << gap << ", tokens blended " << blended);
    CHECK(gap <= 1e-6);  // float sums of 64 products in another order, through the same kernels
    CHECK((largest_salience > 0.05) == dna);
    if (dna) CHECK(blended > 0);
  }
}

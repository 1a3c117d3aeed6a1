// Parity with the upstream PyTorch module on recorded vectors (tests/data/parity, made by
// tools/reference/make_vectors.py on the GPU machine). proteus is configured with upstream's rules
// (nucleus head count over the whole call, budget cap L_max = 512, no dense switch by density)
// and the file's weights and DNA; every stage is compared with what upstream computed:
// selections (token mask, head count, head mask, shortlist budget and candidate sets) exactly,
// floats within 1e-4 relative to the tensor's scale (FP32 kernels on both sides, different
// summation orders).
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "proteus/checkpoint.hpp"
#include "proteus/detail/hdf5_io.hpp"
#include "proteus/gating.hpp"
#include "proteus/multihead_attention.hpp"
#include "proteus/shortlist.hpp"
#include "parity_helpers.hpp"
#include "test_space.hpp"

using namespace proteus;
using detail::H5File;
using test::mismatches;
using test::scaled_error;
using test::to_device;
using test::to_host;

namespace {

std::vector<std::string> parity_files() {
  std::vector<std::string> files;
  for (auto const& e : std::filesystem::directory_iterator(PROTEUS_PARITY_DIR))
    if (e.path().extension() == ".h5") files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  return files;
}

// proteus with upstream's rules and the file's shape (see docs/parity.md).
Config upstream_config(H5File const& f) {
  Config c;
  c.embed_dim = static_cast<int>(f.attr_int("/parity", "embed_dim"));
  c.num_heads = static_cast<int>(f.attr_int("/parity", "num_heads"));
  c.num_gates = static_cast<int>(f.attr_int("/parity", "num_gates"));
  c.dna_enable = f.attr_int("/parity", "dna") != 0;
  double const keep = f.attr_double("/parity", "token_keep_ratio");
  c.token_sparse = keep > 0;
  c.token_keep_ratio = keep > 0 ? static_cast<float>(keep) : 1.0f;
  c.token_keep_guard = 4;
  c.heads_active_min = std::min(2, c.num_heads);
  c.heads_active_max = std::min(16, c.num_heads);
  c.nucleus_per_token = false;  // upstream: nucleus over the mean head probabilities of the call
  c.force_dense_threshold = 0;  // upstream's density switch is off in the recorded runs
  c.L_max = 512;                // upstream's cap (ours is 0: no cap)
  c.mode = AlphaMode::fixed;
  c.alpha = static_cast<float>(f.attr_double("/parity", "alpha"));
  return c;
}

}  // namespace

PROTEUS_TEST_CASE("proteus matches upstream stage by stage on recorded vectors", "[parity]") {
  std::vector<std::string> const files = parity_files();
  REQUIRE(files.size() >= 6);
  TEST_EXECSPACE space;
  for (std::string const& path : files) {
    INFO(path);
    H5File f(path, "r");
    Config const cfg = upstream_config(f);
    long const B = f.attr_int("/parity", "batch"), T = f.attr_int("/parity", "tokens");
    long const n = B * T;
    int const E = cfg.embed_dim, H = cfg.num_heads, G = cfg.num_gates;
    CausalGeneticMultiheadAttention model(TEST_EXECSPACE(), cfg);
    load_model(space, path, model);  // weights, DNA before the call, gate_to_head checked
    Config const& rc = model.config();

    std::vector<float> xs;
    f.read("/parity/x", {hsize_t(B), hsize_t(T), hsize_t(E)}, xs);
    TokenMatrix const x = to_device<TokenMatrix>("x", xs, n, E);

    // Stages 1-3: router, DNA blend, importance, token mask.
    RoutingResult const routed = model.route(space, x, static_cast<int>(B));
    CHECK(routed.alpha == Approx(f.attr_double("/parity", "alpha")));
    std::vector<float> ref;
    f.read("/parity/gate_probs", {hsize_t(B), hsize_t(T), hsize_t(G)}, ref);
    CHECK(scaled_error(to_host(routed.routing.gate_probs), ref) < 1e-4);
    f.read("/parity/importance", {hsize_t(B), hsize_t(T)}, ref);
    CHECK(scaled_error(to_host(routed.routing.importance), ref) < 1e-4);
    if (cfg.dna_enable) {
      f.read("/parity/salience", {hsize_t(B), hsize_t(T)}, ref);
      CHECK(scaled_error(to_host(routed.routing.salience), ref) < 1e-4);
      f.read("/parity/beta", {hsize_t(B), hsize_t(T)}, ref);
      CHECK(scaled_error(to_host(routed.routing.beta), ref) < 1e-4);
    }
    std::vector<std::int32_t> token_mask, head_mask;
    f.read("/parity/token_mask", {hsize_t(B), hsize_t(T)}, token_mask);
    CHECK(mismatches(to_host(routed.keep), token_mask) == 0);

    // Stage 4: gates to heads, head count K, per-token top-K heads.
    GateMatrix head_probs("head_probs", n, H);
    head_probabilities(space, routed.routing.gate_probs, model.head_gates(), head_probs);
    HeadCount const hc = choose_head_count(space, rc, T, routed.alpha, head_probs);
    CHECK(hc.k == f.attr_int("/parity", "top_k"));
    CHECK(hc.adaptive == f.attr_int("/parity", "nucleus_k"));
    MaskMatrix mask("head_mask", n, H);
    select_heads(space, rc, head_probs, hc, routed.alpha, routed.keep, mask);
    f.read("/parity/head_mask", {hsize_t(B), hsize_t(T), hsize_t(H)}, head_mask);
    CHECK(mismatches(to_host(mask), head_mask) == 0);

    // Stage 6: budget and candidate sets of the recorded rows.
    ShortlistPlan const plan = plan_shortlist(rc, T, routed.alpha);
    bool const dense = f.attr_string("/parity", "mode").rfind("dense", 0) == 0;
    CHECK(plan.dense == dense);
    if (!dense) {
      CHECK(plan.budget == f.attr_int("/parity", "shortlist_effective_L"));
      CHECK(plan.window == f.attr_int("/parity", "shortlist_window"));
      CHECK(plan.anchor_cap == f.attr_int("/parity", "shortlist_anchor_cap"));
      CHECK(plan.anchor_stride == f.attr_int("/parity", "shortlist_anchor_stride"));
      std::vector<std::int64_t> rows, lengths, index, bh;
      f.read("/parity/candidates/row", {0}, rows);
      f.read("/parity/candidates/bh", {rows.size()}, bh);
      f.read("/parity/candidates/length", {rows.size()}, lengths);
      auto const dims = f.read("/parity/candidates/index", {rows.size(), 0}, index);
      long same = 0;
      for (size_t r = 0; r < rows.size(); ++r) {
        // The row is active for its head in our head mask too.
        long const b = bh[r] / H, h = bh[r] % H;
        REQUIRE(head_mask[(b * T + rows[r]) * H + h] == 1);
        std::set<long> ours;
        for_each_candidate(plan, rows[r], nullptr, [&](long j) { ours.insert(j); });
        std::set<long> theirs(index.begin() + r * dims[1], index.begin() + r * dims[1] + lengths[r]);
        same += ours == theirs ? 1 : 0;
      }
      CHECK(same == static_cast<long>(rows.size()));
    }

    // The whole forward (stages 1-7) and the DNA after its EMA update.
    PositionVector positions("positions", n);
    Kokkos::parallel_for(
        "positions", Kokkos::RangePolicy<ExecSpace>(space, 0, n), KOKKOS_LAMBDA(long i) { positions(i) = i % T; });
    TokenMatrix y("y", n, E);
    ForwardStats const st = model.run(space, x, static_cast<int>(B), positions, y);
    CHECK(st.heads_k == hc.k);
    f.read("/parity/y", {hsize_t(B), hsize_t(T), hsize_t(E)}, ref);
    double const y_error = scaled_error(to_host(y), ref);
    CHECK(y_error < 1e-4);
    if (cfg.dna_enable) {
      f.read("/dna_after/prototypes", {hsize_t(G), hsize_t(E)}, ref);
      CHECK(scaled_error(to_host(model.dna().prototypes), ref) < 1e-4);
      f.read("/dna_after/usage", {hsize_t(G)}, ref);
      CHECK(scaled_error(to_host(model.dna().usage), ref) < 1e-4);
      f.read("/dna_after/confidence", {hsize_t(G)}, ref);
      CHECK(scaled_error(to_host(model.dna().confidence), ref) < 1e-4);
    }
    std::printf("parity %s: K %d, L %ld, kept %ld, output error %.2e\n",
                std::filesystem::path(path).filename().c_str(), hc.k, plan.budget, routed.tokens_kept, y_error);
  }
}

PROTEUS_TEST_CASE("where proteus departs from upstream on purpose, the difference is the intended one", "[parity]") {
  std::string const path = std::string(PROTEUS_PARITY_DIR) + "/e32_t4096_a03_dna.h5";
  H5File f(path, "r");
  TEST_EXECSPACE space;
  long const T = f.attr_int("/parity", "tokens");
  int const E = static_cast<int>(f.attr_int("/parity", "embed_dim"));
  std::vector<float> xs, ref;
  f.read("/parity/x", {1, hsize_t(T), hsize_t(E)}, xs);
  f.read("/parity/y", {1, hsize_t(T), hsize_t(E)}, ref);
  TokenMatrix const x = to_device<TokenMatrix>("x", xs, T, E);
  // Output of a model with the file's weights and DNA at the given positions (p * stride + shift).
  auto output = [&](Config const& c, long stride, long shift) {
    CausalGeneticMultiheadAttention m(TEST_EXECSPACE(), c);
    load_model(space, path, m);
    std::vector<Position> at(T);
    for (long i = 0; i < T; ++i) at[i] = i * stride + shift;
    PositionVector const pos = to_device<PositionVector>("positions", at, T);
    TokenMatrix y("y", T, E);
    ForwardStats const st = m.run(space, x, 1, pos, y);
    return std::make_pair(to_host(y), st);
  };
  Config const upstream = upstream_config(f);

  // Budget: upstream caps L at 512 for every T >= 512, so alpha between 0 and 1 changes nothing
  // there; our default (L_max = 0) lets L slide: 0.3 L_lin + 0.7 min(T, window + T/32).
  Config ours = upstream;
  ours.L_max = 0;
  ShortlistPlan const a = plan_shortlist(upstream.resolved(), T, 0.3), b = plan_shortlist(ours.resolved(), T, 0.3);
  CHECK(a.budget == 512);
  CHECK(b.budget == static_cast<long>(0.3 * 512 + 0.7 * std::min<long>(T, 512 + T / 32)));

  // RoPE on original positions: a constant shift changes nothing (RoPE is relative), so upstream's
  // renumbering from 0 and our original positions agree on a contiguous run of tokens ...
  auto const shifted = output(upstream, 1, 1000);
  CHECK(scaled_error(shifted.first, ref) < 1e-4);
  // ... and differ where the tokens are spread out in the sequence (a buffer of salient tokens),
  // where upstream would renumber them 0..S-1 and lose their distances.
  auto const spread = output(upstream, 37, 0);
  CHECK(scaled_error(spread.first, ref) > 1e-2);

  // Nucleus head count: upstream takes it from the mean head probabilities of the whole call, so
  // later tokens change how many heads earlier tokens get; ours (per token) keeps it causal. The
  // count per token never exceeds the length schedule's.
  Config causal = upstream;
  causal.nucleus_per_token = true;
  auto const per_token = output(causal, 1, 0);
  CHECK(per_token.second.heads_by_length >= upstream.resolved().heads_active_min);
  CHECK(per_token.second.mean_active_heads <= per_token.second.heads_by_length);
}

// Stage 6a: the alpha budget law and candidate sets against a brute-force construction of the
// same rule (the attention over those sets is tests/test_attention.cpp).
#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "proteus/attention.hpp"
#include "proteus/detail/softmax_state.hpp"
#include "proteus/shortlist.hpp"
#include "test_space.hpp"
#include "reference.hpp"
#include "shortlist_reference.hpp"

using namespace proteus;
using test::brute_candidates;

namespace {

std::vector<long> kernel_rule_candidates(ShortlistPlan const& p, long i, Position const* dna) {
  std::vector<long> out;
  for_each_candidate(p, i, dna, [&](long c) { out.push_back(c); });
  return out;
}

Config upstream_dropin() {
  Config c;
  c.embed_dim = 64;
  c.num_heads = 4;
  c.L_max = 512;
  c.dense_alpha_cutoff = -1.0f;  // sizes only: keep the shortlist at alpha 0 too
  return c.resolved();
}

// A plan of T tokens whose rows have every kind of extra candidate: a window of 12, anchors every
// 5 rows, DNA candidates, and rows [0, prefix) as a global prefix.
ShortlistPlan extras_plan(long tokens, long prefix) {
  Config c;
  c.embed_dim = 32;
  c.num_heads = 2;
  c.linear_L = 40;
  c.L_min = 8;
  c.window = 12;
  c.anchor_stride = 5;
  c.use_dna_candidates = true;
  ShortlistPlan p = plan_shortlist(c.resolved(), tokens, 0.8);
  p.prefix = prefix;
  p.local_floor = prefix;
  return p;
}

// A block's DNA list (-1 ends it) cut or padded to the plan's dna_cap entries.
std::vector<Position> dna_list(ShortlistPlan const& p, std::vector<Position> list) {
  list.resize(p.dna_cap, -1);
  return list;
}

}  // namespace

TEST_CASE("budget law reproduces upstream's sizes with L_max = 512", "[shortlist][plan]") {
  Config const c = upstream_dropin();
  struct Row {
    long tokens;
    double alpha;  // < 0: from the auto ramp
    long local, anchors;
  };
  // Computed from upstream's _compute_effective_linear_params (see UPSTREAM_NOTES.md, 2.9).
  for (Row r : {Row{1024, -1, 452, 60}, Row{4096, -1, 434, 78}, Row{16384, -1, 362, 150},
                Row{20000, -1, 341, 171}, Row{65536, 0.0, 458, 54}, Row{65536, 0.3, 422, 90},
                Row{65536, 0.5, 398, 114}}) {
    double const alpha = r.alpha < 0 ? resolve_alpha(c, r.tokens) : r.alpha;
    ShortlistPlan const p = plan_shortlist(c, r.tokens, alpha);
    INFO("T = " << r.tokens << ", alpha = " << alpha);
    CHECK(p.budget == 512);
    CHECK(p.local_width == r.local);
    CHECK(p.anchor_cap == r.anchors);
  }
}

TEST_CASE("alpha slides from dense to a fixed budget", "[shortlist][plan]") {
  Config c;
  c.embed_dim = 64;
  c.num_heads = 4;
  c = c.resolved();
  CHECK(plan_shortlist(c, 100000, 0.0).dense);
  ShortlistPlan const mid = plan_shortlist(c, 100000, 0.3);
  ShortlistPlan const lin4k = plan_shortlist(c, 4096, 1.0), lin1m = plan_shortlist(c, 1 << 20, 1.0);
  CHECK_FALSE(mid.dense);
  CHECK(mid.budget > lin1m.budget);
  CHECK(mid.budget < 100000);
  CHECK(lin4k.budget == 512);
  CHECK(lin1m.budget == 512);
  CHECK(lin4k.local_width == lin1m.local_width);
  CHECK(lin4k.anchor_cap == lin1m.anchor_cap);
}

PROTEUS_TEST_CASE("candidate sets equal a brute-force construction of the same rule", "[shortlist][candidates]") {
  long const T = 700;
  Config c;
  c.embed_dim = 32;
  c.num_heads = 2;
  c.linear_L = 60;
  c.L_min = 8;
  c.window = 20;
  c.use_dna_candidates = true;
  test::Matrix noise = test::random_matrix(1, T, 5);
  std::vector<float> salience(T);
  for (long t = 0; t < T; ++t) salience[t] = static_cast<float>(std::round(noise[0][t] * 4) / 4);  // ties
  TokenVector sal("sal", T);
  auto hs = Kokkos::create_mirror_view(sal);
  for (long t = 0; t < T; ++t) hs(t) = salience[t];
  Kokkos::deep_copy(sal, hs);
  for (auto [stride, alpha] : {std::pair{7L, 0.2}, {7L, 0.6}, {7L, 1.0}, {0L, 0.6}}) {  // stride 0: no anchors
    c.anchor_stride = stride;
    ShortlistPlan const p = plan_shortlist(c.resolved(), T, alpha);
    REQUIRE(p.dna_cap > 0);
    REQUIRE((p.anchor_cap > 0 && p.anchor_stride > 0) == (stride > 0));
    auto lists = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), dna_candidate_lists(TEST_EXECSPACE(), p, sal, 1, T));
    for (long i = 0; i < T; ++i) {
      std::vector<long> got = kernel_rule_candidates(p, i, &lists(i / p.dna_block, 0));
      std::vector<long> sorted = got;
      std::sort(sorted.begin(), sorted.end());
      INFO("anchor stride " << stride << ", alpha " << alpha << ", row " << i);
      CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());  // no duplicates
      CHECK(sorted == brute_candidates(p, i, salience));
      CHECK(static_cast<long>(sorted.size()) <= p.budget);
      CHECK(sorted.back() == i);
    }
  }
}

TEST_CASE("candidate_piece names exactly the candidates for_each_candidate lists, with a global prefix too",
          "[shortlist][candidates][backward]") {
  // The backward walks candidate sets from the key side and keeps a (row, key) pair only under
  // its piece: each candidate must have exactly one piece, and nothing else may have one.
  long const T = 300;
  for (long prefix : {0L, 17L}) {
    ShortlistPlan const p = extras_plan(T, prefix);
    REQUIRE(p.anchor_cap > 0);
    REQUIRE(p.dna_cap > 0);
    std::vector<Position> const dna = dna_list(p, {3, 70, 71, 150, 2, -1});
    for (long i = prefix; i < T; ++i) {  // the global rows themselves are never queries
      std::vector<int> times(T, 0);
      for_each_candidate(p, i, dna.data(), [&](long j) { ++times[j]; });
      for (long j = 0; j < T; ++j) {
        INFO("prefix " << prefix << ", row " << i << ", key " << j);
        int const piece = candidate_piece(p, i, j, dna.data());
        CHECK((piece != piece_none) == (times[j] == 1));
        CHECK(times[j] <= 1);
      }
    }
  }
}

TEST_CASE("lanes take every lanes-th extra candidate, in order, each once",
          "[shortlist][candidates][lanes]") {
  // The attention's lanes split a row's extra candidates: lane l adds the k-th extra for every
  // k % lanes == l, in increasing k (the order fixes the lane's softmax sums bit for bit). That the
  // lanes of a row make their calls together is a matter of speed, seen on a GPU only.
  long const T = 300;
  for (auto [prefix, lanes] : {std::pair{0L, 1}, {0L, 2}, {0L, 4}, {0L, 8}, {17L, 8}}) {
    ShortlistPlan const p = extras_plan(T, prefix);
    REQUIRE(p.dna_cap > 0);
    std::vector<Position> const dna = dna_list(p, {3, 70, 71, 150, 2, 40, 41, 42, 43, 90, 91, -1});
    for (long i = prefix; i < T; i += 7) {
      std::vector<long> extras;  // rows past the window have anchors and DNA candidates
      for_each_extra_candidate(p, i, dna.data(), [&](long j) { extras.push_back(j); });
      for (int lane = 0; lane < lanes; ++lane) {
        std::vector<long> got, expected;
        for (size_t k = lane; k < extras.size(); k += lanes) expected.push_back(extras[k]);
        for_each_extra_of_lane(p, i, dna.data(), lane, lanes, [&](long j) { got.push_back(j); });
        INFO("prefix " << prefix << ", lanes " << lanes << ", lane " << lane << ", row " << i << ", "
                       << extras.size() << " extras");
        CHECK(got == expected);
      }
    }
  }
}

// gate_to_head maps, head counts, per-token head top-K with the nucleus rule, and token top-n,
// each against a sort-based reference.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/detail/sort_keys.hpp"
#include "proteus/error.hpp"
#include "proteus/gating.hpp"
#include "test_space.hpp"
#include "reference.hpp"

using namespace proteus;
using test::Matrix;

namespace {
// A small module's config that keeps 30% of the tokens.
Config token_sparse_config() {
  Config c;
  c.embed_dim = 16;
  c.num_heads = 2;
  c.token_sparse = true;
  c.token_keep_ratio = 0.3f;
  return c;
}
}  // namespace

PROTEUS_TEST_CASE("default gate_to_head is floor(g H / G); a custom map is kept", "[gating]") {
  Config c;
  c.embed_dim = 48;
  c.num_heads = 6;
  c.num_gates = 16;
  Config const r = c.resolved();
  for (int g = 0; g < 16; ++g) CHECK(r.gate_to_head[g] == g * 6 / 16);
  c.gate_to_head = {5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 0, 1, 2, 3, 4, 4};  // head 5 a generalist
  CHECK(c.resolved().gate_to_head == c.gate_to_head);
  c.gate_to_head = {0, 1};
  CHECK_THROWS_AS(c.resolved(), proteus::Error);
  c.gate_to_head.assign(16, 6);
  CHECK_THROWS_AS(c.resolved(), proteus::Error);

  Matrix gp = test::random_matrix(9, 16, 3);
  for (auto& row : gp)
    for (auto& v : row) v = std::fabs(v);
  c.gate_to_head = {5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 0, 1, 2, 3, 4, 4};
  HeadGates const lists = HeadGates::from(c.gate_to_head, 6);
  std::vector<double> const first = test::to_host_vector(lists.first), gates = test::to_host_vector(lists.gates);
  CHECK(first == std::vector<double>{0, 1, 2, 3, 4, 6, 16});
  CHECK(gates == std::vector<double>{10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  CHECK_THROWS_AS(HeadGates::from({0, 6}, 6), proteus::Error);
  GateMatrix hp("hp", 9, 6);
  head_probabilities(TEST_EXECSPACE(), test::to_device(gp), lists, hp);
  Matrix h = test::to_host_matrix(hp);
  for (int t = 0; t < 9; ++t)
    for (int head = 0; head < 6; ++head) {
      float s = 0.0f;  // a serial loop over every gate in gate order: the same float sum, bit for bit
      for (int g = 0; g < 16; ++g) s += c.gate_to_head[g] == head ? float(gp[t][g]) : 0.0f;
      CHECK(float(h[t][head]) == s);
    }
}

TEST_CASE("head schedule matches upstream's recorded counts", "[gating]") {
  Config c;
  c.embed_dim = 512;
  c.num_heads = 32;
  c.heads_active_min = 2;
  c.heads_active_max = 16;
  c.seq_low = 512;
  c.seq_high = 4096;
  c = c.resolved();
  CHECK(heads_for_length(c, 64) == 16);
  CHECK(heads_for_length(c, 512) == 16);
  CHECK(heads_for_length(c, 1024) == 7);
  CHECK(heads_for_length(c, 2048) == 4);
  CHECK(heads_for_length(c, 4096) == 2);
  CHECK(heads_for_length(c, 8192) == 2);
}

PROTEUS_TEST_CASE("per-token head top-K with the nucleus rule equals a sort-based reference", "[gating]") {
  int const T = 200, H = 8;
  for (bool per_token : {true, false})
    for (double alpha : {0.0, 0.4, 1.0}) {
      Config c;
      c.embed_dim = 64;
      c.num_heads = H;
      c.nucleus_per_token = per_token;
      c.router_top_p = 0.7f;
      c = c.resolved();
      Matrix raw = test::random_matrix(T, H, 17);
      for (auto& row : raw)
        for (auto& v : row) v = std::round(std::exp(v) * 4) / 4;  // many ties
      TokenMatrix hp = test::to_device(raw);
      MaskVector keep("keep", T);
      auto hk = Kokkos::create_mirror_view(keep);
      for (int t = 0; t < T; ++t) hk(t) = t % 7 != 3;
      Kokkos::deep_copy(keep, hk);
      HeadCount const hc = choose_head_count(TEST_EXECSPACE(), c, T, alpha, hp);
      MaskMatrix mask("mask", T, H);
      Kokkos::deep_copy(mask, std::uint8_t(1));  // every entry is written, dropped tokens' too
      select_heads(TEST_EXECSPACE(), c, hp, hc, alpha, keep, mask);
      long const pairs = count_active_pairs(TEST_EXECSPACE(), mask);
      auto hm = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), mask);
      long pairs_ref = 0;
      // Sequence-level nucleus reference: mean over tokens.
      std::vector<double> mean(H, 0.0);
      for (int t = 0; t < T; ++t)
        for (int h = 0; h < H; ++h) mean[h] += float(raw[t][h]) / T;
      for (int t = 0; t < T; ++t) {
        std::vector<int> order(H);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return float(raw[t][a]) > float(raw[t][b]); });
        std::vector<double> probs(H);
        for (int h = 0; h < H; ++h) probs[h] = float(raw[t][h]);
        int const nucleus = nucleus_head_count(per_token ? probs : mean, c.router_top_p);
        int const k = mixed_head_count(heads_for_length(c, T), c.heads_active_min, nucleus, c.linear_head_k, alpha);
        std::vector<int> expect(H, 0);
        if (hk(t))
          for (int n = 0; n < k; ++n) expect[order[n]] = 1;
        for (int h = 0; h < H; ++h) {
          INFO("t " << t << " h " << h << " alpha " << alpha << " per_token " << per_token);
          CHECK(int(hm(t, h)) == expect[h]);
          pairs_ref += expect[h];
        }
      }
      CHECK(pairs == pairs_ref);
    }
}

PROTEUS_TEST_CASE("token top-n equals a full-sort reference, ties broken by position", "[gating]") {
  int const B = 2;
  long const T = 1000;
  Config c = token_sparse_config();
  c.token_keep_guard = 4;
  c.token_keep_threshold = 0.9f;
  c = c.resolved();
  Matrix raw = test::random_matrix(1, B * T, 8);
  std::vector<float> imp(B * T);
  for (long i = 0; i < B * T; ++i) imp[i] = static_cast<float>(std::round((raw[0][i] * 0.15 + 0.5) * 20) / 20);
  TokenVector dev("imp", B * T);
  auto h = Kokkos::create_mirror_view(dev);
  for (long i = 0; i < B * T; ++i) h(i) = imp[i];
  Kokkos::deep_copy(dev, h);
  MaskVector keep("keep", B * T);
  double const alpha = 0.5;
  long const kept = select_tokens(TEST_EXECSPACE(), c, dev, B, T, alpha, keep);
  auto hk = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), keep);
  long const n = tokens_to_keep(c, T, alpha);
  CHECK(n == std::lround(token_keep_ratio(c, T, alpha) * T));
  long kept_ref = 0;
  for (int b = 0; b < B; ++b) {
    std::vector<long> order(T);
    std::iota(order.begin(), order.end(), 0L);
    std::stable_sort(order.begin(), order.end(), [&](long x, long y) { return imp[b * T + x] > imp[b * T + y]; });
    std::vector<int> expect(T, 0);
    for (long i = 0; i < n; ++i) expect[order[i]] = 1;
    for (long t = 0; t < T; ++t) {
      if (t < 4 || imp[b * T + t] >= 0.9f) expect[t] = 1;
      CHECK(int(hk(b * T + t)) == expect[t]);
      kept_ref += expect[t];
    }
  }
  CHECK(kept == kept_ref);
}

// What start_nucleus reuses: after one batch row's selection the keys rank every token (score
// descending, ties by position); after two rows, or with every token kept, they are not marked so.
PROTEUS_TEST_CASE("one batch row's token selection leaves its tokens ranked", "[gating]") {
  long const T = 1000;
  Config c = token_sparse_config().resolved();
  Matrix raw = test::random_matrix(1, 2 * T, 9);
  TokenVector dev("imp", 2 * T);
  auto h = Kokkos::create_mirror_view(dev);
  std::vector<std::uint64_t> expect(T);
  for (long i = 0; i < 2 * T; ++i) h(i) = static_cast<float>(std::round(raw[0][i] * 40) / 40);  // ties
  for (long t = 0; t < T; ++t) expect[t] = detail::descending_score_key(h(t), t);
  std::sort(expect.begin(), expect.end());
  Kokkos::deep_copy(dev, h);
  MaskVector keep("keep", 2 * T);
  TokenKeyBuffers buffers;
  auto one_row = Kokkos::subview(dev, std::make_pair(0L, T));
  auto one_keep = Kokkos::subview(keep, std::make_pair(0L, T));
  select_tokens(TEST_EXECSPACE(), c, one_row, 1, T, 1.0, one_keep, buffers);
  REQUIRE(buffers.ranked);
  auto const keys = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), buffers.keys);
  long wrong = 0;
  for (long i = 0; i < T; ++i) wrong += keys(i) != expect[i] ? 1 : 0;
  CHECK(wrong == 0);
  select_tokens(TEST_EXECSPACE(), c, dev, 2, T, 1.0, keep, buffers);
  CHECK_FALSE(buffers.ranked);
  select_tokens(TEST_EXECSPACE(), c, one_row, 1, T, 1.0, one_keep, buffers);
  CHECK(buffers.ranked);
  c.token_sparse = false;
  select_tokens(TEST_EXECSPACE(), c, one_row, 1, T, 1.0, one_keep, buffers);
  CHECK_FALSE(buffers.ranked);
}

PROTEUS_TEST_CASE("the sort with scratch kept between calls equals std::sort, as the scratch grows and is reused",
                  "[gating]") {
  // Sizes that grow the scratch, reuse it for fewer keys, and sort 0 and 1 keys; duplicates too.
  // (On CUDA this is cub's radix sort with its storage in the scratch; elsewhere Kokkos::sort.)
  std::mt19937_64 rng(20261201);
  Kokkos::View<unsigned char*, MemSpace> scratch;
  for (long n : {1000L, 70001L, 513L, 0L, 1L, 4096L}) {
    std::vector<std::uint64_t> keys(n);
    for (auto& k : keys) k = rng() >> (rng() % 2 ? 0 : 40);  // small keys repeat
    Kokkos::View<std::uint64_t*, MemSpace> dev("keys", n);
    auto h = Kokkos::create_mirror_view(dev);
    for (long i = 0; i < n; ++i) h(i) = keys[i];
    Kokkos::deep_copy(dev, h);
    detail::sort(TEST_EXECSPACE(), dev, scratch);
    Kokkos::deep_copy(h, dev);
    std::sort(keys.begin(), keys.end());
    long wrong = 0;
    for (long i = 0; i < n; ++i) wrong += h(i) != keys[i] ? 1 : 0;
    CHECK(wrong == 0);
  }
}

// Stage 6b: the shortlist attention kernels (own-window and union blocks, lanes, value bias)
// against a double-precision softmax over the candidate sets of stage 6a, candidate counts that
// stay flat at alpha = 1, and the online-softmax state merge the lanes use.
#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <random>
#include <set>
#include <vector>
#include "proteus/attention.hpp"
#include "proteus/detail/softmax_state.hpp"
#include "proteus/shortlist.hpp"
#include "test_space.hpp"
#include "reference.hpp"
#include "shortlist_reference.hpp"

using namespace proteus;
using detail::ActiveRows;
using detail::attend;
using detail::compact_active_rows;
using test::brute_candidates;

PROTEUS_TEST_CASE("shortlist attention equals softmax over the candidate set in double", "[shortlist][attention]") {
  // Head widths with kernels of their own (8, 24, 48) and one padded up to the next (20 -> 24).
  int const heads = 3, batch = 2;
  int const d = GENERATE(8, 20, 24, 48);
  CAPTURE(d);
  long const T = 333;
  Config c;
  c.embed_dim = heads * d;
  c.num_heads = heads;
  c.linear_L = 40;
  c.L_min = 8;
  c.window = 16;
  c.anchor_stride = 9;
  c.use_dna_candidates = true;
  c = c.resolved();
  ShortlistPlan const plan = plan_shortlist(c, T, 0.8);
  // q, k, v [(b*H + h)*T + t][j] in double, and the rows the kernel reads: q [B*T x E] and
  // kv [B*T x 2E] (keys | values), head h at columns h*D of each part.
  int const e = heads * d;
  TokenMatrix q("q", batch * T, e), kv("kv", batch * T, 2 * e);
  auto hq = Kokkos::create_mirror_view(q);
  auto hkv = Kokkos::create_mirror_view(kv);
  auto fill = [&](std::uint64_t seed, int part) {
    test::Matrix m = test::random_matrix(batch * heads * T, d, seed);
    for (long i = 0; i < batch * heads * T; ++i) {
      long const bh = i / T, t = i % T, row = (bh / heads) * T + t, h = bh % heads;
      for (int j = 0; j < d; ++j) {
        float const val = static_cast<float>(m[i][j]);
        if (part == 0) hq(row, h * d + j) = val;
        else hkv(row, (part - 1) * e + h * d + j) = val;
      }
    }
    return m;
  };
  test::Matrix const qm = fill(1, 0), km = fill(2, 1), vm = fill(3, 2);
  Kokkos::deep_copy(q, hq);
  Kokkos::deep_copy(kv, hkv);
  test::Matrix sal_m = test::random_matrix(1, batch * T, 4);
  TokenVector sal("sal", batch * T);
  auto hs = Kokkos::create_mirror_view(sal);
  for (long t = 0; t < batch * T; ++t) hs(t) = static_cast<float>(sal_m[0][t]);
  Kokkos::deep_copy(sal, hs);
  // A random half of (token, head) pairs active, and a few tokens dropped entirely.
  MaskMatrix mask("mask", batch * T, heads);
  MaskVector keep("keep", batch * T);
  auto hm = Kokkos::create_mirror_view(mask);
  auto hk = Kokkos::create_mirror_view(keep);
  test::Matrix coin = test::random_matrix(batch * T, heads + 1, 6);
  for (long r = 0; r < batch * T; ++r) {
    hk(r) = coin[r][heads] > -1.5;
    for (int h = 0; h < heads; ++h) hm(r, h) = coin[r][h] > 0.0;
  }
  Kokkos::deep_copy(mask, hm);
  Kokkos::deep_copy(keep, hk);
  // Only kept tokens have query rows: the queries of rows.query_source, in that order.
  auto kept_queries = [&](ActiveRows const& r) {
    auto source = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), r.query_source);
    TokenMatrix out("q_kept", r.queries, e);
    auto ho = Kokkos::create_mirror_view(out);
    for (long i = 0; i < r.queries; ++i)
      for (int j = 0; j < e; ++j) ho(i, j) = hq(source(i), j);
    Kokkos::deep_copy(out, ho);
    return out;
  };
  ActiveRows rows = compact_active_rows(TEST_EXECSPACE(), mask, keep, false, batch, T, 0, T);
  long kept = 0;
  for (long r = 0; r < batch * T; ++r) kept += hk(r) ? 1 : 0;
  CHECK(rows.queries == kept);
  CHECK(kept < batch * T);  // some tokens are dropped, so query rows are compacted
  {  // The sizes counted on the device against a count here: rows per (batch, head), their blocks.
    auto head_start = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), rows.head_start);
    auto block_start = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), rows.block_start);
    long total = 0, blocks = 0;
    for (int bh = 0; bh < batch * heads; ++bh) {
      long n = 0;
      for (long t = 0; t < T; ++t) n += hk((bh / heads) * T + t) && hm((bh / heads) * T + t, bh % heads) ? 1 : 0;
      CHECK(head_start(bh) == total);
      for (long first = 0; first < n; first += detail::attention_block_rows) CHECK(block_start(blocks++) == total + first);
      total += n;
    }
    CHECK(rows.rows == total);
    CHECK(head_start(batch * heads) == total);
    // Every active (batch*head, token) pair in order, with its query row (the kept tokens' order).
    auto row_head = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), rows.head);
    auto row_token = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), rows.token);
    auto row_query = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), rows.query);
    long row = 0, wrong = 0;
    for (int bh = 0; bh < batch * heads; ++bh) {
      long query = 0;
      for (long r = 0; r < (bh / heads) * T; ++r) query += hk(r) ? 1 : 0;
      for (long t = 0; t < T; ++t) {
        long const token = (bh / heads) * T + t;
        if (hk(token) && hm(token, bh % heads) && row < rows.rows)
          wrong += row_head(row) != bh || row_token(row) != t || row_query(row) != query ? 1 : 0, ++row;
        query += hk(token) ? 1 : 0;
      }
    }
    CHECK(row == rows.rows);
    CHECK(wrong == 0);
    CHECK(rows.blocks == blocks);
    CHECK(block_start(blocks) == total);
  }
  auto query_of = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), rows.query_of);
  CandidateLists lists = dna_candidate_lists(TEST_EXECSPACE(), plan, sal, batch, T);
  TokenMatrix ctx("ctx", rows.queries, heads * d);
  Kokkos::View<int*, MemSpace> counts("counts", rows.rows);
  attend(TEST_EXECSPACE(), plan, kept_queries(rows), kv, TokenVector(), rows, lists, heads, ctx, counts);
  auto hc = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), ctx);

  // The same rows a block of query tokens at a time (how the module bounds its memory): queries
  // and context of tokens [t0, t1) only, keys and values of all; every row comes out the same.
  long const block = 70;
  long mismatched = 0, rows_in_blocks = 0;
  for (long t0 = 0; t0 < T; t0 += block) {
    long const len = std::min(block, T - t0);
    ActiveRows const part = compact_active_rows(TEST_EXECSPACE(), mask, keep, false, batch, T, t0, t0 + len);
    TokenMatrix cb("cb", part.queries, e);
    rows_in_blocks += part.rows;
    attend(TEST_EXECSPACE(), plan, kept_queries(part), kv, TokenVector(), part, lists, heads, cb, Kokkos::View<int*, MemSpace>());
    auto hb = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), cb);
    auto block_query = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), part.query_of);
    for (int b = 0; b < batch; ++b)
      for (long i = 0; i < len; ++i) {
        long const mine = block_query(b * len + i), whole = query_of(b * T + t0 + i);
        REQUIRE((mine < 0) == (whole < 0));
        for (int j = 0; j < e && mine >= 0; ++j) mismatched += hb(mine, j) != hc(whole, j) ? 1 : 0;
      }
  }
  CHECK(rows_in_blocks == rows.rows);
  CHECK(mismatched == 0);
  auto hl = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), lists);
  long const blocks = (T + plan.dna_block - 1) / plan.dna_block;
  double worst = 0.0;
  long checked = 0;
  for (int b = 0; b < batch; ++b) {
    std::vector<float> salience(sal_m[0].begin() + b * T, sal_m[0].begin() + (b + 1) * T);
    for (int h = 0; h < heads; ++h)
      for (long i = 0; i < T; ++i) {
        long const row = b * T + i, bh = b * heads + h;
        bool const active = hk(row) && hm(row, h);
        std::vector<double> ref(d, 0.0);
        if (active) {
          std::vector<long> cand = brute_candidates(plan, i, salience);
          std::vector<double> s;
          for (long j : cand) {
            double dot = 0.0;
            for (int e = 0; e < d; ++e) dot += qm[bh * T + i][e] * km[bh * T + j][e];
            s.push_back(dot / std::sqrt(double(d)));
          }
          double const mx = *std::max_element(s.begin(), s.end());
          double z = 0.0;
          for (double& e : s) z += (e = std::exp(e - mx));
          for (size_t n = 0; n < cand.size(); ++n)
            for (int e = 0; e < d; ++e) ref[e] += s[n] / z * vm[bh * T + cand[n]][e];
          ++checked;
        }
        if (!hk(row)) continue;  // a dropped token has no query row
        for (int e = 0; e < d; ++e) worst = std::max(worst, std::fabs(hc(query_of(row), h * d + e) - ref[e]));
      }
    (void)blocks;
    (void)hl;
  }
  CHECK(checked == rows.rows);
  CHECK(worst < 2e-6);  // |v| ~ 1, float accumulation over <= 40 candidates

  // A value bias handed to attend gives what that bias added to every value row gives (a row's
  // weights sum to one); entries of inactive (token, head) pairs stay zero.
  test::Matrix const bias_m = test::random_matrix(1, e, 8);
  TokenVector vb("vb", e);
  auto hvb = Kokkos::create_mirror_view(vb);
  for (int j = 0; j < e; ++j) hvb(j) = static_cast<float>(bias_m[0][j]);
  Kokkos::deep_copy(vb, hvb);
  TokenMatrix kv_biased("kv_biased", batch * T, 2 * e);
  auto hkb = Kokkos::create_mirror_view(kv_biased);
  for (long r = 0; r < batch * T; ++r)
    for (int j = 0; j < 2 * e; ++j) hkb(r, j) = hkv(r, j) + (j >= e ? hvb(j - e) : 0.0f);
  Kokkos::deep_copy(kv_biased, hkb);
  TokenMatrix by_attend("by_attend", rows.queries, e), by_values("by_values", rows.queries, e);
  Kokkos::View<int*, MemSpace> const no_counts;
  attend(TEST_EXECSPACE(), plan, kept_queries(rows), kv, vb, rows, lists, heads, by_attend, no_counts);
  attend(TEST_EXECSPACE(), plan, kept_queries(rows), kv_biased, TokenVector(), rows, lists, heads, by_values, no_counts);
  auto ha = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), by_attend);
  auto hv = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), by_values);
  double gap = 0.0;
  long inactive_nonzero = 0, inactive = 0;
  for (long row = 0; row < batch * T; ++row) {
    if (!hk(row)) continue;
    long const qi = query_of(row);
    for (int h = 0; h < heads; ++h)
      for (int j = 0; j < d; ++j) {
        gap = std::max(gap, static_cast<double>(std::fabs(ha(qi, h * d + j) - hv(qi, h * d + j))));
        if (!hm(row, h)) {
          ++inactive;
          inactive_nonzero += ha(qi, h * d + j) != 0.0f ? 1 : 0;
        }
      }
  }
  CHECK(gap < 5e-6);  // |v + b| ~ 2: float rounding of the two orders of addition
  CHECK(inactive > 0);
  CHECK(inactive_nonzero == 0);
}

// The compaction packs each head's active tokens into words of 32 tokens and places a row by the
// rows before its word and the bits below it: head counts below, at and above a warp, the dense
// path's every head, and ranges that start inside the sequence and end inside a word (33 and 150
// tokens: two and five words per head), against a walk over the masks here.
PROTEUS_TEST_CASE("active rows equal a host walk for any head count, every head and a row range",
                  "[attention][compaction]") {
  int const heads = GENERATE(3, 32, 37, 70);
  bool const all_heads = GENERATE(false, true);
  long const row_end = GENERATE(40L, 157L);
  int const batch = 2;
  long const T = 170, row_begin = 7;
  MaskMatrix mask("mask", batch * T, heads);
  MaskVector keep("keep", batch * T);
  auto hm = Kokkos::create_mirror_view(mask);
  auto hk = Kokkos::create_mirror_view(keep);
  test::Matrix const coin = test::random_matrix(batch * T, heads + 1, 12);
  for (long r = 0; r < batch * T; ++r) {
    hk(r) = coin[r][heads] > -0.5;
    for (int h = 0; h < heads; ++h) hm(r, h) = coin[r][h] > 0.3;
  }
  Kokkos::deep_copy(mask, hm);
  Kokkos::deep_copy(keep, hk);
  detail::ActiveRowsBuffers buffers;
  ActiveRows const rows =
      compact_active_rows(TEST_EXECSPACE(), mask, keep, all_heads, batch, T, row_begin, row_end, buffers);
  auto const head_start = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), rows.head_start);
  auto const row_head = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), rows.head);
  auto const row_token = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), rows.token);
  auto const row_query = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), rows.query);
  long row = 0, wrong = 0, queries = 0, blocks = 0;
  for (int b = 0; b < batch; ++b)
    for (long t = row_begin; t < row_end; ++t) queries += hk(b * T + t) ? 1 : 0;
  for (int bh = 0; bh < batch * heads; ++bh) {
    int const b = bh / heads, h = bh % heads;
    CHECK(head_start(bh) == row);
    long const first_row = row;
    long query = 0;  // the token's query row: kept tokens of the range before it, batch rows first
    for (int before = 0; before < b; ++before)
      for (long t = row_begin; t < row_end; ++t) query += hk(before * T + t) ? 1 : 0;
    for (long t = row_begin; t < row_end; ++t) {
      long const token = b * T + t;
      if (hk(token) && (all_heads || hm(token, h))) {
        bool const ok = row < rows.rows && row_head(row) == bh && row_token(row) == t && row_query(row) == query;
        wrong += ok ? 0 : 1;
        ++row;
      }
      query += hk(token) ? 1 : 0;
    }
    blocks += (row - first_row + detail::attention_block_rows - 1) / detail::attention_block_rows;
  }
  INFO("heads " << heads << " all_heads " << all_heads << " rows " << row_begin << ".." << row_end);
  CHECK(rows.queries == queries);
  CHECK(rows.rows == row);
  CHECK(rows.blocks == blocks);
  CHECK(head_start(batch * heads) == row);
  CHECK(wrong == 0);
  CHECK(row > 0);
}

PROTEUS_TEST_CASE("at alpha = 1 every query sees the same candidate count at T = 4k and 64k", "[shortlist][linear]") {
  Config c;
  c.embed_dim = 8;
  c.num_heads = 1;
  c.anchor_stride = 16;  // so that rows reach a full candidate set well inside 4k
  c = c.resolved();
  std::vector<std::vector<int>> per_t;
  ShortlistPlan plans[2];
  int n = 0;
  for (long T : {4096L, 65536L}) {
    ShortlistPlan const plan = plan_shortlist(c, T, 1.0);
    plans[n++] = plan;
    TokenMatrix q("q", T, 8), kv("kv", T, 2 * 8);  // one head of width 8: q = 0.1, k = 0.2, v = 1
    Kokkos::deep_copy(q, 0.1f);
    Kokkos::deep_copy(Kokkos::subview(kv, Kokkos::ALL, std::make_pair(0, 8)), 0.2f);
    Kokkos::deep_copy(Kokkos::subview(kv, Kokkos::ALL, std::make_pair(8, 16)), 1.0f);
    MaskMatrix mask("mask", T, 1);
    MaskVector keep("keep", T);
    Kokkos::deep_copy(mask, std::uint8_t(1));
    Kokkos::deep_copy(keep, std::uint8_t(1));
    ActiveRows rows = compact_active_rows(TEST_EXECSPACE(), mask, keep, false, 1, T, 0, T);
    TokenMatrix ctx("ctx", T, 8);
    Kokkos::View<int*, MemSpace> counts("counts", rows.rows);
    attend(TEST_EXECSPACE(), plan, q, kv, TokenVector(), rows, CandidateLists("none", 1, 1), 1, ctx, counts);
    auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), counts);
    per_t.emplace_back(h.data(), h.data() + h.extent(0));
  }
  CHECK(plans[0].budget == plans[1].budget);
  // Once a row is past the reach of its window and anchors it sees a fixed number of
  // candidates: the window plus the anchors that fall before it (anchors inside the window are
  // duplicates), never more than L.
  ShortlistPlan const& p = plans[1];
  long const reach = p.local_width + p.anchor_cap * p.anchor_stride;
  long const fixed = p.local_width + p.anchor_cap - (p.local_width - 1) / p.anchor_stride;
  REQUIRE(reach < 4096);
  CHECK(fixed <= p.budget);
  CHECK(fixed > p.budget * 9 / 10);
  for (long i = 0; i < 65536; ++i) {
    if (i < 4096) REQUIRE(per_t[0][i] == per_t[1][i]);
    if (i >= reach) REQUIRE(per_t[1][i] == fixed);
  }
  CHECK(*std::max_element(per_t[1].begin(), per_t[1].end()) == fixed);
}

namespace {
// The shortlist of the two kernel-equivalence cases below: windows of 24, anchors every 7.
Config window_config(int heads, int d, bool dna) {
  Config c;
  c.embed_dim = heads * d;
  c.num_heads = heads;
  c.linear_L = 48;
  c.L_min = 8;
  c.window = 24;
  c.anchor_stride = 7;
  c.use_dna_candidates = dna;
  return c.resolved();
}

// What attend writes for `rows`, on the host: contexts, candidate counts, softmax statistics.
struct Attended {
  Kokkos::View<float**, Kokkos::LayoutRight, HostSpace> ctx;
  Kokkos::View<int*, HostSpace> counts;
  Kokkos::View<float*, HostSpace> max, sum;
};

template <class Kv>
Attended attend_to_host(ExecSpace const& space, ShortlistPlan const& plan, TokenMatrix const& q, Kv const& kv,
                        ActiveRows const& rows, CandidateLists const& lists, int heads) {
  TokenMatrix ctx("ctx", rows.queries, q.extent(1));
  Kokkos::View<int*, MemSpace> counts("counts", rows.rows);
  detail::RowSoftmax const softmax{TokenVector("max", rows.rows), TokenVector("sum", rows.rows)};
  attend(space, plan, q, kv, TokenVector(), rows, lists, heads, ctx, counts, softmax);
  return {Kokkos::create_mirror_view_and_copy(HostSpace(), ctx),
          Kokkos::create_mirror_view_and_copy(HostSpace(), counts),
          Kokkos::create_mirror_view_and_copy(HostSpace(), softmax.max),
          Kokkos::create_mirror_view_and_copy(HostSpace(), softmax.sum)};
}

// Context entries and rows (count, max, sum) in which a and b differ in any bit.
long differing(Attended const& a, Attended const& b) {
  long n = 0;
  for (std::size_t i = 0; i < a.ctx.extent(0); ++i)
    for (std::size_t j = 0; j < a.ctx.extent(1); ++j) n += a.ctx(i, j) != b.ctx(i, j) ? 1 : 0;
  for (std::size_t r = 0; r < a.counts.extent(0); ++r)
    n += a.counts(r) != b.counts(r) || a.max(r) != b.max(r) || a.sum(r) != b.sum(r) ? 1 : 0;
  return n;
}
}  // namespace

PROTEUS_TEST_CASE("blocks staging their union give the bits of rows walking their own windows",
                  "[shortlist][attention]") {
  // Every head of every token: blocks of 32 consecutive rows, which stage the union of their
  // windows in team scratch; the same rows with slots raised so far that the call counts as sparse
  // walk their own windows instead. Per lane both take the same keys in the same order.
  int const heads = 2, batch = 2;
  int const d = GENERATE(16, 20);
  CAPTURE(d);
  long const T = 301;
  int const e = heads * d;
  ShortlistPlan const plan = plan_shortlist(window_config(heads, d, true), T, 0.9);
  TokenMatrix q("q", batch * T, e), kv("kv", batch * T, 2 * e);
  auto fill = [](TokenMatrix const& m, std::uint64_t seed) {
    auto h = Kokkos::create_mirror_view(m);
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (std::size_t i = 0; i < h.extent(0); ++i)
      for (std::size_t j = 0; j < h.extent(1); ++j) h(i, j) = normal(rng);
    Kokkos::deep_copy(m, h);
  };
  fill(q, 11);
  fill(kv, 12);
  TokenVector salience("salience", batch * T);
  Kokkos::deep_copy(salience, 0.5f);
  CandidateLists const lists = dna_candidate_lists(TEST_EXECSPACE(), plan, salience, batch, T);
  MaskMatrix mask("mask", batch * T, heads);
  MaskVector keep("keep", batch * T);
  Kokkos::deep_copy(mask, std::uint8_t(1));
  Kokkos::deep_copy(keep, std::uint8_t(1));
  ActiveRows const staged = compact_active_rows(TEST_EXECSPACE(), mask, keep, false, batch, T, 0, T);
  REQUIRE(staged.slots == staged.rows);
  ActiveRows own = staged;
  own.slots = staged.rows * 1000000;
  // Some blocks walk the union (all but the first blocks of each head, whose windows start at 0).
  auto starts = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), staged.block_start);
  auto tokens = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), staged.token);
  long unions = 0;
  for (long b = 0; b < staged.blocks; ++b)
    unions += walks_union(plan, tokens(starts(b)), tokens(starts(b + 1) - 1)) ? 1 : 0;
  CHECK(unions > 0);
  CHECK(differing(attend_to_host(TEST_EXECSPACE(), plan, q, kv, staged, lists, heads),
                  attend_to_host(TEST_EXECSPACE(), plan, q, kv, own, lists, heads)) == 0);
}

PROTEUS_TEST_CASE("attention over BF16 keys and values is attention over them rounded, bit for bit",
                  "[shortlist][attention][bfloat16]") {
  // Widening BF16 is exact and the sums stay FP32, so reading BF16 storage must give the bits of
  // the float kernel on the rounded values: with every head (blocks staging their union) and with
  // a sparse head mask (rows walking their own windows); d = 16 takes vector loads, 20 does not.
  int const heads = 2, batch = 2;
  int const d = GENERATE(16, 20);
  bool const dense = GENERATE(true, false);
  CAPTURE(d, dense);
  long const T = 257;
  int const e = heads * d;
  ShortlistPlan const plan = plan_shortlist(window_config(heads, d, false), T, 0.9);
  TokenMatrix q("q", batch * T, e), rounded("rounded", batch * T, 2 * e);
  Bf16HeadRows stored("stored", batch * heads, T, 2 * d);  // the same values by head
  auto hq = Kokkos::create_mirror_view(q);
  auto hr = Kokkos::create_mirror_view(rounded);
  auto hs = Kokkos::create_mirror_view(stored);
  std::mt19937_64 rng(21);
  std::normal_distribution<float> normal(0.0f, 1.5f);
  for (long i = 0; i < batch * T; ++i) {
    for (int j = 0; j < e; ++j) hq(i, j) = normal(rng);
    for (int j = 0; j < 2 * e; ++j) {  // K|V column j: key (j < e) or value column j % d of head (j % e) / d
      detail::bf16 const v = detail::to_bf16(normal(rng));
      hs((i / T) * heads + (j % e) / d, i % T, (j / e) * d + j % d) = v;
      hr(i, j) = detail::to_float(v);
    }
  }
  Kokkos::deep_copy(q, hq);
  Kokkos::deep_copy(rounded, hr);
  Kokkos::deep_copy(stored, hs);
  MaskMatrix mask("mask", batch * T, heads);
  MaskVector keep("keep", batch * T);
  auto hm = Kokkos::create_mirror_view(mask);
  std::bernoulli_distribution on(0.3);
  for (long i = 0; i < batch * T; ++i)
    for (int h = 0; h < heads; ++h) hm(i, h) = dense || on(rng) ? 1 : 0;
  Kokkos::deep_copy(mask, hm);
  Kokkos::deep_copy(keep, std::uint8_t(1));
  ActiveRows const rows = compact_active_rows(TEST_EXECSPACE(), mask, keep, false, batch, T, 0, T);
  REQUIRE(rows.rows > 0);
  CandidateLists const none("none", 1, 1);
  Attended const from_float = attend_to_host(TEST_EXECSPACE(), plan, q, rounded, rows, none, heads);
  CHECK(differing(from_float, attend_to_host(TEST_EXECSPACE(), plan, q, stored, rows, none, heads)) == 0);
  long nonzero = 0;
  for (long i = 0; i < rows.queries; ++i)
    for (int j = 0; j < e; ++j) nonzero += from_float.ctx(i, j) != 0.0f ? 1 : 0;
  CHECK(nonzero > 0);
}

TEST_CASE("online softmax states over parts of a row merge into the state over the whole row",
          "[shortlist][attention][merge]") {
  // What the GPU kernel does with a row's lanes: each lane adds every lanes-th candidate, then
  // the lanes' states merge pairwise (as a shuffle tree would). Compared with softmax in double.
  constexpr int D = 8;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int lanes : {1, 2, 8, 32}) {
    for (int count : {1, 5, 37, 400}) {
      std::vector<float> score(count);
      std::vector<std::array<float, D>> value(count);
      for (int c = 0; c < count; ++c) {
        score[c] = normal(rng);
        for (auto& x : value[c]) x = normal(rng);
      }
      std::vector<detail::SoftmaxState<D>> part(lanes);
      for (auto& s : part) s.clear();
      for (int c = 0; c < count; ++c) {
        float v[D];
        std::copy(value[c].begin(), value[c].end(), v);
        part[c % lanes].add(score[c], v);
      }
      // Tree merge; with count < lanes some parts are empty and must change nothing.
      for (int step = 1; step < lanes; step *= 2)
        for (int i = 0; i + step < lanes; i += 2 * step) part[i].merge(part[i + step]);
      double const top = *std::max_element(score.begin(), score.end());
      double sum = 0.0;
      std::array<double, D> want{};
      for (int c = 0; c < count; ++c) {
        double const w = std::exp(score[c] - top);
        sum += w;
        for (int j = 0; j < D; ++j) want[j] += w * value[c][j];
      }
      CHECK(part[0].seen == count);
      CHECK(part[0].m == static_cast<float>(top));
      // The output is a weighted mean of values |v| < 15 (5 sigma): float sums of at most 400
      // terms with weights <= 1 err by at most 400 * 2^-24 * 15 = 3.6e-4 relative to the weight
      // sum; rounding errors cancel in practice (measured below 2e-6), so 5e-5 is a loose bound.
      for (int j = 0; j < D; ++j) CHECK(std::abs(part[0].acc[j] / part[0].l - want[j] / sum) <= 5e-5);
    }
  }
}

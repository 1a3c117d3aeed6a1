// Stage 6b: active-row compaction (Kokkos scans) and the shortlist attention team kernel.
#include "proteus/attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "proteus/detail/element_range.hpp"
#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/detail/softmax_state.hpp"
#include "proteus/detail/workspace.hpp"

namespace proteus::detail {

ActiveRows compact_active_rows(ExecSpace const& space, MaskMatrix const& head_mask, MaskVector const& keep,
                               bool all_heads, int batch, long tokens, long row_begin, long row_end) {
  ActiveRowsBuffers buffers;
  return compact_active_rows(space, head_mask, keep, all_heads, batch, tokens, row_begin, row_end, buffers);
}

namespace {

// The compaction of compact_active_rows. Query slot i of batch * span stands for (batch i / span,
// token row_begin + i % span).
struct Span {
  int batch, heads;
  long tokens, row_begin, span;
  // The token row of query slot i of batch * span (batch i / span).
  KOKKOS_INLINE_FUNCTION long token_row(long i) const { return (i / span) * tokens + row_begin + i % span; }
};

// The range's active (head, token) pairs as head-major words of 32 tokens: bit k of word
// e = bh * tiles + tile is set where token row_begin + 32 tile + k of batch*head bh's batch row is
// kept and the head on (or every head). A head's rows are the set bits of its words in order, so
// the row of a bit is the rows before its word (offset, a scan over the words' counts) plus the
// bits below it in the word. Scans over every (head, token) slot took 0.08 ms each per 131k-token
// span at 1M (4.2M slots, latency-bound); the scan here has a 32nd of the elements.
struct HeadWords {
  Span s;
  long tiles;  // words per batch*head: ceil(span / 32)
  Kokkos::View<std::uint32_t*, MemSpace> words;
  Kokkos::View<long*, MemSpace> offset;
  long count() const { return static_cast<long>(s.batch) * s.heads * tiles; }
};

// The words of `active`: a thread per (32 tokens, head), heads of the same tokens side by side,
// so that a warp reads each token's kept flag once (one address) and its head flags as
// neighbouring bytes of a mask row.
void pack_words(ExecSpace const& space, MaskMatrix const& head_mask, MaskVector const& keep, bool all_heads,
                HeadWords const& active) {
  Span const s = active.s;
  long const tiles = active.tiles;
  auto const words = active.words;
  Kokkos::parallel_for(
      "proteus::attention::pack_words", RangePolicy(space, 0, active.count()), KOKKOS_LAMBDA(long i) {
        long const bt = i / s.heads;  // b * tiles + tile
        int const h = static_cast<int>(i - bt * s.heads);
        long const b = bt / tiles, tile = bt - b * tiles;
        long const row0 = b * s.tokens + s.row_begin + 32 * tile;  // the token row of bit 0
        int const bits = static_cast<int>(s.span - 32 * tile < 32 ? s.span - 32 * tile : 32);
        std::uint32_t word = 0;
        for (int k = 0; k < bits; ++k)
          word |= keep(row0 + k) != 0 && (all_heads || head_mask(row0 + k, h) != 0) ? 1u << k : 0u;
        words((b * s.heads + h) * tiles + tile) = word;
      });
}

// Each head's first row (r.head_start, its last entry the rows in all) and each word's first row.
void count_rows(ExecSpace const& space, HeadWords const& active, ActiveRows& r) {
  long const tiles = active.tiles, count = active.count();
  long const bh_count = static_cast<long>(active.s.batch) * active.s.heads;
  auto const head_start = r.head_start;
  auto const words = active.words;
  auto const offset = active.offset;
  Kokkos::parallel_scan(
      "proteus::attention::count_rows", RangePolicy(space, 0, count), KOKKOS_LAMBDA(long e, long& rows, bool final) {
        int const n = popcount(words(e));
        if (final) {
          offset(e) = rows;
          long const bh = e / tiles;
          if (e == bh * tiles) head_start(bh) = rows;
          if (e == count - 1) head_start(bh_count) = rows + n;
        }
        rows += n;
      });
}

// Query rows: the kept tokens of the range, in (batch, token) order; their count goes to
// sizes(0). query_source is filled for every kept token but sized once the count is read.
void pack_queries(ExecSpace const& space, MaskVector const& keep, Span const& s, ActiveRowsBuffers& buf,
                  Kokkos::View<long*, MemSpace> const& sizes, ActiveRows& r) {
  long const range = static_cast<long>(s.batch) * s.span;
  auto query_source = first_rows(buf.query_source, "proteus::attention::query_source", range);
  r.query_of = first_rows(buf.query_of, "proteus::attention::query_of", range);
  auto query_of = r.query_of;
  Kokkos::parallel_scan(
      "proteus::attention::pack_queries", RangePolicy(space, 0, range),
      KOKKOS_LAMBDA(long i, long& offset, bool final) {
        bool const kept = keep(s.token_row(i)) != 0;
        if (final) {
          query_of(i) = kept ? offset : -1;
          if (kept) query_source(offset) = s.token_row(i);
          if (i == range - 1) sizes(0) = offset + (kept ? 1 : 0);
        }
        offset += kept ? 1 : 0;
      });
}

// The compaction's sizes, counted on the device and read in one copy (one wait for the device):
// sizes holds the kept query tokens, then head_start. The rows are head_start's last entry and
// the blocks (each head's rows in runs of attention_block_rows) are counted here.
void read_sizes(ExecSpace const& space, Kokkos::View<long*, MemSpace> const& sizes, ActiveRowsBuffers& buf,
                ActiveRows& r) {
  long const n = static_cast<long>(sizes.extent(0)), bh_count = n - 2;
  auto const host = first_rows(buf.sizes_host, "proteus::attention::sizes_host", n);
  Kokkos::deep_copy(space, host, sizes);
  space.fence();
  r.queries = host(0);
  r.rows = host(n - 1);
  r.blocks = 0;
  for (long bh = 0; bh < bh_count; ++bh)
    r.blocks += (host(bh + 2) - host(bh + 1) + attention_block_rows - 1) / attention_block_rows;
  r.query_source = first_rows(buf.query_source, "proteus::attention::query_source", r.queries);
}

// Active (head, token) rows in (batch*head, token) order and each row's query row (head_start
// and the words' first rows are counted already): a thread per word places its set bits, lowest
// first, with no scan (most words of a sparse call are empty).
void pack_rows(ExecSpace const& space, HeadWords const& active, ActiveRowsBuffers& buf, ActiveRows& r) {
  Span const s = active.s;
  long const tiles = active.tiles;
  r.head = first_rows(buf.head, "proteus::attention::row_head", r.rows);
  r.token = first_rows(buf.token, "proteus::attention::row_token", r.rows);
  r.query = first_rows(buf.query, "proteus::attention::row_query", r.rows);
  auto row_head = r.head;
  auto row_token = r.token;
  auto row_query = r.query;
  auto query_of = r.query_of;
  auto const words = active.words;
  auto const offset = active.offset;
  Kokkos::parallel_for(
      "proteus::attention::pack_rows", RangePolicy(space, 0, active.count()), KOKKOS_LAMBDA(long e) {
        std::uint32_t word = words(e);
        if (word == 0) return;
        long const bh = e / tiles;
        long const t0 = 32 * (e - bh * tiles), q0 = (bh / s.heads) * s.span;  // the word's first token
        long row = offset(e);
        for (; word != 0; word &= word - 1u, ++row) {
          long const t = t0 + popcount((word & (~word + 1u)) - 1u);  // the lowest set bit's token
          row_head(row) = static_cast<int>(bh);
          row_token(row) = s.row_begin + t;
          row_query(row) = query_of(q0 + t);
        }
      });
}

// Blocks: runs of up to attention_block_rows rows of one head (counted already).
void pack_blocks(ExecSpace const& space, ActiveRowsBuffers& buf, ActiveRows& r) {
  constexpr long block_rows = attention_block_rows;
  auto head_start = r.head_start;
  auto row_head = r.head;
  auto starts_block = KOKKOS_LAMBDA(long row)->bool { return (row - head_start(row_head(row))) % block_rows == 0; };
  r.block_start = first_rows(buf.block_start, "proteus::attention::block_start", r.blocks + 1);
  auto block_start = r.block_start;
  long const rows = r.rows;
  Kokkos::parallel_scan(
      "proteus::attention::pack_blocks", RangePolicy(space, 0, rows),
      KOKKOS_LAMBDA(long row, long& n, bool final) {
        bool const s = starts_block(row);
        if (final && s) block_start(n) = row;
        n += s ? 1 : 0;
        if (final && row == rows - 1) block_start(n) = rows;  // the end of the last block
      });
  if (rows == 0) Kokkos::deep_copy(space, Kokkos::subview(block_start, 0), 0L);
}

}  // namespace

ActiveRows compact_active_rows(ExecSpace const& space, MaskMatrix const& head_mask, MaskVector const& keep,
                               bool all_heads, int batch, long tokens, long row_begin, long row_end,
                               ActiveRowsBuffers& buf) {
  int const heads = static_cast<int>(head_mask.extent(1));
  Span const s{batch, heads, tokens, row_begin, std::max(0L, row_end - row_begin)};
  ActiveRows r;
  r.slots = static_cast<long>(batch) * heads * s.span;
  long const bh_count = static_cast<long>(batch) * heads;
  auto const sizes = first_rows(buf.sizes, "proteus::attention::sizes", bh_count + 2);
  r.head_start = Kokkos::subview(sizes, std::make_pair(1L, bh_count + 2));
  if (s.span == 0) {
    r.head = first_rows(buf.head, "proteus::attention::row_head", 0);
    r.token = first_rows(buf.token, "proteus::attention::row_token", 0);
    r.query = first_rows(buf.query, "proteus::attention::row_query", 0);
    r.query_source = first_rows(buf.query_source, "proteus::attention::query_source", 0);
    r.query_of = first_rows(buf.query_of, "proteus::attention::query_of", 0);
    r.block_start = first_rows(buf.block_start, "proteus::attention::block_start", 1);
    Kokkos::deep_copy(space, r.head_start, 0L);
    Kokkos::deep_copy(space, r.block_start, 0L);
    return r;
  }
  long const tiles = (s.span + 31) / 32, words = bh_count * tiles;
  HeadWords const active{s, tiles, first_rows(buf.head_words, "proteus::attention::head_words", words),
                         first_rows(buf.word_rows, "proteus::attention::word_rows", words)};
  pack_words(space, head_mask, keep, all_heads, active);
  count_rows(space, active, r);
  pack_queries(space, keep, s, buf, sizes, r);
  read_sizes(space, sizes, buf, r);
  pack_rows(space, active, buf, r);
  pack_blocks(space, buf, r);
  return r;
}

namespace {

// D floats of a key or value row into registers: four at a time (16-byte loads) when the row is
// D wide and 16-byte aligned, otherwise one at a time with zeros past d.
struct alignas(16) Float4 {
  float x, y, z, w;
};

template <int D, bool Wide>
KOKKOS_INLINE_FUNCTION void load_row(float const* src, int d, float (&dst)[D]) {
  if constexpr (Wide) {
    for (int j = 0; j < D; j += 4) {
      Float4 const v = reinterpret_cast<Float4 const*>(src)[j / 4];
      dst[j] = v.x;
      dst[j + 1] = v.y;
      dst[j + 2] = v.z;
      dst[j + 3] = v.w;
    }
  } else {
    for (int j = 0; j < D; ++j) dst[j] = j < d ? src[j] : 0.0f;
  }
}

// The same from BF16 storage (Config::kv_bf16): eight values per 16-byte load, widened exactly.
// The kernels gather rows (each lane its own key), so their time follows the number of loads, not
// the bytes: 8-byte loads of four values left the 1M-token attention at FP32's time on an H200.
struct alignas(16) Bf16Vector {
  bf16 v[8];
};

template <int D, bool Wide>
KOKKOS_INLINE_FUNCTION void load_row(bf16 const* src, int d, float (&dst)[D]) {
  static_assert(D % 8 == 0, "16-byte loads of BF16 rows");
  if constexpr (Wide) {
    for (int j = 0; j < D; j += 8) {
      Bf16Vector const q = reinterpret_cast<Bf16Vector const*>(src)[j / 8];
      for (int i = 0; i < 8; ++i) dst[j + i] = to_float(q.v[i]);
    }
  } else {
    for (int j = 0; j < D; ++j) dst[j] = j < d ? to_float(src[j]) : 0.0f;
  }
}

// Whether a call's blocks of rows close together stage the union of their windows in team scratch
// (attend_union) rather than each row walking its own window: only when at least one (head, token)
// pair in stage_density is active. Sparser calls (2 heads of 32 per token, tokens dropped) have
// few such blocks, and there both their union kernel and its launch over every block cost more
// than the own-window walk on an H200 at 4k to 1M tokens (perf/RESULTS.md section 23); denser ones
// (every head, every token kept, alpha 0) keep the staging measured faster for them (section 3,
// "Union blocks through team scratch").
constexpr long stage_density = 8;
inline bool stages_unions(ActiveRows const& rows) { return rows.rows * stage_density >= rows.slots; }

// Where keys and values lie: the key of token t of batch row b, head h, at
// data + b * batch_step + h * head_step + t * stride, its value value_offset further.
template <class Kv>
struct KvLayout {
  Kv const* data;
  long tokens, batch_step, head_step, stride, value_offset;
  bool vectors;  // every key and value row can be read in 16-byte loads
};

// FP32 K|V rows [B*T x 2E]: a token's keys of every head, then its values.
inline KvLayout<float> kv_layout(TokenMatrix const& kv, int heads, long batch) {
  long const tokens = static_cast<long>(kv.extent(0)) / batch, stride = static_cast<long>(kv.stride(0));
  long const embed = static_cast<long>(kv.extent(1)) / 2;
  return {kv.data(), tokens, tokens * stride, embed / heads, stride, embed, rows_of_vectors(kv)};
}

// BF16 head rows [B*H x T x 2D]: each (head, token)'s key and value side by side.
inline KvLayout<bf16> kv_layout(Bf16HeadRows const& kv, int heads) {
  long const d = static_cast<long>(kv.extent(2)) / 2, head_step = static_cast<long>(kv.stride(0));
  bool const vectors = d % per_vector<bf16> == 0 && reinterpret_cast<std::uintptr_t>(kv.data()) % 16 == 0;
  return {kv.data(), static_cast<long>(kv.extent(1)), heads * head_step, head_step, static_cast<long>(kv.stride(1)), d,
          vectors};
}

// What both attention kernels read: the blocks of active rows, where a head's queries, keys and
// values lie (keys and values stored as Kv: float or bf16), and where a row's context goes.
template <class Kv>
struct Blocks {
  ShortlistPlan p;
  TokenMatrix q;
  KvLayout<Kv> kv;
  TokenMatrix ctx;
  TokenVector value_bias;
  CandidateLists dna_lists;
  Kokkos::View<long*, MemSpace> block_start, row_token, row_query;
  IndexVector row_head;
  Kokkos::View<int*, MemSpace> candidate_count;
  RowSoftmax softmax;
  int heads, embed, d;
  long q_stride, dna_blocks;
  float scale;
  bool count, biased, with_softmax;
  bool stage;  // whether blocks of rows close together stage the union of their windows

  Blocks(ShortlistPlan const& plan, TokenMatrix const& q_, KvLayout<Kv> const& kv_, TokenVector const& value_bias_,
         ActiveRows const& rows, CandidateLists const& lists, int heads_, TokenMatrix const& ctx_,
         Kokkos::View<int*, MemSpace> const& counts, RowSoftmax const& softmax_)
      : p(plan),
        q(q_),
        kv(kv_),
        ctx(ctx_),
        value_bias(value_bias_),
        dna_lists(lists),
        block_start(rows.block_start),
        row_token(rows.token),
        row_query(rows.query),
        row_head(rows.head),
        candidate_count(counts),
        softmax(softmax_),
        heads(heads_),
        embed(static_cast<int>(q_.extent(1))),
        d(embed / heads_) {
    q_stride = static_cast<long>(q.stride(0));
    dna_blocks = (kv.tokens + p.dna_block - 1) / p.dna_block;
    scale = 1.0f / std::sqrt(static_cast<float>(d));
    count = counts.extent(0) > 0;
    biased = value_bias.extent(0) > 0;
    with_softmax = softmax.max.extent(0) > 0;
    stage = stages_unions(rows);
  }

  // Block `block`: rows r0 .. r0 + n - 1, all of batch b and head h.
  KOKKOS_INLINE_FUNCTION void rows_of(int block, long& r0, int& n, long& b, long& h) const {
    r0 = block_start(block);
    n = static_cast<int>(block_start(block + 1) - r0);
    int const bh = row_head(r0);
    b = bh / heads;
    h = bh % heads;
  }
  // The union [lo, hi] of the block's local windows, and whether its rows walk it in step.
  KOKKOS_INLINE_FUNCTION bool walks_union(long r0, int n, long& lo, long& hi) const {
    lo = local_begin(p, row_token(r0));
    hi = row_token(r0 + n - 1);
    return stage && proteus::walks_union(p, row_token(r0), hi);
  }
  // Keys of batch b, head h: key of token t at keys(b, h) + t * kv.stride, its value kv.value_offset further.
  KOKKOS_INLINE_FUNCTION Kv const* keys(long b, long h) const { return kv.data + b * kv.batch_step + h * kv.head_step; }
  KOKKOS_INLINE_FUNCTION float const* query(long h, long qrow) const { return q.data() + h * d + qrow * q_stride; }
  KOKKOS_INLINE_FUNCTION Position const* dna_of(long b, long t) const {
    return p.dna_cap > 0 ? &dna_lists(b * dna_blocks + t / p.dna_block, 0) : nullptr;
  }
  // The scaled query of row qrow of head h.
  template <int D, bool Wide>
  KOKKOS_INLINE_FUNCTION void load_query(long h, long qrow, float (&qr)[D]) const {
    load_row<D, Wide>(query(h, qrow), d, qr);
    for (int j = 0; j < D; ++j) qr[j] *= scale;
  }
  // Adds candidate c, read from the head's keys k (values kv.value_offset further), to s.
  template <int D, bool Wide>
  KOKKOS_INLINE_FUNCTION void add(detail::SoftmaxState<D>& s, float const (&qr)[D], Kv const* k, long c) const {
    float kc[D], vc[D];
    load_row<D, Wide>(k + c * kv.stride, d, kc);
    float dot = 0.0f;
    for (int j = 0; j < D; ++j) dot += qr[j] * kc[j];
    load_row<D, Wide>(k + kv.value_offset + c * kv.stride, d, vc);
    s.add(dot, vc);
  }
  template <int D>
  KOKKOS_INLINE_FUNCTION void finish(long r, long qrow, long h, detail::SoftmaxState<D> const& s) const {
    if (count) candidate_count(r) = s.seen;
    if (with_softmax) {
      softmax.max(r) = s.m;
      softmax.sum(r) = s.l;
    }
    float const inv = 1.0f / s.l;
    for (int j = 0; j < D; ++j)
      if (j < d) ctx(qrow, h * d + j) = s.acc[j] * inv + (biased ? value_bias(h * d + j) : 0.0f);
  }
};

// Team kernels of rows of width D. At D = 16 both kernels took 96 registers a thread, so that
// only 2 teams of 256 threads fitted on an SM (25% occupancy, Nsight Compute at 131k tokens), and
// the kernels wait on memory. Up to D = 32 the compiler is asked to fit attention_min_teams teams
// per SM (0: no bound). Host backends ignore launch bounds.
constexpr int attention_min_teams = 3;
template <int D>
using TeamPolicyFor = TeamPolicy<std::conditional_t<(D <= 32 && attention_min_teams > 0),
                                                    Kokkos::LaunchBounds<attention_block_rows * lanes_per_row<D>(),
                                                                         attention_min_teams>,
                                                    Kokkos::LaunchBounds<>>>;

// Blocks whose rows walk their own windows: one thread (a vector of `lanes` lanes) per row on
// GPUs; host backends run a team as one thread that takes the rows in turn. Lane i of a row takes
// the window's candidates c with c % lanes == i and every lanes-th extra candidate. D >= d is the
// compile-time width of the per-row state (query and accumulator live in registers on GPUs).
// Wide: d == D and every key, value and query row is 16-byte aligned.
template <int D, bool Wide, class Kv>
void attend_own_windows(ExecSpace const& space, Blocks<Kv> const& a, long blocks) {
  constexpr int lanes = lanes_per_row<D>();
  int const team_size = on_host ? 1 : attention_block_rows;
  using Policy = TeamPolicyFor<D>;
  using Member = typename Policy::member_type;
  Kokkos::parallel_for(
      "proteus::attention::own_windows", Policy(space, blocks, team_size, lanes),
      KOKKOS_LAMBDA(Member const& team) {
        long r0, b, h, lo, hi;
        int n;
        a.rows_of(team.league_rank(), r0, n, b, h);
        if (a.walks_union(r0, n, lo, hi)) return;
        Kv const* k = a.keys(b, h);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, n), [&](int r) {
          long const t = a.row_token(r0 + r), qrow = a.row_query(r0 + r);
          long const from = local_begin(a.p, t);
          Position const* dna = a.dna_of(b, t);
          float qr[D];
          a.template load_query<D, Wide>(h, qrow, qr);
          detail::SoftmaxState<D> row;
          Kokkos::parallel_reduce(
              Kokkos::ThreadVectorRange(team, lanes),
              [&](int lane, detail::SoftmaxState<D>& s) {
                for (long c = first_of_lane(from, lane, lanes); c <= t; c += lanes)
                  a.template add<D, Wide>(s, qr, k, c);
                // Anchors and DNA candidates outside the window, gathered from global memory.
                for_each_extra_of_lane(a.p, t, dna, lane, lanes, [&](long c) { a.template add<D, Wide>(s, qr, k, c); });
              },
              detail::MergeSoftmax<D>(row));
          Kokkos::single(Kokkos::PerThread(team), [&]() { a.finish(r0 + r, qrow, h, row); });
        });
      });
}

// Blocks whose rows walk the union of their windows in step: the team stages a tile of keys and
// values in scratch, and the same lane of every row reads the same key of it at once (a
// broadcast), adding it when it lies in the row's window. Lanes split the tile as in
// attend_own_windows (key c to lane c % lanes), so both kernels add a row's candidates in the
// same order; a lane's softmax state waits in scratch between tiles. Then each row merges its
// lanes and gathers its extra candidates.
template <int D, bool Wide, class Kv>
void attend_union(ExecSpace const& space, Blocks<Kv> const& a, long blocks) {
  constexpr int lanes = lanes_per_row<D>();
  constexpr int tile = 1024 / D;  // keys per tile: 8 KB of keys and values
  constexpr int pitch = D + 1;    // floats per staged key: odd, so that neighbouring keys sit in other banks
  int const team_size = on_host ? 1 : attention_block_rows;
  using Floats = Kokkos::View<float*, ExecSpace::scratch_memory_space, Kokkos::MemoryUnmanaged>;
  using States = Kokkos::View<detail::SoftmaxState<D>*, ExecSpace::scratch_memory_space, Kokkos::MemoryUnmanaged>;
  using Policy = TeamPolicyFor<D>;
  using Member = typename Policy::member_type;
  Policy policy(space, blocks, team_size, lanes);
  policy.set_scratch_size(
      0, Kokkos::PerTeam(2 * Floats::shmem_size(tile * pitch) + States::shmem_size(attention_block_rows * lanes)));
  Kokkos::parallel_for(
      "proteus::attention::union", policy, KOKKOS_LAMBDA(Member const& team) {
        long r0, b, h, lo, hi;
        int n;
        a.rows_of(team.league_rank(), r0, n, b, h);
        if (!a.walks_union(r0, n, lo, hi)) return;
        Kv const* k = a.keys(b, h);
        Kv const* v = k + a.kv.value_offset;
        Floats tile_k(team.team_scratch(0), tile * pitch), tile_v(team.team_scratch(0), tile * pitch);
        States states(team.team_scratch(0), attention_block_rows * lanes);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, n), [&](int r) {
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, lanes), [&](int lane) { states(r * lanes + lane).clear(); });
        });
        for (long c0 = lo; c0 <= hi; c0 += tile) {
          int const len = static_cast<int>(hi - c0 + 1 < tile ? hi - c0 + 1 : tile);
          team.team_barrier();  // every lane is done with the previous tile
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, len), [&](int i) {
            Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, D), [&](int j) {
              bool const in = j < a.d;
              tile_k(i * pitch + j) = in ? widen(k[(c0 + i) * a.kv.stride + j]) : 0.0f;
              tile_v(i * pitch + j) = in ? widen(v[(c0 + i) * a.kv.stride + j]) : 0.0f;
            });
          });
          team.team_barrier();
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, n), [&](int r) {
            long const t = a.row_token(r0 + r), from = local_begin(a.p, t);
            float qr[D];
            a.template load_query<D, Wide>(h, a.row_query(r0 + r), qr);
            Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, lanes), [&](int lane) {
              detail::SoftmaxState<D> s = states(r * lanes + lane);
              for (int i = static_cast<int>(first_of_lane(c0, lane, lanes) - c0); i < len; i += lanes) {
                if (c0 + i < from || c0 + i > t) continue;
                float kc[D], vc[D];
                for (int j = 0; j < D; ++j) {
                  kc[j] = tile_k(i * pitch + j);
                  vc[j] = tile_v(i * pitch + j);
                }
                float dot = 0.0f;
                for (int j = 0; j < D; ++j) dot += qr[j] * kc[j];
                s.add(dot, vc);
              }
              states(r * lanes + lane) = s;
            });
          });
        }
        team.team_barrier();
        // Anchors and DNA candidates outside the window, gathered from global memory.
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, n), [&](int r) {
          long const t = a.row_token(r0 + r);
          Position const* dna = a.dna_of(b, t);
          float qr[D];
          a.template load_query<D, Wide>(h, a.row_query(r0 + r), qr);
          detail::SoftmaxState<D> row;
          Kokkos::parallel_reduce(
              Kokkos::ThreadVectorRange(team, lanes),
              [&](int lane, detail::SoftmaxState<D>& s) {
                s.merge(states(r * lanes + lane));
                for_each_extra_of_lane(a.p, t, dna, lane, lanes, [&](long c) { a.template add<D, Wide>(s, qr, k, c); });
              },
              detail::MergeSoftmax<D>(row));
          Kokkos::single(Kokkos::PerThread(team), [&]() { a.finish(r0 + r, a.row_query(r0 + r), h, row); });
        });
      });
}

template <class Kv>
void attend_stored(ExecSpace const& space, ShortlistPlan const& plan, TokenMatrix const& q, KvLayout<Kv> const& kv,
                   TokenVector const& value_bias, ActiveRows const& rows, CandidateLists const& dna_lists, int heads,
                   TokenMatrix const& ctx, Kokkos::View<int*, MemSpace> const& candidate_count,
                   RowSoftmax const& softmax) {
  if (rows.blocks == 0) return;
  int const d = static_cast<int>(q.extent(1)) / heads;
  // 16-byte loads need rows of exactly D values, a head's d values filling whole loads, at 16-byte
  // aligned addresses.
  bool const aligned_rows = d % per_vector<Kv> == 0 && d % per_vector<float> == 0 && rows_of_vectors(q) && kv.vectors;
  auto run = [&](auto width) {
    constexpr int D = decltype(width)::value;
    Blocks<Kv> const blocks(plan, q, kv, value_bias, rows, dna_lists, heads, ctx, candidate_count, softmax);
    if (aligned_rows && d == D) {
      attend_own_windows<D, true>(space, blocks, rows.blocks);
      if (blocks.stage) attend_union<D, true>(space, blocks, rows.blocks);
    } else {
      attend_own_windows<D, false>(space, blocks, rows.blocks);
      if (blocks.stage) attend_union<D, false>(space, blocks, rows.blocks);
    }
  };
  // The smallest supported width that holds d (Config::resolved() refuses d > 256). 24 and 48
  // (E 192 or 384 over 8 heads, E 768 over 16) would waste a quarter of every load and product
  // at 32 and 64.
  if (d <= 8) run(std::integral_constant<int, 8>());
  else if (d <= 16) run(std::integral_constant<int, 16>());
  else if (d <= 24) run(std::integral_constant<int, 24>());
  else if (d <= 32) run(std::integral_constant<int, 32>());
  else if (d <= 48) run(std::integral_constant<int, 48>());
  else if (d <= 64) run(std::integral_constant<int, 64>());
  else if (d <= 128) run(std::integral_constant<int, 128>());
  else run(std::integral_constant<int, 256>());
}

}  // namespace

void attend(ExecSpace const& space, ShortlistPlan const& plan, TokenMatrix const& q, TokenMatrix const& kv,
            TokenVector const& value_bias, ActiveRows const& rows, CandidateLists const& dna_lists, int heads,
            TokenMatrix const& ctx, Kokkos::View<int*, MemSpace> const& candidate_count, RowSoftmax const& softmax) {
  long const batch = static_cast<long>(rows.head_start.extent(0) - 1) / heads;
  attend_stored(space, plan, q, kv_layout(kv, heads, batch), value_bias, rows, dna_lists, heads, ctx, candidate_count,
                softmax);
}

void attend(ExecSpace const& space, ShortlistPlan const& plan, TokenMatrix const& q, Bf16HeadRows const& kv,
            TokenVector const& value_bias, ActiveRows const& rows, CandidateLists const& dna_lists, int heads,
            TokenMatrix const& ctx, Kokkos::View<int*, MemSpace> const& candidate_count, RowSoftmax const& softmax) {
  attend_stored(space, plan, q, kv_layout(kv, heads), value_bias, rows, dna_lists, heads, ctx, candidate_count,
                softmax);
}

void scale_active_heads(ExecSpace const& space, ActiveRows const& rows, GateMatrix const& weight,
                        TokenMatrix const& ctx, long tokens) {
  int const heads = static_cast<int>(weight.extent(1));
  int const d = static_cast<int>(ctx.extent(1)) / heads;
  auto row_head = rows.head;
  auto row_token = rows.token;
  auto row_query = rows.query;
  for_each_element(
      space, "proteus::attention::scale_heads", rows.rows, d, KOKKOS_LAMBDA(long r, long j) {
        int const bh = row_head(r), h = bh % heads;
        ctx(row_query(r), h * d + j) *= weight((bh / heads) * tokens + row_token(r), h);
      });
}

}  // namespace proteus::detail

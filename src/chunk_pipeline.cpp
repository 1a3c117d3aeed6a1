// The chunk stage: read -> route -> nucleus candidates -> DNA statistics, chunk after chunk.
#include "proteus/chunk_pipeline.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <future>

#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/detail/sort_keys.hpp"
#include "proteus/detail/workspace.hpp"
#include "proteus/error.hpp"

namespace proteus {

void Candidates::append(Candidates const& other) {
  positions.insert(positions.end(), other.positions.begin(), other.positions.end());
  scores.insert(scores.end(), other.scores.begin(), other.scores.end());
}

Candidates nucleus_candidates(ExecSpace const& space, TokenVector const& importance, MaskVector const& keep,
                              Position chunk_begin, double top_p, long budget) {
  NucleusBuffers buffers;
  return nucleus_candidates(space, importance, keep, chunk_begin, top_p, budget, buffers);
}

Candidates nucleus_candidates(ExecSpace const& space, TokenVector const& importance, MaskVector const& keep,
                              Position chunk_begin, double top_p, long budget, NucleusBuffers& b) {
  start_nucleus(space, importance, keep, top_p, budget, b);
  space.fence();  // the chunk's one wait: its counts and best keys
  return finish_nucleus(b, chunk_begin, budget);
}

namespace {
// keys = the kept tokens' keys, best first, then ~0 for the others; kept = their number.
void rank_kept(ExecSpace const& space, TokenVector const& importance, MaskVector const& keep,
               Kokkos::View<std::uint64_t*, MemSpace> const& keys, Kokkos::View<long, MemSpace> const& kept,
               Kokkos::View<unsigned char*, MemSpace>& sort_scratch) {
  long const n = static_cast<long>(keys.extent(0));
  Kokkos::parallel_reduce(
      "proteus::chunk::keys", RangePolicy(space, 0, n),
      KOKKOS_LAMBDA(long i, long& k) {
        // Dropped tokens sort last.
        keys(i) = keep(i) ? detail::descending_score_key(importance(i), i) : ~std::uint64_t(0);
        k += keep(i) ? 1 : 0;
      },
      kept);
  detail::sort(space, keys, sort_scratch);
}

// The same from every token's keys already sorted: the kept ones in order (a stream compaction),
// the dropped ones at the end (all ~0, so their order does not matter).
void compact_kept(ExecSpace const& space, MaskVector const& keep, Kokkos::View<std::uint64_t*, MemSpace> const& ranked,
                  Kokkos::View<std::uint64_t*, MemSpace> const& keys, Kokkos::View<long, MemSpace> const& kept) {
  long const n = static_cast<long>(keys.extent(0));
  if (n == 0) {  // the scan below would leave the count as an earlier chunk left it
    Kokkos::deep_copy(space, kept, 0L);
    return;
  }
  Kokkos::parallel_scan(
      "proteus::chunk::compact_kept", RangePolicy(space, 0, n),
      KOKKOS_LAMBDA(long i, long& before, bool final) {
        std::uint64_t const key = ranked(i);
        bool const in = keep(static_cast<long>(detail::key_position(key))) != 0;
        if (final) {
          if (in)
            keys(before) = key;
          else
            keys(n - 1 - (i - before)) = ~std::uint64_t(0);
          if (i == n - 1) kept() = before + (in ? 1 : 0);
        }
        before += in ? 1 : 0;
      });
}
}  // namespace

void start_nucleus(ExecSpace const& space, TokenVector const& importance, MaskVector const& keep, double top_p,
                   long budget, NucleusBuffers& b, Kokkos::View<std::uint64_t*, MemSpace> const& ranked) {
  using detail::first_rows;
  long const n = static_cast<long>(importance.extent(0));
  auto const keys = first_rows(b.keys, "proteus::chunk::keys", n);
  auto const prefix = first_rows(b.prefix, "proteus::chunk::prefix", n);
  auto const counts = first_rows(b.counts, "proteus::chunk::counts", 2);
  auto const norm = first_rows(b.norm, "proteus::chunk::norm", 1);
  auto const kept = Kokkos::subview(counts, 0), below = Kokkos::subview(counts, 1);
  auto const z = Kokkos::subview(norm, 0);
  if (ranked.data() != nullptr) {
    require(static_cast<long>(ranked.extent(0)) >= n, "start_nucleus", "ranked keys shorter than the chunk");
    compact_kept(space, keep, Kokkos::subview(ranked, std::make_pair(0L, n)), keys, kept);
  } else {
    rank_kept(space, importance, keep, keys, kept, b.sort_scratch);
  }
  // Softmax of the kept tokens' scores (the first kept() keys, the best first), its prefix sums,
  // and how many of those lie below top_p of the total: all on the device, sized by n.
  Kokkos::parallel_reduce(
      "proteus::chunk::softmax_norm", RangePolicy(space, 0, n),
      KOKKOS_LAMBDA(long i, double& s) {
        if (i < kept()) s += detail::kmath::exp(double(detail::key_score(keys(i))) - detail::key_score(keys(0)));
      },
      z);
  Kokkos::parallel_scan(
      "proteus::chunk::prefix", RangePolicy(space, 0, n),
      KOKKOS_LAMBDA(long i, double& cum, bool final) {
        if (i < kept()) cum += detail::kmath::exp(double(detail::key_score(keys(i))) - detail::key_score(keys(0)));
        if (final) prefix(i) = cum;
      });
  // Count of the inclusive prefix sums below the limit (monotone, so a reduction suffices).
  Kokkos::parallel_reduce(
      "proteus::chunk::nucleus_count", RangePolicy(space, 0, n),
      KOKKOS_LAMBDA(long i, long& c) { c += i < kept() && prefix(i) < top_p * z() ? 1 : 0; }, below);
  long const best = std::min(n, budget);
  auto const counts_host = first_rows(b.counts_host, "proteus::chunk::counts_host", 2);
  auto const best_host = first_rows(b.best_host, "proteus::chunk::best_host", best);
  Kokkos::deep_copy(space, counts_host, counts);
  Kokkos::deep_copy(space, best_host, Kokkos::subview(keys, std::make_pair(0L, best)));
}

Candidates finish_nucleus(NucleusBuffers const& b, Position chunk_begin, long budget) {
  Candidates out;
  long const take = std::min({b.counts_host(1) + 1, b.counts_host(0), budget});
  if (b.counts_host(0) == 0) return out;
  out.positions.resize(take);
  out.scores.resize(take);
  for (long i = 0; i < take; ++i) {
    out.positions[i] = chunk_begin + static_cast<Position>(detail::key_position(b.best_host(i)));
    out.scores[i] = detail::key_score(b.best_host(i));
  }
  return out;
}

long RankState::tokens_kept() const {
  long n = 0;
  for (ChunkRecord const& r : chunk_log) n += r.tokens_kept;
  return n;
}

long RankState::tokens_caught() const {
  long n = 0;
  for (ChunkRecord const& r : chunk_log) n += r.tokens_caught;
  return n;
}

namespace {
// One chunk's device work, and the pinned host copies of its results that one wait makes readable.
struct ChunkWork {
  RoutingResult routed;
  NucleusBuffers nucleus;
  DnaStatistics stats;
  DnaStatisticsScratch dna_scratch;
  DnaStatisticsHost stats_host;
  Kokkos::View<long*, MemSpace> tallies{"proteus::chunk::tallies", 3};  // non-finite entries, kept, caught
  Kokkos::View<long*, detail::PinnedHostSpace> tallies_host{"proteus::chunk::tallies_host", 3};
  detail::QueueMark<ExecSpace> done;  // recorded after the chunk's work
};

// Launches chunk x's work on `space` without waiting: its NaN/Inf count, routing, nucleus, the
// tokens caught by the DNA (beta > 0) and its DNA statistics, each copied to the host on arrival.
void launch_chunk(ExecSpace const& space, CausalGeneticMultiheadAttention const& scorer, TokenMatrix const& x,
                  NucleusSpec const& nucleus, ChunkWork& w) {
  auto tally = [&](int k) { return Kokkos::subview(w.tallies, k); };
  count_nonfinite(space, x, tally(0));
  scorer.route(space, x, 1, w.routed, tally(1));
  start_nucleus(space, w.routed.routing.importance, w.routed.keep, nucleus.top_p, nucleus.budget, w.nucleus,
                w.routed.selection.ranking());
  auto beta = w.routed.routing.beta;
  Kokkos::parallel_reduce(
      "proteus::chunk::caught", RangePolicy(space, 0, x.extent(0)),
      KOKKOS_LAMBDA(long i, long& n) { n += beta(i) > 0.0f ? 1 : 0; }, tally(2));
  Kokkos::deep_copy(space, w.tallies_host, w.tallies);
  if (!scorer.config().dna_enable) return;
  if (w.stats.count.data() == nullptr) w.stats = DnaStatistics::allocate(scorer.config().num_gates, static_cast<int>(x.extent(1)));
  dna_statistics(space, x, w.routed.routing.gate_probs, w.stats, w.dna_scratch);
  w.stats_host.start_copy(space, w.stats);
}

// Chunk c's results into state, once its work has finished; a chunk with NaN or Inf tokens
// changes nothing.
void record_chunk(ChunkWork const& w, Config const& cfg, NucleusSpec const& nucleus, long c, Position begin, long len,
                  RankState& state) {
  require_finite(w.tallies_host(0),
                 "sequence tokens [" + std::to_string(begin) + ", " + std::to_string(begin + len) + ")");
  Candidates const cand = finish_nucleus(w.nucleus, begin, nucleus.budget);
  state.candidates.append(cand);
  state.chunk_log.push_back({c, static_cast<std::int64_t>(cand.size()), w.tallies_host(1), w.tallies_host(2)});
  if (cfg.dna_enable) state.dna.add(w.stats_host, cfg.dna_decay);
}
}  // namespace

void run_chunks(ExecSpace const& space, CausalGeneticMultiheadAttention const& scorer, SequenceSource const& source,
                ChunkGrid const& grid, NucleusSpec const& nucleus, ChunkRange range, RankState& state,
                std::function<void(RankState const&)> const& after_chunk, std::function<bool()> const& stop,
                ChunkTimes* times) {
  Config const& cfg = scorer.config();
  TokenMatrix buffer("proteus::chunk::tokens", grid.chunk_tokens, cfg.embed_dim);
  ChunkWork work[2];  // allocated by the first chunks, reused by the others
  ChunkTimes spent;
  auto clock = [] { return std::chrono::steady_clock::now(); };
  auto const started = clock();
  auto since = [&](auto t0) { return std::chrono::duration<double>(clock() - t0).count(); };
  if (state.next_chunk < range.first) state.next_chunk = range.first;
  long const first_chunk = state.next_chunk;
  auto extent_of = [&](long c) { return std::make_pair(grid.begin(c), grid.extent(c)); };
  // Host-resident sources (files) are double-buffered twice over: chunk c + 2 is read on a helper
  // thread into one pinned host buffer and chunk c + 1 is copied to the second device buffer on a
  // second stream, while chunk c is scored. Generated sources are made on the device: chunk c + 1
  // is made and scored, queued behind chunk c, while the host records chunk c.
  bool const prefetch = source.host_resident();
  using HostChunk = Kokkos::View<float**, Kokkos::LayoutRight, detail::PinnedHostSpace>;
  HostChunk host[2];
  TokenMatrix device[2] = {buffer, TokenMatrix()};
  ExecSpace const copier = prefetch ? detail::copy_instance(space) : space;
  std::future<void> pending;
  auto rows = [](auto const& v, long len) { return Kokkos::subview(v, std::make_pair(0L, len), Kokkos::ALL); };
  auto start_read = [&](long c, int slot) {
    auto [begin, len] = extent_of(c);
    float* dst = host[slot].data();
    pending =
        std::async(std::launch::async, [&source, begin = begin, len = len, dst] { source.read_host(begin, len, dst); });
  };
  auto launch = [&](long c, TokenMatrix const& x, ChunkWork& w) {
    auto const t0 = clock();
    if (!prefetch) source.read(space, extent_of(c).first, x);
    launch_chunk(space, scorer, x, nucleus, w);
    w.done.record(space);
    spent.launch += since(t0);
  };
  // Whatever ends the loop (the last chunk, a stop, an error), the device finishes with the
  // buffers before they are freed.
  struct FenceAtExit {
    ExecSpace space, copier;
    ~FenceAtExit() {
      space.fence();
      copier.fence();
    }
  } const fence_at_exit{space, copier};
  if (prefetch) {
    device[1] = TokenMatrix("proteus::chunk::tokens_next", grid.chunk_tokens, cfg.embed_dim);
    for (auto& h : host)
      h = HostChunk(Kokkos::view_alloc("proteus::chunk::host", Kokkos::WithoutInitializing), grid.chunk_tokens,
                    cfg.embed_dim);
    if (state.next_chunk < range.last) {
      start_read(state.next_chunk, 0);
      pending.get();
      Kokkos::deep_copy(copier, rows(device[0], extent_of(state.next_chunk).second),
                        rows(host[0], extent_of(state.next_chunk).second));
      if (state.next_chunk + 1 < range.last) start_read(state.next_chunk + 1, 1);
    }
  } else if (state.next_chunk < range.last) {
    launch(state.next_chunk, rows(buffer, extent_of(state.next_chunk).second), work[0]);
  }
  int slot = 0;
  for (long c = state.next_chunk; c < range.last; ++c) {
    auto [begin, len] = extent_of(c);
    ChunkWork& w = work[slot];
    if (prefetch) {
      copier.fence();  // device[slot] holds chunk c; host[slot] is free again
      if (c + 1 < range.last) {
        pending.get();  // host[1 - slot] holds chunk c + 1 (rethrows a failed read)
        long const next_len = extent_of(c + 1).second;
        Kokkos::deep_copy(copier, rows(device[1 - slot], next_len), rows(host[1 - slot], next_len));
        if (c + 2 < range.last) start_read(c + 2, slot);
      }
      launch(c, rows(device[slot], len), w);
    } else if (c + 1 < range.last) {
      launch(c + 1, rows(buffer, extent_of(c + 1).second), work[1 - slot]);  // runs after chunk c's work
    }
    auto const t0 = clock();
    w.done.wait();  // the chunk's one wait (with a file source, device[slot] is free again after it)
    auto const t1 = clock();
    spent.wait += std::chrono::duration<double>(t1 - t0).count();
    record_chunk(w, cfg, nucleus, c, begin, len, state);
    state.next_chunk = c + 1;
    after_chunk(state);
    spent.host += since(t1);
    if (c == first_chunk) spent.first = since(started);
    if (stop && stop()) break;  // the prefetches, or the next chunk's work, in flight are waited for at exit
    slot = 1 - slot;
  }
  if (pending.valid()) pending.wait();
  if (times) {
    times->launch += spent.launch;
    times->wait += spent.wait;
    times->host += spent.host;
    if (times->first == 0) times->first = spent.first;
  }
}

}  // namespace proteus

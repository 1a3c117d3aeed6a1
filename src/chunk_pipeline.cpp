// The chunk stage: read -> route -> nucleus candidates -> DNA statistics, chunk after chunk.
#include "proteus/chunk_pipeline.hpp"

#include <algorithm>
#include <cmath>
#include <future>

#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/detail/sort_keys.hpp"
#include "proteus/error.hpp"

namespace proteus {

void Candidates::append(Candidates const& other) {
  positions.insert(positions.end(), other.positions.begin(), other.positions.end());
  scores.insert(scores.end(), other.scores.begin(), other.scores.end());
}

Candidates nucleus_candidates(ExecSpace const& space, TokenVector const& importance, MaskVector const& keep,
                              Position chunk_begin, double top_p, long budget) {
  long const n = static_cast<long>(importance.extent(0));
  Kokkos::View<std::uint64_t*, MemSpace> keys("proteus::chunk::keys", n);
  long kept = 0;
  Kokkos::parallel_reduce(
      "proteus::chunk::keys", Kokkos::RangePolicy<ExecSpace>(space, 0, n),
      KOKKOS_LAMBDA(long i, long& k) {
        // Dropped tokens sort last.
        keys(i) = keep(i) ? detail::descending_score_key(importance(i), i) : ~std::uint64_t(0);
        k += keep(i) ? 1 : 0;
      },
      kept);
  detail::sort(space, keys);
  Candidates out;
  if (kept == 0) return out;
  float top = 0.0f;
  Kokkos::parallel_reduce(
      "proteus::chunk::top", Kokkos::RangePolicy<ExecSpace>(space, 0, 1),
      KOKKOS_LAMBDA(long, float& m) { m = detail::key_score(keys(0)); }, Kokkos::Max<float>(top));
  double z = 0.0;
  Kokkos::parallel_reduce(
      "proteus::chunk::softmax_norm", Kokkos::RangePolicy<ExecSpace>(space, 0, kept),
      KOKKOS_LAMBDA(long i, double& s) { s += detail::kmath::exp(double(detail::key_score(keys(i))) - top); }, z);
  double const limit = top_p * z;
  long below = 0;
  // Count of the inclusive prefix sums below the limit (monotone, so a reduction suffices).
  Kokkos::View<double*, MemSpace> prefix("proteus::chunk::prefix", kept);
  Kokkos::parallel_scan(
      "proteus::chunk::prefix", Kokkos::RangePolicy<ExecSpace>(space, 0, kept),
      KOKKOS_LAMBDA(long i, double& cum, bool final) {
        cum += detail::kmath::exp(double(detail::key_score(keys(i))) - top);
        if (final) prefix(i) = cum;
      });
  Kokkos::parallel_reduce(
      "proteus::chunk::nucleus_count", Kokkos::RangePolicy<ExecSpace>(space, 0, kept),
      KOKKOS_LAMBDA(long i, long& c) { c += prefix(i) < limit ? 1 : 0; }, below);
  long const take = std::min({below + 1, kept, budget});
  auto head = Kokkos::create_mirror_view_and_copy(HostSpace(), Kokkos::subview(keys, std::make_pair(0L, take)));
  out.positions.resize(take);
  out.scores.resize(take);
  for (long i = 0; i < take; ++i) {
    out.positions[i] = chunk_begin + static_cast<Position>(detail::key_position(head(i)));
    out.scores[i] = detail::key_score(head(i));
  }
  return out;
}

void DnaAccumulator::reset(int num_gates, int embed_dim) {
  gates = num_gates;
  embed = embed_dim;
  prototypes.assign(static_cast<size_t>(num_gates) * embed_dim, 0.0);
  usage.assign(num_gates, 0.0);
  confidence.assign(num_gates, 0.0);
  hits.assign(num_gates, 0);
  chunks = 0;
}

void DnaAccumulator::add(ExecSpace const& space, DnaStatistics const& stats, double decay) {
  auto count = Kokkos::create_mirror_view_and_copy(HostSpace(), stats.count);
  auto sums = Kokkos::create_mirror_view_and_copy(HostSpace(), stats.sums);
  (void)space;
  for (int g = 0; g < gates; ++g) {
    bool const hit = count(g) > 1e-6;
    usage[g] = decay * usage[g] + (hit ? (1.0 - decay) * count(g) : 0.0);
    confidence[g] = decay * confidence[g] + (hit ? 1.0 - decay : 0.0);
    if (!hit) continue;
    ++hits[g];
    for (int e = 0; e < embed; ++e) {
      double& p = prototypes[static_cast<size_t>(g) * embed + e];
      p = decay * p + (1.0 - decay) * sums(g, e) / count(g);
    }
  }
  ++chunks;
}

DnaState combine_dna(ExecSpace const& space, MPI_Comm comm, DnaAccumulator const& local, DnaState const& initial,
                     double decay) {
  int rank = 0, ranks = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &ranks);
  int const g = local.gates, e = local.embed;
  // Every rank's hit counts and chunk count: [ranks x (G + 1)].
  std::vector<long> mine(local.hits);
  mine.push_back(local.chunks);
  std::vector<long> all(static_cast<size_t>(ranks) * (g + 1));
  MPI_Allgather(mine.data(), g + 1, MPI_LONG, all.data(), g + 1, MPI_LONG, comm);
  std::vector<long> after(g + 1, 0), total(g + 1, 0);
  for (int r = 0; r < ranks; ++r)
    for (int j = 0; j <= g; ++j) {
      long const v = all[static_cast<size_t>(r) * (g + 1) + j];
      total[j] += v;
      if (r > rank) after[j] += v;
    }
  // This rank's chain, aged by the updates that come after it.
  std::vector<double> sum(static_cast<size_t>(g) * e + 2 * g, 0.0);
  for (int k = 0; k < g; ++k) {
    double const age_p = std::pow(decay, static_cast<double>(after[k]));
    double const age_c = std::pow(decay, static_cast<double>(after[g]));
    for (int j = 0; j < e; ++j)
      sum[static_cast<size_t>(k) * e + j] = age_p * local.prototypes[static_cast<size_t>(k) * e + j];
    sum[static_cast<size_t>(g) * e + k] = age_c * local.usage[k];
    sum[static_cast<size_t>(g) * e + g + k] = age_c * local.confidence[k];
  }
  MPI_Allreduce(MPI_IN_PLACE, sum.data(), static_cast<int>(sum.size()), MPI_DOUBLE, MPI_SUM, comm);
  DnaState out = initial.clone(space);
  auto p = Kokkos::create_mirror_view_and_copy(HostSpace(), out.prototypes);
  auto u = Kokkos::create_mirror_view_and_copy(HostSpace(), out.usage);
  auto c = Kokkos::create_mirror_view_and_copy(HostSpace(), out.confidence);
  for (int k = 0; k < g; ++k) {
    double const keep_p = std::pow(decay, static_cast<double>(total[k]));
    double const keep_c = std::pow(decay, static_cast<double>(total[g]));
    for (int j = 0; j < e; ++j) p(k, j) = static_cast<float>(keep_p * p(k, j) + sum[static_cast<size_t>(k) * e + j]);
    u(k) = static_cast<float>(keep_c * u(k) + sum[static_cast<size_t>(g) * e + k]);
    c(k) = static_cast<float>(keep_c * c(k) + sum[static_cast<size_t>(g) * e + g + k]);
  }
  Kokkos::deep_copy(space, out.prototypes, p);
  Kokkos::deep_copy(space, out.usage, u);
  Kokkos::deep_copy(space, out.confidence, c);
  return out;
}

long chunk_count(long tokens, long chunk_tokens) { return (tokens + chunk_tokens - 1) / chunk_tokens; }

long tokens_in_chunks(long first, long last, long tokens, long chunk_tokens) {
  return std::min(tokens, last * chunk_tokens) - std::min(tokens, first * chunk_tokens);
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

ChunkRange rank_chunks(long chunks, int rank, int ranks) {
  return {chunks * rank / ranks, chunks * (rank + 1) / ranks};
}

Config chunk_scorer_config(RunDeck const& deck) {
  Config c = deck.model;
  c.token_sparse = true;
  c.token_keep_ratio = static_cast<float>(deck.pipeline.chunk_keep_ratio);
  c.token_keep_min_ratio = static_cast<float>(deck.pipeline.chunk_keep_ratio);
  c.dna_update = false;
  return c;
}

void run_chunks(ExecSpace const& space, CausalGeneticMultiheadAttention const& scorer, SequenceSource const& source,
                PipelineSpec const& spec, ChunkRange range, RankState& state,
                std::function<void(RankState const&)> const& after_chunk) {
  Config const& cfg = scorer.config();
  long const tokens = source.tokens();
  TokenMatrix buffer("proteus::chunk::tokens", spec.chunk_tokens, cfg.embed_dim);
  DnaStatistics stats = DnaStatistics::allocate(cfg.num_gates, cfg.embed_dim);
  if (state.next_chunk < range.first) state.next_chunk = range.first;
  auto extent_of = [&](long c) {
    Position const begin = c * spec.chunk_tokens;
    return std::make_pair(begin, std::min(spec.chunk_tokens, tokens - begin));
  };
  // Host-resident sources (files) are double-buffered twice over: chunk c + 2 is read on a helper
  // thread into one pinned host buffer and chunk c + 1 is copied to the second device buffer on a
  // second stream, while chunk c is scored.
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
  if (prefetch) {
    device[1] = TokenMatrix("proteus::chunk::tokens_next", spec.chunk_tokens, cfg.embed_dim);
    for (auto& h : host)
      h = HostChunk(Kokkos::view_alloc("proteus::chunk::host", Kokkos::WithoutInitializing), spec.chunk_tokens,
                    cfg.embed_dim);
    if (state.next_chunk < range.last) {
      start_read(state.next_chunk, 0);
      pending.get();
      Kokkos::deep_copy(copier, rows(device[0], extent_of(state.next_chunk).second),
                        rows(host[0], extent_of(state.next_chunk).second));
      if (state.next_chunk + 1 < range.last) start_read(state.next_chunk + 1, 1);
    }
  }
  int slot = 0;
  for (long c = state.next_chunk; c < range.last; ++c) {
    auto [begin, len] = extent_of(c);
    auto x = rows(device[slot], len);
    if (prefetch) {
      copier.fence();  // device[slot] holds chunk c; host[slot] is free again
      if (c + 1 < range.last) {
        pending.get();  // host[1 - slot] holds chunk c + 1 (rethrows a failed read)
        long const next_len = extent_of(c + 1).second;
        Kokkos::deep_copy(copier, rows(device[1 - slot], next_len), rows(host[1 - slot], next_len));
        if (c + 2 < range.last) start_read(c + 2, slot);
      }
    } else {
      source.read(space, begin, x);
    }
    check_finite(space, x, "sequence tokens [" + std::to_string(begin) + ", " + std::to_string(begin + len) + ")");
    RoutingResult const routed = scorer.route(space, x, 1);
    Candidates const cand =
        nucleus_candidates(space, routed.routing.importance, routed.keep, begin, spec.top_p, spec.chunk_budget);
    state.candidates.append(cand);
    long caught = 0;
    auto beta = routed.routing.beta;
    Kokkos::parallel_reduce(
        "proteus::chunk::caught", Kokkos::RangePolicy<ExecSpace>(space, 0, len),
        KOKKOS_LAMBDA(long i, long& n) { n += beta(i) > 0.0f ? 1 : 0; }, caught);
    state.chunk_log.push_back({c, static_cast<std::int64_t>(cand.size()), routed.tokens_kept, caught});
    if (cfg.dna_enable) {
      dna_statistics(space, x, routed.routing.gate_probs, stats);
      state.dna.add(space, stats, cfg.dna_decay);
    }
    state.next_chunk = c + 1;
    after_chunk(state);
    space.fence();  // chunk c's buffer is overwritten by the copy issued in the next iteration
    if (prefetch) slot = 1 - slot;
  }
  copier.fence();
  if (pending.valid()) pending.wait();
}

}  // namespace proteus

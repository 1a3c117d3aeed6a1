// The DNA chain: per-rank EMA chains in double on the host, joined across ranks.
#include "proteus/dna_chain.hpp"

#include <cmath>

namespace proteus {

void DnaAccumulator::reset(int num_gates, int embed_dim) {
  gates = num_gates;
  embed = embed_dim;
  prototypes.assign(static_cast<size_t>(num_gates) * embed_dim, 0.0);
  usage.assign(num_gates, 0.0);
  confidence.assign(num_gates, 0.0);
  hits.assign(num_gates, 0);
  chunks = 0;
}

void DnaStatisticsHost::start_copy(ExecSpace const& space, DnaStatistics const& stats) {
  if (count.extent(0) != stats.count.extent(0) || sums.extent(1) != stats.sums.extent(1)) {
    count = decltype(count)(Kokkos::view_alloc("proteus::dna::count_host", Kokkos::WithoutInitializing),
                            stats.count.extent(0));
    sums = decltype(sums)(Kokkos::view_alloc("proteus::dna::sums_host", Kokkos::WithoutInitializing),
                          stats.sums.extent(0), stats.sums.extent(1));
  }
  Kokkos::deep_copy(space, count, stats.count);
  Kokkos::deep_copy(space, sums, stats.sums);
}

void DnaAccumulator::add(ExecSpace const& space, DnaStatistics const& stats, double decay) {
  DnaStatisticsHost host;
  host.start_copy(space, stats);
  space.fence();
  add(host, decay);
}

void DnaAccumulator::add(DnaStatisticsHost const& stats, double decay) {
  auto const& count = stats.count;
  auto const& sums = stats.sums;
  for (int g = 0; g < gates; ++g) {
    usage[g] = dna_ema_usage(decay, usage[g], count(g));
    confidence[g] = dna_ema_confidence(decay, confidence[g], count(g));
    if (!dna_gate_hit(count(g))) continue;
    ++hits[g];
    for (int e = 0; e < embed; ++e) {
      double& p = prototypes[static_cast<size_t>(g) * embed + e];
      p = dna_ema_prototype(decay, p, sums(g, e), count(g));
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

}  // namespace proteus

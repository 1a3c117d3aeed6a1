// The DNA chain of the pipeline (dna_chain.hpp), run with 1, 2 and 4 ranks: every rank folds its
// chunks' statistics into a local chain and combine_dna joins the chains; the result must equal
// the sequential EMA over all chunks, computed here in double from the rule as documented
// (P = d P + (1 - d) s / c for gates with mass c > 1e-6; usage and confidence decay every step).
#include <cmath>
#include <vector>

#include "proteus/chunk_grid.hpp"
#include "proteus/dna_chain.hpp"
#include "reference.hpp"
#include "scratch.hpp"
#include "test_space.hpp"

using namespace proteus;
using test::world_rank;
using test::world_size;

namespace {

int const gates = 5, embed = 6;

// Statistics of chunk c: gate g gets mass 0 on some chunks (no update), otherwise a varied mass.
double mass_of(long c, int g) { return (c + g) % 3 == 0 ? 0.0 : 0.5 + 0.25 * ((c * 5 + g) % 7); }
double sum_of(long c, int g, int j) { return mass_of(c, g) * std::sin(0.3 * c + 0.7 * g + 0.11 * j); }

template <class Space>
DnaStatistics statistics_of(Space const& space, long c) {
  DnaStatistics s = DnaStatistics::allocate(gates, embed);
  auto hc = Kokkos::create_mirror_view(s.count);
  auto hs = Kokkos::create_mirror_view(s.sums);
  for (int g = 0; g < gates; ++g) {
    hc(g) = mass_of(c, g);
    for (int j = 0; j < embed; ++j) hs(g, j) = sum_of(c, g, j);
  }
  Kokkos::deep_copy(space, s.count, hc);
  Kokkos::deep_copy(space, s.sums, hs);
  space.fence();
  return s;
}

}  // namespace

PROTEUS_TEST_CASE("the ranks' DNA chains joined equal the sequential EMA over every chunk",
                  "[dna][chain][mpi]") {
  TEST_EXECSPACE space;
  double const decay = 0.9;
  ChunkGrid const grid{13 * 100 - 40, 100};  // 13 chunks, the last one short
  DnaState const initial = DnaState::allocate(gates, embed);
  initial.initialise(space, 5, 0.3f);
  // Reference: one chain over every chunk, in order, from the initial DNA.
  test::Matrix p = test::to_host_matrix(initial.prototypes);
  std::vector<double> usage(gates, 0.0), confidence(gates, 0.0);
  for (long c = 0; c < grid.count(); ++c)
    for (int g = 0; g < gates; ++g) {
      double const m = mass_of(c, g);
      usage[g] = decay * usage[g] + (m > 1e-6 ? (1 - decay) * m : 0.0);
      confidence[g] = decay * confidence[g] + (m > 1e-6 ? 1 - decay : 0.0);
      if (m > 1e-6)
        for (int j = 0; j < embed; ++j) p[g][j] = decay * p[g][j] + (1 - decay) * sum_of(c, g, j) / m;
    }
  // This rank's chunks.
  DnaAccumulator mine;
  mine.reset(gates, embed);
  ChunkRange const range = grid.chunks_of_rank(world_rank(), world_size());
  for (long c = range.first; c < range.last; ++c) mine.add(space, statistics_of(space, c), decay);
  CHECK(mine.chunks == range.size());
  DnaState const joined = combine_dna(space, MPI_COMM_WORLD, mine, initial, decay);
  test::Matrix const got = test::to_host_matrix(joined.prototypes);
  std::vector<double> const got_usage = test::to_host_vector(joined.usage);
  std::vector<double> const got_conf = test::to_host_vector(joined.confidence);
  INFO("ranks " << world_size());
  // The joined chain is stored in float: a float roundoff of O(1) values.
  CHECK(test::relative_error(got, p) < 1e-6);
  for (int g = 0; g < gates; ++g) {
    CHECK(std::fabs(got_usage[g] - usage[g]) <= 1e-6 * std::max(1.0, usage[g]));
    CHECK(std::fabs(got_conf[g] - confidence[g]) <= 1e-6);
  }
}

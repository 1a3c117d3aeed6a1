// The DNA chain of the long-context pipeline (rank-count independent). Every chunk contributes
// one EMA step, applied in chunk order, of its statistics (sum_t p[t,g] x[t] / sum_t p[t,g]).
// Each rank folds its own chunks into a local chain started from zero (DnaAccumulator, in double
// on the host); combine_dna() joins the ranks' chains onto the initial DNA, which equals the
// sequential chain over all chunks up to rounding. Reads DnaStatistics, writes a DnaState.
#pragma once

#include <vector>

#include <mpi.h>

#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/dna.hpp"

namespace proteus {

// One chunk's statistics in pinned host memory: start_copy copies them from the device without a
// wait; they are read once the caller has waited for the copy's execution space.
struct DnaStatisticsHost {
  Kokkos::View<double*, detail::PinnedHostSpace> count;                       // [G]
  Kokkos::View<double**, Kokkos::LayoutRight, detail::PinnedHostSpace> sums;  // [G x E]
  void start_copy(ExecSpace const& space, DnaStatistics const& stats);
};

struct DnaAccumulator {
  int gates = 0, embed = 0;
  std::vector<double> prototypes;         // [G x E] local chain, started from zero
  std::vector<double> usage, confidence;  // [G]
  std::vector<long> hits;                 // [G] chunks that updated each gate
  long chunks = 0;

  void reset(int num_gates, int embed_dim);
  // One EMA step (dna.hpp's rule) of one chunk's statistics (waits for them).
  void add(ExecSpace const& space, DnaStatistics const& stats, double decay);
  // The same from statistics already copied to the host.
  void add(DnaStatisticsHost const& stats, double decay);
};

// Joins the ranks' chains onto the initial DNA: P = d^n P0 + sum_r d^(hits after r) A_r, and the
// same for usage and confidence (which decay on every chunk). Collective over comm.
DnaState combine_dna(ExecSpace const& space, MPI_Comm comm, DnaAccumulator const& local,
                     DnaState const& initial, double decay);

}  // namespace proteus

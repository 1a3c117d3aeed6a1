// The DNA chain of the long-context pipeline (rank-count independent). Every chunk contributes
// one EMA step, applied in chunk order, of its statistics (sum_t p[t,g] x[t] / sum_t p[t,g]).
// Each rank folds its own chunks into a local chain started from zero (DnaAccumulator, in double
// on the host); combine_dna() joins the ranks' chains onto the initial DNA, which equals the
// sequential chain over all chunks up to rounding. Reads DnaStatistics, writes a DnaState.
#pragma once

#include <vector>

#include <mpi.h>

#include "proteus/dna.hpp"

namespace proteus {

struct DnaAccumulator {
  int gates = 0, embed = 0;
  std::vector<double> prototypes;         // [G x E] local chain, started from zero
  std::vector<double> usage, confidence;  // [G]
  std::vector<long> hits;                 // [G] chunks that updated each gate
  long chunks = 0;

  void reset(int num_gates, int embed_dim);
  // One EMA step (dna.hpp's rule) of one chunk's statistics.
  void add(ExecSpace const& space, DnaStatistics const& stats, double decay);
};

// Joins the ranks' chains onto the initial DNA: P = d^n P0 + sum_r d^(hits after r) A_r, and the
// same for usage and confidence (which decay on every chunk). Collective over comm.
DnaState combine_dna(ExecSpace const& space, MPI_Comm comm, DnaAccumulator const& local,
                     DnaState const& initial, double decay);

}  // namespace proteus

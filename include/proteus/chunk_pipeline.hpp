// The chunk stage of the long-context pipeline. Chunks lie on a global grid (chunk_grid.hpp);
// each rank owns a contiguous run of whole chunks. A chunk is read into a bounded device buffer,
// routed with the DNA as it was at the start of the run (stages 1-3), and its nucleus of salient
// tokens becomes candidates with original positions. So every chunk's candidates are a function
// of the chunk alone, whatever the rank count. Each chunk also adds one step to this rank's DNA
// chain (dna_chain.hpp). Reads a SequenceSource, writes a RankState.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "proteus/chunk_grid.hpp"
#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/dna_chain.hpp"
#include "proteus/multihead_attention.hpp"
#include "proteus/sequence_source.hpp"

namespace proteus {

struct Candidates {
  std::vector<Position> positions;
  std::vector<float> scores;
  void append(Candidates const& other);
  size_t size() const { return positions.size(); }
};

// Nucleus of one chunk's kept tokens: sort by (score desc, position asc), softmax of the scores,
// keep #(cumsum < top_p) + 1 (at most `budget`). Positions are offset by chunk_begin.
Candidates nucleus_candidates(ExecSpace const& space, TokenVector const& importance, MaskVector const& keep,
                              Position chunk_begin, double top_p, long budget);
// Device and pinned host memory that nucleus_candidates reuses from chunk to chunk.
struct NucleusBuffers {
  Kokkos::View<std::uint64_t*, MemSpace> keys;
  Kokkos::View<double*, MemSpace> prefix;
  Kokkos::View<unsigned char*, MemSpace> sort_scratch;
  Kokkos::View<double*, MemSpace> norm;             // [1] the softmax's normaliser
  Kokkos::View<long*, MemSpace> counts;             // [2] kept tokens, prefix sums below the limit
  Kokkos::View<long*, detail::PinnedHostSpace> counts_host;
  Kokkos::View<std::uint64_t*, detail::PinnedHostSpace> best_host;  // the first `budget` sorted keys
};
// The same with the buffers kept by the caller. The nucleus is computed on the device and read in
// one wait (its counts and best keys together).
Candidates nucleus_candidates(ExecSpace const& space, TokenVector const& importance, MaskVector const& keep,
                              Position chunk_begin, double top_p, long budget, NucleusBuffers& buffers);
// nucleus_candidates in two halves, so that a chunk's other results share its wait: start_nucleus
// computes the nucleus and starts copying it to buffers' pinned host memory (nothing waits);
// finish_nucleus reads it there once the caller has waited for `space`. `ranked`, when given,
// holds every token's descending_score_key(importance(t), t), sorted (route's r.selection.keys
// with r.selection.ranked): the kept tokens are taken from it in order instead of sorted again.
void start_nucleus(ExecSpace const& space, TokenVector const& importance, MaskVector const& keep, double top_p,
                   long budget, NucleusBuffers& buffers, Kokkos::View<std::uint64_t*, MemSpace> const& ranked = {});
Candidates finish_nucleus(NucleusBuffers const& buffers, Position chunk_begin, long budget);

// Counts of one processed chunk (the /statistics/chunks rows of a checkpoint).
struct ChunkRecord {
  std::int64_t chunk = 0;       // global chunk id
  std::int64_t candidates = 0;  // nucleus candidates it offered to the global buffer
  std::int64_t tokens_kept = 0; // tokens kept by token sparsity
  std::int64_t tokens_caught = 0;  // tokens whose DNA salience beta > 0
};

// Everything a rank needs to resume its chunk stage.
struct RankState {
  long next_chunk = 0;  // global id of the next chunk to process
  long rounds_done = 0; // checkpoint rounds completed (the same on every rank)
  Candidates candidates;
  DnaAccumulator dna;
  std::vector<ChunkRecord> chunk_log;  // one record per chunk processed, in chunk order
  // Totals over the chunks in chunk_log.
  long tokens_kept() const;
  long tokens_caught() const;
};

// How a chunk's kept tokens become candidates (nucleus_candidates).
struct NucleusSpec {
  double top_p = 0.9;
  long budget = 4096;  // at most this many candidates per chunk
};

// Where a rank's chunk stage spends its time, by the host's clock: launching the chunks' work
// (reading and scoring, queued on the device), waiting for the device, and the host's own work
// after each wait (candidates, DNA chain, after_chunk); and the stage's first chunk from the start,
// which alone pays for buffers and each kernel's first launch (on CUDA, its module's loading).
struct ChunkTimes {
  double launch = 0, wait = 0, host = 0, first = 0;
};

// Runs the chunks of `range` on `grid` from state.next_chunk, scoring with `scorer` (a routing
// model whose DNA updates are off: the chain folds them); after_chunk is called after each one,
// and the run ends early, after a whole chunk, when stop() says so. Adds its times to `times`
// when given.
void run_chunks(ExecSpace const& space, CausalGeneticMultiheadAttention const& scorer,
                SequenceSource const& source, ChunkGrid const& grid, NucleusSpec const& nucleus,
                ChunkRange range, RankState& state, std::function<void(RankState const&)> const& after_chunk,
                std::function<bool()> const& stop = {}, ChunkTimes* times = nullptr);

}  // namespace proteus

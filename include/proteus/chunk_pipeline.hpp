// The chunk stage of the long-context pipeline. Chunks lie on a global grid of chunk_tokens
// (chunk c = [c L, (c+1) L)); each rank owns a contiguous run of whole chunks. A chunk is read
// into a bounded device buffer, routed with the DNA as it was at the start of the run (stages
// 1-3), and its nucleus of salient tokens becomes candidates with original positions. So every
// chunk's candidates are a function of the chunk alone, whatever the rank count.
//
// DNA rule (rank-count independent): each chunk contributes one EMA step, applied in chunk
// order, of its statistics (sum_t p[t,g] x[t] / sum_t p[t,g]). Ranks fold their own chunks into
// a local chain started from zero; combine_dna() joins the chains, which equals the sequential
// chain over all chunks up to rounding.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include <mpi.h>

#include "proteus/deck.hpp"
#include "proteus/dna.hpp"
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

struct DnaAccumulator {
  int gates = 0, embed = 0;
  std::vector<double> prototypes;  // [G x E] local chain, started from zero
  std::vector<double> usage, confidence;  // [G]
  std::vector<long> hits;          // [G] chunks that updated each gate
  long chunks = 0;

  void reset(int num_gates, int embed_dim);
  void add(ExecSpace const& space, DnaStatistics const& stats, double decay);
};

// Joins the ranks' chains onto the initial DNA: P = d^n P0 + sum_r d^(hits after r) A_r, and the
// same for usage and confidence (which decay on every chunk).
DnaState combine_dna(ExecSpace const& space, MPI_Comm comm, DnaAccumulator const& local,
                     DnaState const& initial, double decay);

struct ChunkRange {
  long first = 0, last = 0;  // global chunk ids [first, last)
};
long chunk_count(long tokens, long chunk_tokens);
// Tokens in chunks [first, last) of a sequence of `tokens` (the last chunk may be short).
long tokens_in_chunks(long first, long last, long tokens, long chunk_tokens);
ChunkRange rank_chunks(long chunks, int rank, int ranks);

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

// The routing-only model used to score chunks: the deck's model with token sparsity at
// chunk_keep_ratio, DNA updates off (the pipeline folds them itself).
Config chunk_scorer_config(RunDeck const& deck);

// Runs this rank's chunks from state.next_chunk; after_chunk is called after each one.
void run_chunks(ExecSpace const& space, CausalGeneticMultiheadAttention const& scorer,
                SequenceSource const& source, PipelineSpec const& spec, ChunkRange range,
                RankState& state, std::function<void(RankState const&)> const& after_chunk);

}  // namespace proteus

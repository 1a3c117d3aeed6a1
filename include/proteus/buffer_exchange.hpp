// MPI exchange of the long-context pipeline: every rank's chunk candidates are gathered
// (MPI_Allgatherv of positions and scores), every rank makes the same deterministic top-S choice
// (score descending, ties by position), and the chosen embeddings are gathered so that every
// rank holds the global buffer in position order.
#pragma once

#include <vector>

#include <mpi.h>

#include "proteus/chunk_pipeline.hpp"
#include "proteus/sequence_source.hpp"

namespace proteus {

struct GlobalBuffer {
  std::vector<Position> positions;  // ascending
  std::vector<float> scores;
  long candidates = 0;              // candidates over all ranks before the top-S choice
  size_t size() const { return positions.size(); }
};

// The same answer on every rank and for every rank count (the keys are sorted on `space`).
GlobalBuffer select_global_buffer(ExecSpace const& space, MPI_Comm comm, Candidates const& local, long buffer_tokens);

// Rows of the buffer: each rank reads those in [own_begin, own_end) from the source and the ranks
// gather them (host staging, MPI_Allgatherv); a generated source makes every row on every rank
// instead. The result, [S x E] in position order, is the same on every rank.
TokenMatrix gather_buffer_embeddings(ExecSpace const& space, MPI_Comm comm, SequenceSource const& source,
                                     GlobalBuffer const& buffer, Position own_begin, Position own_end);

// Rows [S r / P, S (r + 1) / P) of a buffer of S rows: the query rows of rank r.
std::pair<long, long> buffer_rows_of_rank(long rows, int rank, int ranks);

// Gathers each rank's rows [S r / P, S (r+1) / P) of y [S x E] onto rank 0 (others get nothing).
TokenMatrix gather_rows_to_root(ExecSpace const& space, MPI_Comm comm, TokenMatrix const& y);

// The Frobenius norm of the rows y of all ranks (each rank's rows [S r / P, S (r+1) / P)), on rank
// 0 (others get 0): every row is summed in order in double, and rank 0 adds the rows' sums in row
// order, so the figure does not depend on the number of ranks. Only S doubles travel.
double buffer_output_norm(ExecSpace const& space, MPI_Comm comm, TokenMatrix const& y);

}  // namespace proteus

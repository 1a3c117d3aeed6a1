// The main job, and the one place that reads the whole input deck: preflight -> chunk rounds on
// every rank -> DNA join -> global buffer -> buffer pass -> second pass -> final checkpoint ->
// summary. Each phase hands the stages only their own values (a Config, a ChunkGrid, a
// SequenceSpec, a few numbers). Drivers call run_pipeline() and print the summary.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <mpi.h>

#include "proteus/deck.hpp"
#include "proteus/types.hpp"

namespace proteus {

struct RunSummary {
  long tokens = 0;
  int ranks = 1;
  long chunks = 0;
  long candidates = 0;
  long buffer_tokens = 0;
  long tokens_kept = 0;         // by chunk token sparsity
  long tokens_caught = 0;       // DNA beta > 0
  long needles = 0, needles_found = 0;
  double seconds_chunks = 0, seconds_dna = 0, seconds_exchange = 0, seconds_buffer_pass = 0,
         seconds_checkpoint = 0, seconds_total = 0;
  // Rank 0's chunk stage by the host's clock (ChunkTimes): launching, waiting for the device, host work,
  // and its first chunk alone.
  double seconds_chunk_launch = 0, seconds_chunk_wait = 0, seconds_chunk_host = 0, seconds_chunk_first = 0;
  double tokens_per_second = 0;
  std::vector<double> peak_host_mb;  // per rank
  std::vector<double> peak_device_mb;  // per rank: Kokkos allocations in the execution space's memory
  double estimated_mb_per_rank = 0;
  double buffer_output_norm = 0;   // Frobenius norm of the buffer pass output (a fingerprint)
  std::string buffer_mode;         // dense / shortlist
  long second_pass_tokens = 0;     // tokens given an output by the second pass
  double second_pass_norm = 0;     // Frobenius norm of those outputs (a fingerprint)
  double seconds_second_pass = 0;
  std::vector<long> buffer_head;   // first buffer positions (for the report)
  std::vector<long> buffer_positions;  // the whole global buffer, ascending
  std::vector<long> needle_positions;
  std::vector<float> buffer_outputs;   // rank 0, [S x E] row-major, when [output] write_outputs
  std::string outputs_file;            // HDF5 file of the outputs, when written
  std::string checkpoint;          // last checkpoint written
  long resumed_from_chunk = -1;

  std::string to_json() const;
  std::string to_text() const;
};

// Estimated peak memory of one rank in bytes (host; on GPUs, the device part is the same).
double estimate_rank_bytes(RunDeck const& deck, long tokens, int ranks);

// The three models the pipeline derives from the deck's [model], side by side:
// the chunk scorer routes only (token sparsity at chunk_keep_ratio, DNA updates off: the chain
// folds them); the buffer pass attends over the global buffer (token sparsity at
// buffer_keep_ratio); the second pass gives every token an output (token sparsity off).
Config chunk_scorer_config(Config const& model, PipelineSpec const& pipeline);
Config buffer_pass_config(Config const& model, PipelineSpec const& pipeline);
Config second_pass_config(Config const& model);

// Runs the deck on every rank of comm (collective), from `restart` when given.
RunSummary run_pipeline(ExecSpace const& space, RunDeck const& deck, MPI_Comm comm,
                        std::optional<std::string> const& restart = {});

// Launches the kernels a run of `deck` launches first, once, on made-up tokens at the deck's shapes
// (one chunk of the chunk stage, the buffer's rows and the buffer pass), and keeps nothing: on a GPU
// each kernel's first launch loads its module and the BLAS library picks its kernels per shape
// (about 0.06 s of a run's first chunk on an H200), paid here instead, by a caller with time to
// spare (proteus_driver, while MPI starts). Needs no MPI; throws on a deck the run would refuse.
void warm_up(ExecSpace const& space, RunDeck const& deck);

}  // namespace proteus

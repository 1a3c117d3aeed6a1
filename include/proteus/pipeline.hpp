// The main job: chunk stage on every rank -> DNA combine -> global buffer -> buffer pass, with
// progress, checkpoints and a summary. Drivers call run_pipeline() and print the summary.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <mpi.h>

#include "proteus/deck.hpp"

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

RunSummary run_pipeline(RunDeck const& deck, MPI_Comm comm, std::optional<std::string> const& restart = {});

}  // namespace proteus
